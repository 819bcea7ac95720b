"""Throughput of 1 vs 2 processes (gloo on CPU), and the all-reduce cost of a texture-VAE step.

Run::

    .venv/bin/python -m pytest benchmarks/bench_distributed.py --benchmark-enable -m slow -q -s

(marked ``slow`` and ``distributed``: the default test run, which collects the benchmarks,
skips these multi-process jobs.)

Each case starts real ``torch.distributed`` jobs (``torch.multiprocessing.spawn``, gloo,
``OMP_NUM_THREADS=1`` per process) and times *inside* the workers, after a barrier, so process
start-up and imports are not counted; pytest-benchmark records the wall time of the whole job
(one round) and ``extra_info`` the in-worker numbers. Cases:

* ``allreduce``: ``all_reduce`` of one float32 tensor of the texture-VAE's trainable
  parameters (head + decoder, default settings: 2,304,897 values, 8.8 MiB) — the gradient
  volume DDP all-reduces every step — on 2 processes;
* ``encode_1`` / ``encode_2``: :func:`matrep.pipeline.encode_patchset` with the ``vgg19``
  encoder (random weights) on 1 and 2 processes (the sharded encode);
* ``train_1`` / ``train_2``: :meth:`TextureVAEEncoder.fit` (DDP on 2 processes) with the
  default decoder and latent size on ``MATREP_BENCH_TRAIN_N`` (default 32) patches of 64²,
  global batch 16, random VGG19 weights, fp32; the throughput is the second epoch's
  (``history_[-1]["patches_per_s"]``: global patches over the summed step times of rank 0,
  all-reduce included; the first epoch warms up).

Results print at the end and go to ``benchmarks/.distributed_results.json``. Nothing here
asserts on time. On this 2-core machine expect little gain from 2 processes; the point is
that the distributed paths are correct and what their overhead is.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

N_ENC = int(os.environ.get("MATREP_BENCH_N", "64"))
N_TRAIN = int(os.environ.get("MATREP_BENCH_TRAIN_N", "32"))
ENC_SIZE = 64
N_PARAMS = 2_304_897  # trainable parameters of the default texture-VAE (latent 64, 128² patches)
_RESULTS: dict = {}
pytestmark = [pytest.mark.slow, pytest.mark.distributed]
_OUT = Path(__file__).with_name(".distributed_results.json")


def _env(rank, world, port):
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "OMP_NUM_THREADS": "1"})
    import torch

    torch.set_num_threads(1)


def _worker(rank, world, port, case, out):
    _env(rank, world, port)
    import torch

    from matrep import distributed as D

    ctx = D.init(device="cpu")
    try:
        res = {}
        if case == "allreduce":
            import torch.distributed as dist

            t = torch.randn(N_PARAMS)
            for _ in range(3):
                dist.all_reduce(t)
            ctx.barrier()
            reps = 20
            t0 = time.perf_counter()
            for _ in range(reps):
                dist.all_reduce(t)
            res["seconds_per_allreduce"] = (time.perf_counter() - t0) / reps
            res["bytes"] = N_PARAMS * 4
        elif case == "encode":
            from matrep.io import PatchSet
            from matrep.pipeline import encode_patchset
            from matrep.plugins.vgg19 import VGG19Encoder
            from matrep.testing import make_texture_patches

            patches = make_texture_patches(N_ENC, ENC_SIZE, seed=0)
            folder = Path(out).parent
            img = folder / "bench.png"
            if ctx.is_main and not img.exists():
                from PIL import Image

                Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
            ctx.barrier()
            ps = PatchSet(patches, np.array([str(img)] * N_ENC), np.array(["bench"] * N_ENC),
                          np.stack([np.arange(N_ENC), np.zeros(N_ENC, int)], 1), ENC_SIZE, 1)
            enc = VGG19Encoder(weights="random", batch_size=16).fit(patches[:1])
            enc.transform(patches[:2])  # warm-up
            ctx.barrier()
            t0 = time.perf_counter()
            encode_patchset(enc, ps, folder / f"enc{world}.h5", chunk=16, resume=False, dist=ctx)
            res["seconds"] = time.perf_counter() - t0
            res["patches_per_s"] = N_ENC / res["seconds"]
        elif case == "train":
            from matrep.plugins.texturevae import TextureVAEEncoder
            from matrep.testing import make_texture_patches

            X = make_texture_patches(N_TRAIN, 64, seed=0)
            enc = TextureVAEEncoder(weights="random", device="cpu", precision="fp32", epochs=2,
                                    batch_size=16, val_fraction=0.0, batch_size_eval=16)
            ctx.barrier()
            t0 = time.perf_counter()
            enc.fit(X)
            res["seconds_fit"] = time.perf_counter() - t0
            last = enc.history_[-1]
            res["patches_per_s"] = last["patches_per_s"]
            res["seconds_per_step"] = last["seconds"] / max(1, -(-N_TRAIN // 16))
            res["trainable_params"] = sum(p.numel() for p in enc.model_.parameters()
                                          if p.requires_grad)
        if ctx.is_main:
            Path(out).write_text(json.dumps(res))
    finally:
        D.destroy(ctx)


def _spawn(world, case, tmp_path):
    import torch.multiprocessing as mp

    from matrep.distributed import free_port

    out = tmp_path / f"{case}-{world}.json"
    mp.spawn(_worker, args=(world, free_port(), case, str(out)), nprocs=world, join=True)
    return json.loads(out.read_text())


def _bench(benchmark, name, world, case, tmp_path):
    res = {}

    def run():
        res.update(_spawn(world, case, tmp_path))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    _RESULTS[name] = res


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if not _RESULTS:
        return
    print("\ndistributed (gloo, CPU, OMP_NUM_THREADS=1 per process):")
    for k, v in _RESULTS.items():
        print(f"  {k:<10} {json.dumps(v)}")
    for case in ("encode", "train"):
        a, b = _RESULTS.get(f"{case}_1"), _RESULTS.get(f"{case}_2")
        if a and b and "patches_per_s" in a:
            print(f"  {case}: 2 processes give {b['patches_per_s'] / a['patches_per_s']:.2f}x "
                  "the patches/s of 1")
    _OUT.write_text(json.dumps(_RESULTS, indent=1))


def test_allreduce(benchmark, tmp_path):
    _bench(benchmark, "allreduce", 2, "allreduce", tmp_path)


@pytest.mark.parametrize("world", [1, 2])
def test_encode(benchmark, tmp_path, world):
    _bench(benchmark, f"encode_{world}", world, "encode", tmp_path)


@pytest.mark.parametrize("world", [1, 2])
def test_train(benchmark, tmp_path, world):
    _bench(benchmark, f"train_{world}", world, "train", tmp_path)
