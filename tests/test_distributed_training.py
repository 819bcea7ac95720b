"""Texture-VAE training under torchrun (DDP, gloo on CPU) equals the single-process run.

* ``matrep fit --nproc 2`` (which re-runs itself under torchrun) gives the weights and losses
  of the 1-process ``matrep fit`` with the same ``--batch-size`` (the global batch), and
  records the scaling rule in ``fit.json``;
* a 2-rank run stopped mid-epoch (``matrep.testing.stop_after``) resumes on 2 ranks (bitwise equal
  to the uninterrupted 2-rank run) and on 1 rank (equal within float tolerance);
* only rank 0 writes (every file operation of every rank is recorded with an audit hook) and
  no temporary file is left over.

Why ``lr=1e-4`` and not the default: Adam divides each gradient element by its own running
RMS, so a rounding-level difference in a near-zero gradient element (the global batch is
summed in another order when it is split over ranks) becomes a weight difference of up to a
fraction of ``lr`` per step. Measured after 4 steps: max |difference| 2.2e-6 at ``lr=1e-3`` and
2.3e-7 at ``lr=1e-4``, both rounding-sized; a wrong shard, noise slice or loss weight moves
weights by ~``lr`` per step (the negative control below). ``docs/distributed.md`` has the
numbers.

Run as a script under torchrun this file is the worker of the resume test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
TINY = dict(latent_dim=4, weights="random", decoder_channels=(8, 8, 8, 8, 8), epochs=2,
            batch_size=3, lr=1e-4, device="cpu", batch_size_eval=8)
CLI_ARGS = ["--patch", "32", "--stride", "16", "--epochs", "2", "--batch-size", "5",
            "--lr", "1e-4", "--latent-dim", "4", "--weights", "random", "--device", "cpu",
            "--param", "decoder_channels=[8,8,8,8,8]", "--param", "batch_size_eval=8"]
STOP = 5  # of 8 steps (4 per epoch): stops in epoch 2, resumes before its short last batch
RUN_FILES = {"config.json", "state.safetensors", "log.csv", "checkpoint/checkpoint.json",
             "checkpoint/state.safetensors"}
pytestmark = pytest.mark.distributed


def _patchset():
    """Two 'micrographs' of 4 x 3 patches of 32² (region split: 12 train, 6 held out)."""
    from matrep.io import PatchSet
    from matrep.testing import make_texture_patches

    X = make_texture_patches(24, 32, 0)
    ids = np.array(["a"] * 12 + ["b"] * 12)
    coords = np.array([(y * 16, x * 16) for _ in range(2) for y in range(4) for x in range(3)])
    return PatchSet(X, np.array(["a.png"] * 12 + ["b.png"] * 12), ids, coords, 32, 16)


def _state(run):
    from safetensors.numpy import load_file

    return load_file(str(Path(run) / "state.safetensors"))


def _assert_close(a, b, exact=False):
    assert set(a) == set(b)
    for k in a:
        if exact:
            assert np.array_equal(a[k], b[k]), k
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def _losses(hist):
    return np.array([[h[k] for k in ("train_loss", "train_style", "train_kl", "val_style")]
                     for h in hist[1:]], dtype=float)


def _files(run):
    return {p.relative_to(run).as_posix() for p in Path(run).rglob("*") if p.is_file()}


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1)
    yield
    torch.set_num_threads(n)


def _write_images(d):
    from PIL import Image

    from matrep.testing import make_texture_patches

    d.mkdir(parents=True)
    for i, x in enumerate(make_texture_patches(2, 64, 0)):
        Image.fromarray((x * 255).astype(np.uint8)).save(d / f"m{i}.png")
    return d


# ---------------------------------------------------------------------------------------
# matrep fit --nproc 2 == matrep fit
# ---------------------------------------------------------------------------------------
def test_cli_fit_nproc2_equals_single_process(tmp_path, one_thread):
    from click.testing import CliRunner

    from matrep.cli import main

    imgs = _write_images(tmp_path / "imgs")
    # 2 images of 64² at stride 16: 6 training patches; global batch 5 -> steps of 5 and 1
    # patches, split 3 + 2 and 1 + 0 (rank 1 holds a weight-0 stand-in)
    one, two = tmp_path / "one", tmp_path / "two"
    r = CliRunner().invoke(main, ["fit", "--method", "texturevae", "--images", str(imgs),
                                  *CLI_ARGS, "--out", str(one), "--quiet"])
    assert r.exit_code == 0, r.output
    p = subprocess.run([sys.executable, "-m", "matrep", "fit", "--nproc", "2", "--method",
                        "texturevae", "--images", str(imgs), *CLI_ARGS, "--out", str(two)],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert p.stdout.count("model saved to") == 1  # rank 0 reports, once
    assert p.stderr.count("training on 2 processes (gloo, cpu)") == 1
    assert p.stderr.count("2 process(es): effective batch 5 (3 per process), lr 0.0001") == 1
    _assert_close(_state(two), _state(one))
    h1 = json.loads((one / "config.json").read_text())["meta"]["history"]
    h2 = json.loads((two / "config.json").read_text())["meta"]["history"]
    np.testing.assert_allclose(_losses(h2), _losses(h1), rtol=1e-5)
    rec = json.loads((two / "fit.json").read_text())["distributed"]
    assert rec == {"rule": "none", "world_size": 2, "batch_size": 5, "effective_batch": 5,
                   "per_rank_batch": 3, "base_lr": 1e-4, "lr": 1e-4, "backend": "gloo"}
    assert json.loads((one / "fit.json").read_text())["distributed"]["world_size"] == 1
    # nothing else, no temporary leftovers (the run folder's lock file stays: docs/io.md)
    assert _files(two) - {".fit.lock"} == RUN_FILES | {"fit.json"}
    assert not list(tmp_path.glob(".tmp*"))


# ---------------------------------------------------------------------------------------
# interrupt a 2-rank run, resume on 2 ranks and on 1 rank
# ---------------------------------------------------------------------------------------
def _record_writes(roots, events):
    """Audit hook: every file-system write under ``roots`` by this process goes to ``events``."""
    roots = tuple(str(r) for r in roots)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    kinds = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree",
             "shutil.move", "os.chmod", "os.truncate"}

    def hook(event, args):
        if event == "open":
            path, mode, flags = (list(args) + [None, None])[:3]
            writes = (isinstance(mode, str) and set(mode) & set("wax+")) or \
                (isinstance(flags, int) and flags & write_flags)
            if not writes:
                return
        elif event not in kinds:
            return
        paths = args[:2] if event in ("os.rename", "os.replace", "shutil.move") else args[:1]
        for path in paths:
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if isinstance(path, (str, os.PathLike)) and str(path).startswith(roots):
                events.append([event, str(path)])

    sys.addaudithook(hook)


def _worker(root):
    """One rank: full 2-rank run, a run stopped after STOP steps (copied), then resumed."""
    torch.set_num_threads(1)
    from matrep import distributed as D
    from matrep.encoder import FitContext
    from matrep.plugins.texturevae import TextureVAEEncoder
    from matrep.testing import stop_after

    root = Path(root)
    ctx = D.init(device="cpu")
    events: list = []
    try:
        _record_writes([root / "full", root / "part"], events)
        ps = _patchset()
        TextureVAEEncoder(**TINY).fit(ps, context=FitContext(run_dir=root / "full"))
        stop_after(TextureVAEEncoder(**TINY), STOP).fit(ps, context=FitContext(run_dir=root / "part"))
        if ctx.is_main:  # keep the interrupted run for the 1-rank resume
            shutil.copytree(root / "part", root / "stopped")
        ctx.barrier()
        TextureVAEEncoder(**TINY).fit(ps, context=FitContext(run_dir=root / "part", resume=True))
        ctx.barrier()
    finally:
        D.destroy(ctx)
    (root / f"events{ctx.rank}.json").write_text(json.dumps(events))


def test_resume_on_2_and_1_ranks_and_only_rank0_writes(tmp_path, one_thread):
    from matrep.distributed import free_port
    from matrep.encoder import FitContext
    from matrep.plugins.texturevae import TextureVAEEncoder
    from matrep.testing import stop_after

    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", str(free_port()), str(Path(__file__).resolve()),
                        "--worker", str(tmp_path)],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    full, part, stopped = tmp_path / "full", tmp_path / "part", tmp_path / "stopped"
    meta = json.loads((stopped / "checkpoint" / "checkpoint.json").read_text())
    assert meta["position"]["global_step"] == STOP and meta["position"]["epoch"] == 1
    assert meta["distributed"]["world_size"] == 2 and meta["distributed"]["effective_batch"] == 3
    assert not (stopped / "config.json").exists()  # a stopped run saves no final model

    ps = _patchset()
    ref = TextureVAEEncoder(**TINY).fit(ps, context=FitContext(run_dir=tmp_path / "one"))  # 1 process
    _assert_close(_state(full), _state(tmp_path / "one"))
    # resumed on 2 ranks: the very same computations as the uninterrupted 2-rank run
    _assert_close(_state(part), _state(full), exact=True)
    h_full = json.loads((full / "config.json").read_text())["meta"]["history"]
    h_part = json.loads((part / "config.json").read_text())["meta"]["history"]
    np.testing.assert_array_equal(_losses(h_part), _losses(h_full))
    # resumed on 1 rank (this process) from the 2-rank checkpoint
    res = TextureVAEEncoder(**TINY).fit(ps, context=FitContext(run_dir=stopped, resume=True))
    _assert_close(_state(stopped), _state(full))
    np.testing.assert_allclose(_losses(res.history_), _losses(h_full), rtol=1e-5)
    np.testing.assert_allclose(_losses(ref.history_), _losses(h_full), rtol=1e-5)
    # negative control: another global batch size is far outside the tolerance
    other = TextureVAEEncoder(**{**TINY, "batch_size": 2}).fit(ps)
    w = other.model_.state_dict()["decoder.project.weight"].numpy()
    assert not np.allclose(w, _state(full)["model.decoder.project.weight"], rtol=1e-5, atol=1e-6)

    # only rank 0 touched the run folders; nothing temporary is left
    ev0 = json.loads((tmp_path / "events0.json").read_text())
    ev1 = json.loads((tmp_path / "events1.json").read_text())
    assert ev1 == []
    written = {Path(p).name for _, p in ev0}
    assert any(n.startswith(".tmp") or "tmp" in n for n in written)  # atomic temp files
    assert {"log.csv", "config.json"} <= written
    for run in (full, part):
        assert _files(run) == RUN_FILES
        assert not [q for q in run.rglob("*") if q.name.startswith(".")]


def test_resume_refuses_another_effective_batch(tmp_path, monkeypatch):
    """--lr-scaling linear ties the effective batch to the number of processes."""
    from matrep import distributed as D
    from matrep.errors import BadInputError
    from matrep.encoder import FitContext
    from matrep.plugins.texturevae import TextureVAEEncoder
    from matrep.testing import stop_after

    kw = {**TINY, "lr_scaling": "linear"}
    stop_after(TextureVAEEncoder(**kw), 1).fit(_patchset(), context=FitContext(run_dir=tmp_path / "r"))
    meta = json.loads((tmp_path / "r" / "checkpoint" / "checkpoint.json").read_text())
    assert meta["distributed"]["rule"] == "linear" and meta["distributed"]["effective_batch"] == 3
    # pretend to be rank 0 of 2 (the check comes before any collective)
    monkeypatch.setattr(D, "_CURRENT", D.DistContext(rank=0, world_size=2, backend="gloo"))
    with pytest.raises(BadInputError, match="effective batch of 3 .* this run has 6"):
        TextureVAEEncoder(**kw).fit(_patchset(), context=FitContext(run_dir=tmp_path / "r", resume=True))


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(sys.argv[2])
