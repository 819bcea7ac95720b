"""matrep.distributed and matrep.patchsource: sharding, launching, lazy patches, sharded encode.

The multi-process tests run real 2-process gloo jobs on CPU (``-m distributed`` selects them);
everything else is single-process and fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from matrep import distributed as D
from matrep.errors import BadInputError

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------
# sharding (single process)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 5, 12, 13])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shard_indices_equal_distributed_sampler(n, world, drop_last):
    from torch.utils.data import DistributedSampler

    for epoch in (0, 3):
        for rank in range(world):
            s = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=7,
                                   drop_last=drop_last)
            s.set_epoch(epoch)
            got = D.shard_indices(n, epoch=epoch, seed=7, rank=rank, world_size=world,
                                  drop_last=drop_last, permutation="torch")
            assert got.tolist() == list(s)


@pytest.mark.parametrize("permutation", ["numpy", "torch"])
def test_shards_cover_every_index_once_and_reshuffle(permutation):
    n, world = 24, 3
    orders = []
    for epoch in range(3):
        shards = [D.shard_indices(n, epoch=epoch, seed=1, rank=r, world_size=world,
                                  permutation=permutation) for r in range(world)]
        allidx = np.concatenate(shards)
        assert sorted(allidx.tolist()) == list(range(n))  # exactly once (n % world == 0)
        orders.append(np.stack(shards))
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    # same seed and epoch: the same shards on every call (every rank computes them alone)
    again = D.shard_indices(n, epoch=1, seed=1, rank=2, world_size=world, permutation=permutation)
    assert np.array_equal(again, orders[1][2])


def test_padding_and_drop_last_counts():
    n, world = 10, 4
    pad = [D.shard_indices(n, epoch=0, rank=r, world_size=world) for r in range(world)]
    assert {len(p) for p in pad} == {3}
    assert set(np.concatenate(pad).tolist()) == set(range(n))  # every index at least once
    drop = [D.shard_indices(n, epoch=0, rank=r, world_size=world, drop_last=True)
            for r in range(world)]
    allidx = np.concatenate(drop)
    assert {len(p) for p in drop} == {2} and len(set(allidx.tolist())) == 8


def test_global_batches_split_into_rank_shards():
    """Rank r's slices of the global batches are DistributedSampler's shard order[r::W]."""
    n, B, W = 40, 8, 2
    order = D.epoch_permutation(n, seed=0, epoch=2)
    per_rank = [np.concatenate([D.split_batch(order[b:b + B], r, W) for b in range(0, n, B)])
                for r in range(W)]
    for r in range(W):
        assert np.array_equal(per_rank[r], order[r::W])
        assert np.array_equal(per_rank[r], D.shard_indices(n, epoch=2, seed=0, rank=r, world_size=W))
    # an uneven last batch: the loss weights still sum to W (gradient of the global mean)
    last = order[:5]
    parts = [D.split_batch(last, r, W) for r in range(W)]
    assert sum(len(p) for p in parts) == 5
    assert sum(D.local_loss_weight(len(p), 5, W) for p in parts) == pytest.approx(W)


def test_scaling_rule():
    r = D.scaling_rule(16, 1e-3, 4)
    assert (r.effective_batch, r.per_rank_batch, r.lr) == (16, 4, 1e-3)
    r = D.scaling_rule(16, 1e-3, 4, "linear")
    assert (r.effective_batch, r.per_rank_batch, r.lr) == (64, 16, 4e-3)
    assert "effective batch 64" in r.describe() and r.to_dict()["rule"] == "linear"
    with pytest.raises(BadInputError, match="'none' or 'linear'"):
        D.scaling_rule(16, 1e-3, 2, "sqrt")


def test_env_detection_and_single_context(monkeypatch):
    for v in D.TORCHRUN_VARS:
        monkeypatch.delenv(v, raising=False)
    assert not D.in_torchrun() and D.env_rank_world() == (0, 0, 1)
    assert D.env_rank_world({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == (3, 1, 4)
    with pytest.raises(BadInputError, match="not in"):
        D.env_rank_world({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(BadInputError, match="integers"):
        D.env_rank_world({"RANK": "x", "WORLD_SIZE": "4"})
    ctx = D.init(device="cpu")
    try:
        assert ctx.is_main and not ctx.is_distributed and D.current() is ctx
        ctx.barrier()
        assert ctx.all_gather_object(5) == [5] and ctx.broadcast_object("a") == "a"
        assert ctx.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
        model = object()
        assert ctx.wrap_model(model) is model
        assert D.main_only(lambda: 42)() == 42
    finally:
        D.destroy(ctx)
    assert D.current() is D.SINGLE
    assert D.resolve_backend("auto", "cpu") == "gloo"


def test_torchrun_command_and_strip_option():
    cmd = D.torchrun_command(2, ["fit", "--method", "texturevae"], python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                   "-m", "matrep", "fit", "--method", "texturevae"]
    cmd = D.torchrun_command(4, ["fit"], nnodes=2, node_rank=1, rdzv_endpoint="node0:29500",
                             python="py")
    assert cmd[5:13] == ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                         "node0:29500", "--node-rank", "1"]
    with pytest.raises(BadInputError, match="rdzv-endpoint"):
        D.torchrun_command(2, [], nnodes=2)
    assert D.strip_option(["fit", "--nproc", "2", "--nproc=3", "--x", "1"], "--nproc") == \
        ["fit", "--x", "1"]


# ---------------------------------------------------------------------------------------
# lazy patches
# ---------------------------------------------------------------------------------------
def _write_images(folder: Path, n=4, shape=(96, 112), seed=0):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(folder / f"m{i}.png")
    return folder


def test_lazy_patches_equal_load_patches(tmp_path):
    from matrep.io import load_patches
    from matrep.patchsource import LazyPatchSet, lazy_patches
    from matrep.store import images_digest

    d = _write_images(tmp_path / "imgs")
    kw = dict(patch=32, stride=20, crop_bottom=6, max_patches_per_image=9, seed=3)
    a = load_patches(d, **kw)
    b = lazy_patches(d, **kw)
    assert isinstance(b, LazyPatchSet) and len(b) == len(a) == 36
    assert b.patches.shape == a.patches.shape and b.patches.dtype == np.float32
    assert np.array_equal(np.asarray(b.patches), a.patches)
    for k in ("sources", "micrograph_ids", "coords"):
        assert np.array_equal(getattr(a, k), getattr(b, k))
    assert images_digest(a) == images_digest(b)
    idx = np.array([7, 0, 35, 7, -1])
    assert np.array_equal(b.patches[idx], a.patches[idx])
    assert np.array_equal(b.patches[3], a.patches[3])
    mask = np.arange(len(a)) % 5 == 0
    sub = b.subset(mask)
    assert isinstance(sub, LazyPatchSet) and np.array_equal(sub.patches[:], a.patches[mask])
    with pytest.raises(IndexError):
        b.patches[36]


def test_lazy_patches_bounded_image_cache_and_bad_files(tmp_path):
    from matrep.patchsource import lazy_patches

    d = _write_images(tmp_path / "imgs", n=3)
    (d / "broken.png").write_bytes(b"not an image")
    with pytest.raises(BadInputError, match="broken.png"):
        lazy_patches(d, patch=32, stride=32)
    ps = lazy_patches(d, patch=32, stride=32, skip_bad=True, cache_images=1)
    assert [Path(p).name for p, _ in ps.skipped] == ["broken.png"]
    ps.patches[:]  # reads all three images in order
    assert len(ps.patches._cache) == 1


def test_hdf5_patch_cache_roundtrip(tmp_path):
    from matrep.patchsource import lazy_patches, open_patch_cache, write_patch_cache

    d = _write_images(tmp_path / "imgs", n=2)
    lazy = lazy_patches(d, patch=32, stride=16)
    path = write_patch_cache(lazy, tmp_path / "cache.h5", chunk=7)
    c = open_patch_cache(path)
    full = np.asarray(lazy.patches)
    assert np.array_equal(np.asarray(c.patches), full)
    idx = np.array([9, 2, 2, 30])
    assert np.array_equal(c.patches[idx], full[idx])
    assert np.array_equal(c.subset(idx).patches[:], full[idx])
    assert np.array_equal(c.coords, lazy.coords) and c.settings() == lazy.settings()
    with pytest.raises(BadInputError, match="patch cache"):
        open_patch_cache(tmp_path / "imgs" / "m0.png")


# ---------------------------------------------------------------------------------------
# 2-process gloo jobs
# ---------------------------------------------------------------------------------------
def _child_env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _run(cmd, cwd, timeout=240):
    p = subprocess.run(cmd, cwd=cwd, env=_child_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"{cmd}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


@pytest.mark.distributed
def test_sharded_encode_equals_single_process(tmp_path):
    """`torchrun --nproc-per-node 2 -m matrep encode` writes the single-process store."""
    from matrep.store import FeatureStore

    d = _write_images(tmp_path / "imgs", n=3)
    args = ["encode", "--method", "vgg19", "--param", 'weights="random"', "--param",
            "batch_size=8", "--images", str(d), "--patch", "32", "--stride", "16",
            "--chunk", "16", "-q"]
    import torch
    from click.testing import CliRunner

    from matrep.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1)
    try:
        r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "one.h5")])
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    p = _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
              "--master-port", str(D.free_port()), "-m", "matrep", *args,
              "--out", str(tmp_path / "two.h5")], tmp_path)
    assert "encoding on 2 processes (gloo)" in p.stderr
    assert p.stdout.count("wrote 90 x 512 features") == 1  # rank 0 reports, once
    one, two = FeatureStore(tmp_path / "one.h5"), FeatureStore(tmp_path / "two.h5")
    (X1, a1), (X2, a2) = one.read("vgg19"), two.read("vgg19")
    assert X1.shape == (90, 512) and X1.std() > 0
    assert np.array_equal(X1, X2)  # bitwise
    assert {k for k in a1 if a1[k] != a2[k]} == {"created"}
    r1, r2 = one.read_patches(), two.read_patches()
    assert set(r1) == set(r2)
    for k in r1:  # unknown pixel sizes are NaN on both sides
        a, b = np.asarray(r1[k]), np.asarray(r2[k])
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), k
    assert not list(tmp_path.glob(".two.h5.*.partial")) and not list(tmp_path.glob(".tmp-*"))


def _collectives_worker(rank, world, port, folder, out):
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import torch

    torch.set_num_threads(1)
    from matrep import registry
    from matrep.patchsource import lazy_patches
    from matrep.pipeline import encode_patchset

    ctx = D.init(device="cpu")
    try:
        res = {"backend": ctx.backend, "rank": ctx.rank}
        res["gathered"] = ctx.all_gather_object(rank * 10)
        res["arrays"] = ctx.gather_arrays(np.full(2, rank))
        res["sum"] = ctx.all_reduce_sum([rank + 1, 0.5])
        res["bcast"] = ctx.broadcast_object(f"from {rank}")
        res["shards"] = [ctx.shard(11, epoch=e, seed=2).tolist() for e in range(2)]
        res["main_only"] = D.main_only(lambda: "wrote")()
        ps = lazy_patches(folder, patch=32, stride=16, dist=ctx)
        res["n_patches"] = len(ps)
        # a trainable encoder fitted on rank 0 and shared, then sharded chunks, one store
        enc = registry.get_encoder("twopoint", n_components=3, cutoff=8, random_state=0)
        r = encode_patchset(enc, ps, Path(out), chunk=10, dist=ctx)
        res["encode"] = (r.key, r.n_patches, r.n_features, r.fitted_here)
        # run again: every rank finds the stored features
        r2 = encode_patchset(registry.get_encoder("twopoint", n_components=3, cutoff=8,
                                                  random_state=0), ps, Path(out), chunk=10,
                             dist=ctx)
        res["reused"] = r2.reused
        import json

        Path(f"{out}.rank{rank}.json").write_text(json.dumps(res, default=lambda o: o.tolist()))
    finally:
        D.destroy(ctx)


@pytest.mark.distributed
def test_collectives_lazy_scan_and_fitted_encode_two_ranks(tmp_path):
    import json

    import torch.multiprocessing as mp

    from matrep import registry
    from matrep.io import load_patches
    from matrep.pipeline import encode_patchset
    from matrep.store import FeatureStore

    d = _write_images(tmp_path / "imgs", n=3)
    out = tmp_path / "two.h5"
    mp.spawn(_collectives_worker, args=(2, D.free_port(), str(d), str(out)), nprocs=2, join=True)
    res = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(2)]
    for r, x in enumerate(res):
        assert x["backend"] == "gloo" and x["rank"] == r
        assert x["gathered"] == [0, 10] and x["sum"] == [3.0, 1.0] and x["bcast"] == "from 0"
        assert x["main_only"] == ("wrote" if r == 0 else None)
        assert x["n_patches"] == 90 and x["reused"] is True
    assert res[0]["arrays"] == [[0, 0], [1, 1]] and res[1]["arrays"] is None
    assert res[0]["encode"] == res[1]["encode"] and res[0]["encode"][2] == 3
    for e in range(2):  # 11 indices on 2 ranks: padded to 12, every index seen
        both = res[0]["shards"][e] + res[1]["shards"][e]
        assert len(res[0]["shards"][e]) == 6 and set(both) == set(range(11))
    assert res[0]["shards"][0] != res[0]["shards"][1]
    # the single-process encode of the same patches gives the same fitted model and features
    ps = load_patches(d, patch=32, stride=16)
    enc = registry.get_encoder("twopoint", n_components=3, cutoff=8, random_state=0)
    one = encode_patchset(enc, ps, tmp_path / "one.h5", chunk=10)
    assert one.key == res[0]["encode"][0]
    X1, _ = FeatureStore(tmp_path / "one.h5").read(one.key)
    X2, _ = FeatureStore(out).read(one.key)
    assert np.array_equal(X1, X2)
