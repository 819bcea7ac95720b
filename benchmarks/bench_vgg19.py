"""Patches per second of the ``vgg19`` encoder: batched vs a per-patch loop, in the same run.

Run::

    .venv/bin/python -m pytest benchmarks/bench_vgg19.py --benchmark-enable -q -s

Cases (128 x 128 patches, default features = GAP of pool5):

* ``batched``: :meth:`VGG19Encoder.transform` on the whole set (``torch.inference_mode``,
  channels-last, ``batch_size`` patches per forward pass);
* ``per_patch``: the same encoder called one patch at a time (the baseline the issue asks for);
* ``batched_contiguous``: the batched path with NCHW (contiguous) memory instead of channels-last,
  to show whether channels-last helps on this machine.

Weights: ``random`` (speed does not depend on the values; no pretrained file needed). Set
``MATREP_BENCH_DEVICE=cuda`` to time on a GPU. The ratios are printed at the end and written to
``benchmarks/.vgg19_ratios.json``. Nothing here asserts on time.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from matrep.plugins.vgg19 import VGG19Encoder
from matrep.testing import make_texture_patches

N_PATCHES = int(os.environ.get("MATREP_BENCH_N", "16"))
SIZE = 128
DEVICE = os.environ.get("MATREP_BENCH_DEVICE", "cpu")
PATCHES = make_texture_patches(N_PATCHES, SIZE, seed=0)
_RESULTS: dict[str, float] = {}


def _encoder(batch_size=32):
    enc = VGG19Encoder(weights="random", batch_size=batch_size, device=DEVICE).fit(PATCHES[:1])
    enc.transform(PATCHES[:2])  # build the backbone, warm up the kernels
    return enc


def _record(benchmark, name):
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        _RESULTS[name] = stats.stats.mean
        benchmark.extra_info["patches_per_s"] = N_PATCHES / stats.stats.mean


@pytest.fixture(scope="module", autouse=True)
def _report_ratios():
    yield
    if "batched" in _RESULTS:
        out = {k: {"seconds": v, "patches_per_s": N_PATCHES / v} for k, v in _RESULTS.items()}
        for k, v in _RESULTS.items():
            out[k]["speedup_of_batched"] = v / _RESULTS["batched"]
        print("\nvgg19 encoder,", N_PATCHES, f"patches {SIZE}x{SIZE}, device {DEVICE}:")
        for k, v in out.items():
            print(f"  {k:<20} {v['patches_per_s']:8.2f} patches/s   batched is "
                  f"{v['speedup_of_batched']:.2f}x faster")
        (Path(__file__).parent / ".vgg19_ratios.json").write_text(json.dumps(out, indent=2))


@pytest.mark.benchmark(group="vgg19-encode")
def test_batched(benchmark):
    enc = _encoder()
    X = benchmark.pedantic(enc.transform, args=(PATCHES,), rounds=3, iterations=1)
    assert X.shape == (N_PATCHES, 512)
    _record(benchmark, "batched")


@pytest.mark.benchmark(group="vgg19-encode")
def test_per_patch(benchmark):
    enc = _encoder()

    def loop():
        return np.concatenate([enc.transform(PATCHES[i:i + 1]) for i in range(N_PATCHES)])

    X = benchmark.pedantic(loop, rounds=3, iterations=1)
    assert X.shape == (N_PATCHES, 512)
    _record(benchmark, "per_patch")


@pytest.mark.benchmark(group="vgg19-encode")
def test_batched_contiguous(benchmark):
    """The batched path written out with NCHW (contiguous) memory instead of channels-last."""
    import torch

    from matrep.backbone import VGG19Backbone
    from matrep.plugins.vgg19 import pool_features

    bb = VGG19Backbone("random", taps=("pool5",), device=DEVICE)

    def run():
        out = []
        with torch.inference_mode():
            for i in range(0, N_PATCHES, 32):
                x = torch.from_numpy(PATCHES[i:i + 32])[:, None].to(DEVICE)
                out.append(pool_features(bb.features(x)["pool5"], "mean").cpu().numpy())
        return np.concatenate(out)

    run()
    X = benchmark.pedantic(run, rounds=3, iterations=1)
    assert X.shape == (N_PATCHES, 512)
    _record(benchmark, "batched_contiguous")
