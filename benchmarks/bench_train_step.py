"""Texture-VAE training throughput: matrep's step vs a plain PyTorch step of the same model.

Run::

    .venv/bin/python -m pytest benchmarks/bench_train_step.py --benchmark-enable -q -s

Both steps train the same model (same VGG19 weights, same head and decoder initialisation,
batch ``MATREP_BENCH_BATCH`` = 8 patches of 128 x 128, float32, Adam):

* ``plain``: what a straightforward eager implementation does every step: VGG19 forward on the
  input batch (frozen weights, ``requires_grad=False``; this one pass gives both the encoder
  features and the style targets), pooling + head + reparameterisation + decoder, VGG19 forward
  on the reconstruction, Gram matrices of both sides with ``torch.bmm``, the Gatys loss
  (``(G_hat - G)^2`` summed with the same 1/(4 C^2 M^2) scale), KL, backward, Adam. NCHW
  (contiguous) memory.
* ``plain_unfrozen``: the same plain step with the VGG19 parameters left at
  ``requires_grad=True`` (the optimiser holds only the head and decoder, so the model is the
  same, but autograd computes VGG19 weight gradients nobody uses) — a common way to write it,
  shown separately because freezing is one of matrep's wins and ``plain`` already has it.
* ``matrep``: :func:`matrep.plugins.texturevae.train.train_step` on inputs from the
  :class:`~matrep.plugins.texturevae.cache.FeatureCache`: the pooled encoder features and
  target Grams were computed once per patch (``torch.inference_mode``) and are reused every
  epoch, so a step runs the decoder and VGG19 on the reconstruction only;
  the style loss through ``matrep.kernels.style_loss_from_grams`` (torch reference on CPU,
  the Triton kernel on CUDA). Memory layout as the library picks it: channels-last on CUDA,
  NCHW on CPU (oneDNN ran this step faster in NCHW here).
* ``matrep_other_layout``: the same with the other layout (channels-last on CPU, NCHW on
  CUDA), to separate the cache's gain from the layout's.
* ``cache_build``: the one-off cost of the cache for the same patches (a VGG19 inference
  pass); ``matrep`` amortises it over the epochs, the summary prints the ratio with it counted
  once per epoch (the worst case: a single epoch).

Weights: ``random`` (speed does not depend on the values). ``MATREP_BENCH_DEVICE=cuda`` times
on a GPU (then ``MATREP_BENCH_PRECISION=bf16`` adds bf16 autocast to the matrep step). Ratios
are printed at the end and written to ``benchmarks/.train_step_ratios.json``. Nothing here
asserts on time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from matrep.backbone import VGG19Backbone  # noqa: E402
from matrep.plugins.texturevae.cache import FeatureCache  # noqa: E402
from matrep.plugins.texturevae.model import (STYLE_TAPS, TextureVAE, kl_divergence,  # noqa: E402
                                             pool_features, pooled_size, reparameterize)
from matrep.plugins.texturevae.train import train_step  # noqa: E402
from matrep.testing import make_texture_patches  # noqa: E402

B = int(os.environ.get("MATREP_BENCH_BATCH", "8"))
SIZE = 128
DEVICE = os.environ.get("MATREP_BENCH_DEVICE", "cpu")
PRECISION = os.environ.get("MATREP_BENCH_PRECISION", "fp32")
THREADS = int(os.environ.get("MATREP_BENCH_THREADS", "2"))
ROUNDS = int(os.environ.get("MATREP_BENCH_ROUNDS", "3"))
KL_WEIGHT = 1e-2
_RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup():
    if DEVICE == "cpu":
        torch.set_num_threads(THREADS)
    X = make_texture_patches(B, SIZE, seed=0)
    bb = VGG19Backbone("random", taps=STYLE_TAPS, device=DEVICE)
    return X, bb


def _model(seed=0):
    torch.manual_seed(seed)
    return TextureVAE(pooled_size(STYLE_TAPS, "meanstd"), 64, SIZE).to(DEVICE)


def _sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def _record(benchmark, name):
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        _RESULTS[name] = stats.stats.median
        benchmark.extra_info["patches_per_s"] = B / stats.stats.median


# -- the plain step -------------------------------------------------------------------------
def _gram_bmm(f):
    F = f.flatten(2)
    return torch.bmm(F, F.transpose(1, 2))


def plain_step(model, bb, opt, x, gen):
    feats = bb(bb.preprocess(x))
    mu, logvar = model.encode(pool_features(feats, STYLE_TAPS, "meanstd"))
    z = reparameterize(mu, logvar, gen)
    xhat = model.decode(z)
    feats_hat = bb(bb.preprocess(xhat))
    style = 0.0
    for t in STYLE_TAPS:
        C, M = feats[t].shape[1], feats[t].shape[2] * feats[t].shape[3]
        d = _gram_bmm(feats_hat[t]) - _gram_bmm(feats[t])
        style = style + d.square().sum(dim=(1, 2)).mean() / (4.0 * C * C * M * M)
    loss = style + KL_WEIGHT * kl_divergence(mu, logvar)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss)


def test_plain(benchmark, setup):
    X, bb = setup
    bb = bb.to(memory_format=torch.contiguous_format)
    model = _model()
    model.decoder.channels_last = False
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.from_numpy(X)[:, None].to(DEVICE)

    def run():
        plain_step(model, bb, opt, x, gen)
        _sync()

    run()  # warm-up
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    _record(benchmark, "plain")


def test_plain_unfrozen(benchmark, setup):
    X, bb = setup
    bb = VGG19Backbone(bb.weights, taps=STYLE_TAPS, device=DEVICE)
    bb.requires_grad_(True)
    model = _model()
    model.decoder.channels_last = False
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.from_numpy(X)[:, None].to(DEVICE)

    def run():
        bb.zero_grad(set_to_none=True)
        plain_step(model, bb, opt, x, gen)
        _sync()

    run()
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    _record(benchmark, "plain_unfrozen")


def _matrep(benchmark, setup, name, channels_last):
    X, bb = setup
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    bb = bb.to(memory_format=fmt)
    cache = FeatureCache(bb, X, encoder_taps=STYLE_TAPS, style_taps=STYLE_TAPS, batch_size=B)
    model = _model()
    model.decoder.channels_last = channels_last
    model.decoder.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    idx = np.arange(B)
    ac = torch.bfloat16 if PRECISION == "bf16" else None

    def run():
        pooled, grams = cache.batch(idx, DEVICE)
        train_step(model, bb, opt, pooled, grams, kl_weight=KL_WEIGHT, style_taps=STYLE_TAPS,
                   layer_weights=(1.0,) * 5, generator=gen, autocast_dtype=ac)
        _sync()

    run()
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    _record(benchmark, name)


def test_matrep(benchmark, setup):
    # the library's layout: channels-last on CUDA, NCHW on CPU
    _matrep(benchmark, setup, "matrep", DEVICE.startswith("cuda"))


def test_matrep_other_layout(benchmark, setup):
    _matrep(benchmark, setup, "matrep_other_layout", not DEVICE.startswith("cuda"))


def test_cache_build(benchmark, setup):
    X, bb = setup
    fmt = torch.channels_last if DEVICE.startswith("cuda") else torch.contiguous_format
    bb = bb.to(memory_format=fmt)

    def run():
        FeatureCache(bb, X, encoder_taps=STYLE_TAPS, style_taps=STYLE_TAPS, batch_size=B)
        _sync()

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    _record(benchmark, "cache_build")


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if "plain" not in _RESULTS or "matrep" not in _RESULTS:
        return
    out = {"device": DEVICE, "batch": B, "size": SIZE, "threads": THREADS, "precision": PRECISION,
           "seconds_per_step": dict(_RESULTS)}
    out["patches_per_s"] = {k: B / v for k, v in _RESULTS.items()}
    out["speedup_vs_plain"] = {k: _RESULTS["plain"] / v for k, v in _RESULTS.items()
                               if k != "cache_build"}
    if "cache_build" in _RESULTS:
        out["speedup_vs_plain_single_epoch_incl_cache"] = (
            _RESULTS["plain"] / (_RESULTS["matrep"] + _RESULTS["cache_build"]))
    print(f"\ntexture-VAE training step, batch {B} x {SIZE}^2, {DEVICE}, {THREADS} threads:")
    for k, v in out["patches_per_s"].items():
        s = out["speedup_vs_plain"].get(k)
        print(f"  {k:<14} {v:7.2f} patches/s" + (f"   {s:.2f}x plain" if s else ""))
    Path(__file__).with_name(".train_step_ratios.json").write_text(json.dumps(out, indent=2))
