"""Texture-VAE training recipe: bounded log-variance, schedules, loss-spike warning, best-model
keeping, balanced layer weights, the model's own resampling, and `fit --preset`.

Fast: random VGG19 weights, tiny patches and decoder, one thread.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from matrep.encoder import FitContext  # noqa: E402
from matrep.plugins.texturevae import TextureVAEEncoder  # noqa: E402
from matrep.plugins.texturevae import train as tr  # noqa: E402
from matrep.plugins.texturevae.model import (TextureVAE, bound_logvar,  # noqa: E402
                                             downsample_patches, upsample_patches)

from matrep.testing import make_texture_patches as _patches  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: a tiny texture-VAE (random VGG19 weights, 8-channel decoder), one epoch
TINY = {"latent_dim": 4, "weights": "random", "decoder_channels": (8,) * 5, "epochs": 1,
        "batch_size": 4, "device": "cpu", "batch_size_eval": 8}


# -- log-variance bound, schedules ------------------------------------------------------
def test_bound_logvar_is_identity_near_centre_and_never_leaves_bounds():
    raw = torch.tensor([-1e6, -50.0, -3.0, 1.0, 50.0, 1e6])
    out = bound_logvar(raw, (-10.0, 4.0))
    assert float(out.min()) >= -10.0 and float(out.max()) <= 4.0
    # slope 1 at the centre (-3): the parametrisation does not change a typical posterior
    c = torch.tensor([-3.0], requires_grad=True)
    bound_logvar(c, (-10.0, 4.0)).backward()
    assert float(c.grad) == pytest.approx(1.0)
    assert torch.equal(bound_logvar(raw, None), raw)


def test_kl_stays_bounded_for_an_exploding_head():
    model = TextureVAE(8, 3, 32, (4, 4, 4, 4, 4), logvar_bounds=(-10.0, 4.0))
    with torch.no_grad():
        model.head.fc_logvar.bias.fill_(1e4)  # what a diverging run does to the raw output
    _, lv = model.encode(torch.zeros(2, 8))
    assert float(lv.detach().max()) <= 4.0
    assert math.isfinite(float(torch.exp(lv.detach()).sum()))


def test_lr_schedule_and_kl_warmup():
    s = tr.TrainSettings(lr=1e-3, kl_weight=0.02, lr_schedule="cosine", lr_warmup=10,
                         kl_warmup=100, lr_final=0.05)
    assert s.lr_at(0, 1000, 1e-3) == pytest.approx(1e-4)        # warm-up starts at lr / 10
    assert s.lr_at(10, 1000, 1e-3) == pytest.approx(1e-3, rel=1e-3)
    assert s.lr_at(999, 1000, 1e-3) == pytest.approx(5e-5)      # cosine ends at 5 %
    lrs = [s.lr_at(t, 1000, 1e-3) for t in range(10, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert s.kl_weight_at(0) == 0.0 and s.kl_weight_at(50) == pytest.approx(0.01)
    assert s.kl_weight_at(100) == s.kl_weight_at(5000) == 0.02
    const = tr.TrainSettings(lr=1e-3)
    assert const.lr_at(0, 10, 1e-3) == const.lr_at(9, 10, 1e-3) == 1e-3


# -- spikes ----------------------------------------------------------------------------
def test_spike_monitor_flags_a_tenfold_jump_only():
    m = tr.SpikeMonitor()
    for i in range(tr.SPIKE_MIN_STEPS):
        assert m.check(style=10.0 + i % 3, kl=400.0) == []
    assert m.check(style=12.0, kl=3000.0) == []          # 7.5x: not a spike
    hits = m.check(style=11.0, kl=8000.0)                 # 20x the running median
    assert [h[0] for h in hits] == ["kl"]
    again = tr.SpikeMonitor.from_state(json.loads(json.dumps(m.state())))
    assert again.values == m.values


class _FakeCache:
    def __init__(self, n):
        self.n = n

    def batch(self, idx, device):
        return torch.zeros(len(idx), 8), []


def _fake_loop(monkeypatch, kl_values, val_values=None):
    """Run tr.train with a scripted train_step (it nudges the decoder bias by +1 each step,
    so each epoch's model differs) and, optionally, scripted held-out losses."""
    kl_iter = iter(kl_values)

    def fake_step(model, backbone, optimizer, pooled, grams, **kw):
        with torch.no_grad():
            model.decoder.out.bias.add_(1.0)
        kl = next(kl_iter)
        return [10.0 + 0.01 * kl, 10.0, kl]

    monkeypatch.setattr(tr, "train_step", fake_step)
    if val_values is not None:
        vals = iter(val_values)
        monkeypatch.setattr(tr, "evaluate", lambda *a, **k: (next(vals), 1.0))
    return fake_step


def test_loss_spike_prints_one_warning_and_is_marked_in_log(monkeypatch, tmp_path, capsys):
    n_steps = 40
    kls = [400.0] * 30 + [9000.0] + [400.0] * 9
    _fake_loop(monkeypatch, kls)
    model = TextureVAE(8, 3, 32, (4, 4, 4, 4, 4))
    s = tr.TrainSettings(epochs=2, batch_size=1, keep_best=False)
    warnings = []
    tr.train(model, None, _FakeCache(n_steps // 2), None, settings=s, style_taps=(),
             device=torch.device("cpu"), run_dir=tmp_path, warn=warnings.append)
    assert len(warnings) == 1
    assert "loss spike at epoch 2, step 31: kl" in warnings[0]
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert rows[2]["spikes"] == "31:kl" and rows[1]["spikes"] == ""
    # default warn: one line on stderr
    kls2 = iter(kls)
    monkeypatch.setattr(tr, "train_step", lambda *a, **k: [10.0, 10.0, next(kls2)])
    tr.train(TextureVAE(8, 3, 32, (4, 4, 4, 4, 4)), None, _FakeCache(n_steps // 2), None,
             settings=s, style_taps=(), device=torch.device("cpu"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len([ln for ln in err if "loss spike" in ln]) == 1


def test_keeps_the_best_epoch_not_the_last(monkeypatch):
    _fake_loop(monkeypatch, [100.0] * 12, val_values=[5.0, 3.0, 1.0, 2.0, 4.0])
    model = TextureVAE(8, 3, 32, (4, 4, 4, 4, 4))
    b0 = model.decoder.out.bias.clone()
    msgs = []
    hist = tr.train(model, None, _FakeCache(3), _FakeCache(2),
                    settings=tr.TrainSettings(epochs=4, batch_size=1), style_taps=(),
                    device=torch.device("cpu"), log=msgs.append)
    assert tr.best_epoch(hist) == 2
    # 3 steps per epoch, +1 per step: the kept model is the one after epoch 2
    assert torch.allclose(model.decoder.out.bias, b0 + 6.0)
    assert any("kept the model of epoch 2" in m for m in msgs)


def test_best_state_survives_resume(monkeypatch, tmp_path):
    """Interrupt in epoch 3, after epoch 2 (the best); resume: the kept model is the
    checkpointed best one."""
    _fake_loop(monkeypatch, [100.0] * 12, val_values=[5.0, 3.0, 1.0])
    model = TextureVAE(8, 3, 32, (4, 4, 4, 4, 4))
    b0 = model.decoder.out.bias.clone()
    s = tr.TrainSettings(epochs=4, batch_size=1)
    tr.train(model, None, _FakeCache(3), _FakeCache(2), settings=s, style_taps=(),
             device=torch.device("cpu"), run_dir=tmp_path, stop_after_steps=7)
    _fake_loop(monkeypatch, [100.0] * 5, val_values=[2.0, 4.0])
    model2 = TextureVAE(8, 3, 32, (4, 4, 4, 4, 4))
    hist = tr.train(model2, None, _FakeCache(3), _FakeCache(2), settings=s, style_taps=(),
                    device=torch.device("cpu"), run_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3, 4]
    assert tr.best_epoch(hist) == 2
    assert torch.allclose(model2.decoder.out.bias, b0 + 6.0)


# -- layer weights, resampling ----------------------------------------------------------
def test_balanced_layer_weights_equalise_the_layers():
    from matrep.backbone import VGG19Backbone
    from matrep.kernels import style_loss

    taps = ("conv1_1", "pool1", "pool2")
    bb = VGG19Backbone(weights="random", taps=taps).eval()
    X = _patches(16, 32)
    w = tr.balanced_layer_weights(bb, X, taps, n_pairs=16)
    assert len(w) == 3 and all(v > 0 for v in w)
    rng = np.random.default_rng([0, 31337])
    i = rng.choice(16, 16, replace=False)
    j = (i + rng.integers(1, 16, size=16)) % 16
    with torch.inference_mode():
        fa = bb(bb.preprocess(torch.from_numpy(X[i])[:, None]))
        fb = bb(bb.preprocess(torch.from_numpy(X[j])[:, None]))
        med = [float(style_loss([fa[t]], [fb[t]], [1.0], reduction="none").median()) for t in taps]
    shares = [wi * m for wi, m in zip(w, med)]
    assert shares == pytest.approx([sum(med) / 3] * 3, rel=1e-4)


def test_area_downsampling_and_back():
    x = torch.rand(2, 1, 8, 8)
    d = downsample_patches(x, 2)
    assert d.shape == (2, 1, 4, 4)
    assert float(d[0, 0, 0, 0]) == pytest.approx(float(x[0, 0, :2, :2].mean()))
    assert upsample_patches(d, 2).shape == x.shape
    assert downsample_patches(x, 1) is x


def test_downsampled_model_takes_and_returns_native_patches(tmp_path):
    X = _patches(12, 64)
    enc = TextureVAEEncoder(**TINY, downsample=2, layer_weights="balanced", kl_warmup=2,
                            lr_schedule="cosine", lr_warmup=1, val_split="patch",
                            val_fraction=0.25)
    enc.fit(X, context=FitContext(run_dir=tmp_path / "run"))
    assert enc.patch_size_ == 64 and enc.model_patch_size_ == 32
    assert enc.model_.decoder.start == 2  # decodes 32x32 internally
    assert enc.transform(X[:3]).shape == (3, 4)
    assert enc.reconstruct(X[:3]).shape == (3, 64, 64)
    assert enc.sample(2).shape == (2, 64, 64)
    assert enc.traverse(X[0], [0, 1], values=[-1.0, 1.0]).shape == (2, 2, 64, 64)
    assert enc.style_distance(X[:2], X[:2]) == pytest.approx([0.0, 0.0], abs=1e-6)
    assert len(enc.layer_weights_) == 5 and enc.best_epoch_ in (0, 1)
    with pytest.raises(Exception, match="64x64"):
        enc.transform(_patches(2, 32))
    import matrep

    back = matrep.load_model(tmp_path / "run")
    np.testing.assert_allclose(back.transform(X[:3]), enc.transform(X[:3]), rtol=1e-5, atol=1e-6)
    assert back.layer_weights_ == pytest.approx(enc.layer_weights_)
    assert back.best_epoch_ == enc.best_epoch_
    assert back.reconstruct(X[:1]).shape == (1, 64, 64)


def test_reconstruct_keeps_the_noise_draw_closest_in_style_loss(monkeypatch):
    """With a noise decoder, ``reconstruct`` decodes the posterior mean with the patch's own
    seed and the ``reconstruct_draws - 1`` seeds after it and keeps, per patch, the draw with
    the lowest style loss against the patch; ``reconstruct_draws=1`` is the own seed alone,
    and 0 is refused."""
    from matrep.errors import BadInputError
    from matrep.plugins.texturevae.model import noise_seed
    from matrep.seeds import next_seeds

    X = _patches(12, 32)
    enc = TextureVAEEncoder(**TINY, decoder_input="modulated", decoder_padding="circular",
                            val_split="patch", val_fraction=0.25, reconstruct_draws=4)
    enc.fit(X)
    x = X[:5]
    mu, _ = enc.encode_full(x)
    own = [noise_seed(p) for p in x]
    seeds = [own] + [list(s) for s in zip(*(next_seeds(o, 3) for o in own))]
    draws = np.stack([enc.decode(mu, seeds=s) for s in seeds])           # (4, 5, P, P)
    dist = np.stack([enc.style_distance(x, d) for d in draws])          # (4, 5)
    assert float(np.ptp(dist, axis=0).max()) > 0  # the draws differ in style loss
    want = draws[dist.argmin(0), np.arange(len(x))]
    np.testing.assert_allclose(enc.reconstruct(x), want, atol=1e-6)
    from matrep.plugins.texturevae import generative

    monkeypatch.setattr(generative, "RECONSTRUCT_CHUNK", 2)  # chunks of 2, 2, 1: the same
    np.testing.assert_allclose(enc.reconstruct(x), want, atol=1e-6)
    enc.set_params(reconstruct_draws=1)
    np.testing.assert_allclose(enc.reconstruct(x), draws[0], atol=1e-6)
    enc.set_params(reconstruct_draws=0)
    with pytest.raises(BadInputError, match="reconstruct_draws"):
        enc._validate_params()


def test_bad_recipe_parameters_are_refused():
    from matrep.errors import BadInputError

    X = _patches(6, 32)
    for bad in ({"lr": float("nan")}, {"lr": -1.0}, {"logvar_bounds": (2.0, 1.0)},
                {"grad_clip": 0}, {"lr_schedule": "linear"}, {"downsample": 0},
                {"layer_weights": "loud"}):
        with pytest.raises(BadInputError):
            TextureVAEEncoder(**{**TINY, **bad}).fit(X)
    with pytest.raises(BadInputError, match="multiple of 16"):
        TextureVAEEncoder(**TINY, downsample=2).fit(_patches(6, 48))


# -- fit --preset -----------------------------------------------------------------------
def test_fit_help_documents_preset():
    from click.testing import CliRunner

    from matrep.cli import main

    res = CliRunner().invoke(main, ["fit", "--help"])
    assert res.exit_code == 0
    assert "--preset" in res.output and "quick" in res.output


def test_presets_are_declared_and_valid():
    presets = TextureVAEEncoder.presets
    assert {"paper", "quick"} <= set(presets)
    assert presets["paper"]["params"] == {}          # the paper's configuration = the defaults
    valid = set(TextureVAEEncoder().get_params())
    for spec in presets.values():
        assert set(spec["params"]) <= valid
        assert spec["patching"]["patch"] % (16 * spec["params"].get("downsample", 1)) == 0


def test_fit_preset_quick_sets_parameters_and_patching(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from matrep.cli import main

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray((rng.random((256, 256)) * 255).astype(np.uint8)).save(imgs / f"m{k}.png")
    out = tmp_path / "run"
    args = ["fit", "--method", "texturevae", "--preset", "quick", "--images", str(imgs),
            "--out", str(out), "--weights", "random", "--epochs", "0", "--latent-dim", "4",
            "--param", "decoder_channels=[8,8,8,8,8]", "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "fit.json").read_text())
    q = TextureVAEEncoder.presets["quick"]
    assert rec["preset"] == "quick"
    assert rec["patches"]["patch"] == q["patching"]["patch"]
    assert rec["patches"]["stride"] == q["patching"]["stride"]
    assert rec["params"]["downsample"] == q["params"]["downsample"]
    assert rec["params"]["epochs"] == 0 and rec["params"]["latent_dim"] == 4  # explicit wins
    bad = CliRunner().invoke(main, ["fit", "--preset", "nope", "--images", str(imgs),
                                    "--out", str(tmp_path / "r2"), "--quiet"])
    assert bad.exit_code != 0 and "no preset 'nope'" in bad.output


def test_noise_decoder_is_position_free_and_deterministic_in_eval():
    from matrep.plugins.texturevae.model import Decoder

    dec = Decoder(3, 32, (8, 8, 8, 8, 8), input="noise", noise_channels=2)
    assert dec.project.out_features == 8  # one value per channel, not per position
    z = torch.randn(3, 3)
    dec.eval()
    a, b = dec(z), dec(z)
    assert a.shape == (3, 1, 32, 32) and torch.equal(a, b)
    assert torch.allclose(dec(z[:1]), a[:1], atol=1e-6)  # the same noise whatever the batch
    dec.train()
    assert not torch.equal(dec(z), dec(z))  # fresh noise in training
    with pytest.raises(ValueError, match="decoder input"):
        Decoder(3, 32, input="sparse")


def test_noise_decoder_model_round_trips(tmp_path):
    import matrep

    X = _patches(8, 32)
    enc = TextureVAEEncoder(**TINY, decoder_input="noise", val_split="patch", val_fraction=0.25)
    enc.fit(X, context=FitContext(run_dir=tmp_path / "run"))
    back = matrep.load_model(tmp_path / "run")
    np.testing.assert_allclose(back.reconstruct(X[:2]), enc.reconstruct(X[:2]), atol=1e-6)


def test_circular_decoder_has_no_absolute_position():
    """Periodic padding: a constant input decodes to a constant image, and a circular shift of
    the noise shifts the output the same way (placement comes from the noise only)."""
    from matrep.plugins.texturevae.model import Decoder

    torch.manual_seed(0)
    flat = Decoder(3, 32, (8, 8, 8, 8, 8), input="noise", noise_channels=0, padding="circular")
    y = flat(torch.randn(2, 3)).detach()
    assert float((y - y.mean(dim=(2, 3), keepdim=True)).abs().max()) < 1e-6
    zero = Decoder(3, 32, (8, 8, 8, 8, 8), input="noise", noise_channels=0, padding="zeros")
    y0 = zero(torch.randn(2, 3)).detach()
    assert float((y0 - y0.mean(dim=(2, 3), keepdim=True)).abs().max()) > 1e-4  # borders show
    dec = Decoder(3, 32, (8, 8, 8, 8, 8), input="noise", noise_channels=2, padding="circular")
    dec.eval()
    z = torch.randn(1, 3)
    noises = dec._noise(1, z.device, z.dtype, [5])
    # shift every block's noise by 1 cell of the coarsest grid (16 px at the output)
    shifted = [torch.roll(n, shifts=2 ** i, dims=3) for i, n in enumerate(noises)]
    dec._noise = lambda *a, **k: shifted
    a = Decoder.forward(dec, z, [5]).detach()
    dec._noise = lambda *a, **k: noises
    b = Decoder.forward(dec, z, [5]).detach()
    assert torch.allclose(a, torch.roll(b, shifts=16, dims=3), atol=1e-5)
    with pytest.raises(ValueError, match="padding"):
        Decoder(3, 32, padding="reflect")


def test_modulated_decoder_is_stationary_and_decodes_any_size():
    """The "modulated" decoder: z sets per-channel statistics, the noise sets placement; with
    periodic padding a circular shift of the noise shifts the output, and it decodes a canvas
    larger than its patch (periodic at that size)."""
    from matrep.plugins.texturevae.model import Decoder

    torch.manual_seed(0)
    dec = Decoder(3, 32, (8, 8, 8, 8, 8), input="modulated", noise_channels=2,
                  padding="circular")
    dec.eval()
    z = torch.randn(2, 3)
    a = dec(z, seeds=[1, 2]).detach()
    assert a.shape == (2, 1, 32, 32) and torch.equal(a, dec(z, seeds=[1, 2]))
    assert not torch.allclose(a[0], dec(z[:1], seeds=[3])[0].detach())  # another placement
    big = dec.decode_size(z, 64, seeds=[1, 2]).detach()
    assert big.shape == (2, 1, 64, 64)
    noises = dec._noise(1, z.device, z.dtype, [5])
    shifted = [torch.roll(n, shifts=2 ** i, dims=3) for i, n in enumerate(noises)]
    dec._noise = lambda *a, **k: shifted
    s = Decoder.forward(dec, z[:1], [5]).detach()
    dec._noise = lambda *a, **k: noises
    b = Decoder.forward(dec, z[:1], [5]).detach()
    assert torch.allclose(s, torch.roll(b, shifts=16, dims=3), atol=1e-5)
    # z changes the statistics at a fixed placement
    z2 = z[:1] + 3.0
    with torch.no_grad():
        dec.project.weight.normal_(std=1.0)
    assert not torch.allclose(Decoder.forward(dec, z2, [5]), b, atol=1e-3)
    with pytest.raises(ValueError, match="multiple of 16"):
        dec.decode_size(z, 40)
    with pytest.raises(ValueError, match="modulated"):
        Decoder(3, 32, (8, 8, 8, 8, 8), input="noise").decode_size(z, 64)
    with pytest.raises(ValueError, match="circular"):  # zero padding is not stationary
        Decoder(3, 32, (8, 8, 8, 8, 8), input="modulated").decode_size(z, 64)


def test_histogram_loss_measures_the_grey_level_distribution():
    from matrep.plugins.texturevae.model import histogram_loss, intensity_quantiles

    x = torch.rand(3, 1, 16, 16)
    q = intensity_quantiles(x)
    assert q.shape == (3, 256) and bool((q[:, 1:] >= q[:, :-1]).all())
    assert float(histogram_loss(x, q)) == 0.0
    # position-free: a permutation of the pixels has the same distribution
    perm = x.flatten(1)[:, torch.randperm(256)].view_as(x)
    assert float(histogram_loss(perm, q)) == pytest.approx(0.0, abs=1e-12)
    # a darker image is farther away, and the term has a gradient
    y = (x * 0.5).requires_grad_(True)
    loss = histogram_loss(y, q)
    assert float(loss.detach()) > 0.01
    loss.backward()
    assert float(y.grad.abs().sum()) > 0


def test_histogram_weight_trains_and_is_validated():
    from matrep.errors import BadInputError

    X = _patches(8, 32)
    enc = TextureVAEEncoder(**TINY, histogram_weight=100.0, decoder_input="modulated",
                            decoder_padding="circular", val_split="patch", val_fraction=0.25)
    enc.fit(X)
    assert np.isfinite([h["train_loss"] for h in enc.history_[1:]]).all()
    # the logged loss carries the term: larger than style + KL alone at the same weights
    h = enc.history_[1]
    assert h["train_loss"] > h["train_style"]
    for bad in (-1.0, float("nan"), "x"):
        with pytest.raises(BadInputError, match="histogram_weight"):
            TextureVAEEncoder(**TINY, histogram_weight=bad).fit(X)


def test_spectrum_loss_measures_the_length_scale_not_the_placement():
    from matrep.plugins.texturevae.model import radial_log_spectrum, spectrum_loss

    g = torch.Generator().manual_seed(0)
    fine = torch.rand(2, 1, 32, 32, generator=g)
    # a coarser texture: the same kind of noise in 4x4 blocks
    coarse = torch.rand(2, 1, 8, 8, generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3)
    s_fine, s_coarse = radial_log_spectrum(fine), radial_log_spectrum(coarse)
    assert s_fine.shape == (2, 16)
    assert float(spectrum_loss(fine, s_fine)) == pytest.approx(0.0, abs=1e-10)
    # placement-free: a periodic shift has the same power spectrum
    shifted = torch.roll(fine, shifts=(5, 11), dims=(2, 3))
    assert float(spectrum_loss(shifted, s_fine)) == pytest.approx(0.0, abs=1e-8)
    # and so does a brighter copy (the mean is removed; contrast is the histogram term's)
    assert float(spectrum_loss(fine + 0.2, s_fine)) == pytest.approx(0.0, abs=1e-8)
    # the coarse texture puts its power at low frequencies: far from the fine one's spectrum
    low, high = slice(0, 4), slice(8, 16)
    assert bool((s_coarse[:, low].mean(1) > s_fine[:, low].mean(1)).all())
    assert bool((s_coarse[:, high].mean(1) < s_fine[:, high].mean(1)).all())
    y = coarse.clone().requires_grad_(True)
    loss = spectrum_loss(y, s_fine)
    assert float(loss.detach()) > 1.0
    loss.backward()
    assert float(y.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="square"):
        radial_log_spectrum(torch.rand(1, 1, 16, 32))


@pytest.mark.parametrize("name, weight", [("spectrum_weight", 10.0), ("phase_weight", 1000.0),
                                          ("lineal_weight", 1000.0),
                                          ("minkowski_weight", 100.0),
                                          ("spread_weight", 100.0)])
def test_grey_term_weight_trains_and_is_validated(name, weight):
    from matrep.errors import BadInputError

    from matrep.plugins.texturevae.model import _lag_bins, _radial_bins

    _radial_bins.cache_clear()  # first made in the cache's inference mode, then trained with
    _lag_bins.cache_clear()
    X = _patches(8, 32)
    kw = dict(TINY, decoder_input="modulated", decoder_padding="circular", val_split="patch",
              val_fraction=0.25)
    with_term = TextureVAEEncoder(**kw, **{name: weight}).fit(X)
    without = TextureVAEEncoder(**kw).fit(X)
    # same seed, same first batch: the logged loss of the first epoch carries the term
    h, h0 = with_term.history_[1], without.history_[1]
    assert np.isfinite(h["train_loss"])
    assert h["train_loss"] - h["train_style"] > h0["train_loss"] - h0["train_style"] + 1.0
    for bad in (-1.0, float("inf"), float("nan"), "x"):
        with pytest.raises(BadInputError, match=name):
            TextureVAEEncoder(**TINY, **{name: bad}).fit(X)


def test_spread_loss_asks_the_aggregate_posterior_for_unit_variance():
    from matrep.plugins.texturevae.model import spread_loss

    mu = torch.tensor([[0.5, 1.0], [-0.5, -1.0]])           # batch variances 0.5 and 2
    logvar = torch.log(torch.tensor([[0.5, 1.0], [0.5, 1.0]]))
    assert float(spread_loss(mu, logvar)) == pytest.approx(0.0 + (2.0 + 1.0 - 1.0) ** 2)
    assert float(spread_loss(mu[:1], logvar[:1])) == 0.0     # one patch: no spread to measure
    mu.requires_grad_(True)
    spread_loss(mu, logvar).backward()
    assert mu.grad[:, 0].abs().sum() == 0 and mu.grad[:, 1].abs().sum() > 0


def _discs(n_side, radius, P=64):
    """A grey patch: dark discs of ``radius`` on a bright ground, ``n_side`` x ``n_side``."""
    yy, xx = np.mgrid[0:P, 0:P]
    img = np.full((P, P), 0.8, np.float32)
    step = P / n_side
    for i in range(n_side):
        for j in range(n_side):
            cy, cx = (i + 0.5) * step, (j + 0.5) * step
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = 0.2
    return torch.from_numpy(img)[None, None]


def test_phase_correlation_measures_particle_size_not_amount_or_placement():
    from matrep.plugins.texturevae.cache import dark_thresholds
    from matrep.plugins.texturevae.model import (phase_correlation, phase_loss, phase_max_lag,
                                                 soft_dark_phase)

    big, small = _discs(2, 12.0), _discs(6, 4.0)  # about the same dark area fraction
    assert abs(float((big < 0.5).float().mean()) - float((small < 0.5).float().mean())) < 0.03
    t_big, t_small = (torch.from_numpy(dark_thresholds(x)) for x in (big, small))
    assert 0.2 <= float(t_big) < 0.8
    c_big = phase_correlation(soft_dark_phase(big, t_big))
    c_small = phase_correlation(soft_dark_phase(small, t_small))
    assert c_big.shape == (1, phase_max_lag(64)) == (1, 16)
    # the big discs stay correlated longer: at a lag of 6 px the small ones are left behind
    assert float(c_big[0, 5]) > 0.6 > float(c_small[0, 5])
    assert float(phase_loss(big, (t_big, c_big))) == pytest.approx(0.0, abs=1e-10)
    # placement-free (up to the patch border): a shift leaves it nearly unchanged
    shifted = torch.roll(big, shifts=(7, 3), dims=(2, 3))
    assert float(phase_loss(shifted, (t_big, c_big))) < 0.1 * float(phase_loss(small, (t_big, c_big)))
    # differentiable, and a graphite-free input (NaN threshold) is left out
    y = small.clone().requires_grad_(True)
    loss = phase_loss(y, (t_big, c_big))
    assert float(loss.detach()) > 0.01
    loss.backward()
    assert float(y.grad.abs().sum()) > 0
    flat = torch.full((1, 1, 64, 64), 0.5)
    assert np.isnan(dark_thresholds(flat)).all()
    assert float(phase_loss(flat, (torch.tensor([float("nan")]), c_big))) == 0.0


def _decoder_option_round_trips(tmp_path, name, value, bad):
    """A modulated periodic decoder with ``name=value``: ``bad`` is refused with a message
    naming the option; the fitted model saves it and loads back with the same
    reconstructions. Returns the fitted encoder."""
    import matrep
    from matrep.errors import BadInputError

    X = _patches(8, 32)
    kw = dict(TINY, decoder_input="modulated", decoder_padding="circular", val_split="patch",
              val_fraction=0.25, **{name: value})
    with pytest.raises(BadInputError, match=name):
        TextureVAEEncoder(**{**kw, name: bad}).fit(X)
    enc = TextureVAEEncoder(**kw)
    enc.fit(X, context=FitContext(run_dir=tmp_path / "run"))
    back = matrep.load_model(tmp_path / "run")
    assert getattr(back, name) == value
    np.testing.assert_allclose(back.reconstruct(X[:2]), enc.reconstruct(X[:2]), atol=1e-6)
    return enc


def test_bilinear_upsampling_is_periodic_and_round_trips(tmp_path):
    """``decoder_upsample="bilinear"``: a shift of the map by one cell shifts the upsampled map
    by two pixels (no edge clamping: the decoder stays stationary); inside the map it is
    torch's bilinear upsampling; the option is validated and saved with the model."""
    from matrep.plugins.texturevae.model import Decoder, _PeriodicBilinear

    h = torch.randn(2, 3, 8, 8)
    up = _PeriodicBilinear()
    assert up(h).shape == (2, 3, 16, 16)
    torch.testing.assert_close(up(torch.roll(h, 1, dims=3)), torch.roll(up(h), 2, dims=3))
    plain = torch.nn.functional.interpolate(h, scale_factor=2, mode="bilinear",
                                            align_corners=False)
    torch.testing.assert_close(up(h)[..., 2:-2, 2:-2], plain[..., 2:-2, 2:-2])
    with pytest.raises(ValueError, match="upsampling"):
        Decoder(3, 32, upsample="cubic")
    enc = _decoder_option_round_trips(tmp_path, "decoder_upsample", "bilinear", "cubic")
    assert isinstance(enc.model_.decoder.blocks[1], _PeriodicBilinear)


def test_smooth_noise_keeps_unit_variance_and_round_trips(tmp_path):
    """``decoder_noise="smooth"``: each noise channel smoothed periodically at its own width
    (wider: more correlated neighbours), unit variance kept, the white channels untouched;
    validated; saved with the model."""
    from matrep.plugins.texturevae.model import SMOOTH_NOISE_SIGMAS, Decoder, smooth_noise

    g = torch.Generator().manual_seed(0)
    white = torch.randn(32, 8, 32, 32, generator=g)
    sm = smooth_noise(white)
    assert sm.shape == white.shape
    torch.testing.assert_close(sm.std(dim=(0, 2, 3)), torch.ones(8), atol=0.1, rtol=0)
    # lag-1 correlation grows with the width; sigma 0 leaves the channel as it was
    lag1 = (sm * torch.roll(sm, 1, dims=3)).mean(dim=(0, 2, 3))
    assert SMOOTH_NOISE_SIGMAS[0] > SMOOTH_NOISE_SIGMAS[4] > 0 == SMOOTH_NOISE_SIGMAS[-1]
    assert float(lag1[0]) > float(lag1[4]) > 0.3 > abs(float(lag1[-1]))
    torch.testing.assert_close(sm[:, -1], white[:, -1], atol=1e-5, rtol=0)
    # periodic: a shift of the noise shifts the smoothed noise
    torch.testing.assert_close(smooth_noise(torch.roll(white, 5, dims=2)),
                               torch.roll(sm, 5, dims=2), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="noise"):
        Decoder(3, 32, input="modulated", noise="pink")
    enc = _decoder_option_round_trips(tmp_path, "decoder_noise", "smooth", "pink")
    assert enc.model_.decoder.noise_kind == "smooth"


def test_up_conv_block_convolves_at_output_resolution_and_round_trips(tmp_path):
    """``decoder_block="up_conv"``: every block upsamples before its convolution, so each
    convolution (and its noise maps) works at the block's output resolution; the decoder stays
    stationary with periodic padding; validated; saved with the model."""
    from matrep.plugins.texturevae.model import Decoder

    torch.manual_seed(0)
    sizes = {}
    for block in ("conv_up", "up_conv"):
        dec = Decoder(3, 32, (8, 8, 8, 8, 8), input="modulated", noise_channels=2,
                      padding="circular", block=block).eval()
        convs = [m for m in dec.blocks if isinstance(m, torch.nn.Conv2d)]
        seen = []
        hooks = [c.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
                 for c in convs]
        z = torch.randn(1, 3)
        assert dec(z, seeds=[4]).shape == (1, 1, 32, 32)
        for h in hooks:
            h.remove()
        sizes[block] = seen
        assert [n.shape[-1] for n in dec._noise(1, z.device, z.dtype, [4])] == seen
        if block == "up_conv":  # one cell of the first noise grid (4 x 4) is 8 output pixels
            noises = dec._noise(1, z.device, z.dtype, [5])
            b = Decoder.forward(dec, z, [5]).detach()
            dec._noise = lambda *a, **k: [torch.roll(n, 2 ** i, dims=3)
                                          for i, n in enumerate(noises)]
            torch.testing.assert_close(Decoder.forward(dec, z, [5]).detach(),
                                       torch.roll(b, 8, dims=3), atol=1e-5, rtol=0)
    assert sizes == {"conv_up": [2, 4, 8, 16], "up_conv": [4, 8, 16, 32]}
    with pytest.raises(ValueError, match="block"):
        Decoder(3, 32, block="conv_conv")
    enc = _decoder_option_round_trips(tmp_path, "decoder_block", "up_conv", "conv_conv")
    assert isinstance(enc.model_.decoder.blocks[0], torch.nn.Upsample)


def test_decoder_convs_adds_noise_free_convolutions_at_output_resolution(tmp_path):
    """``decoder_convs=2``: each block gets a second 3x3 convolution at its output resolution
    that takes no noise and (modulated input) its own scale and shift from z; the decoder stays
    stationary; the dense decoder runs too; validated; saved with the model."""
    from matrep.plugins.texturevae.model import Decoder, _RefineConv

    torch.manual_seed(0)
    one = Decoder(3, 32, (8, 8, 8, 8, 8), input="modulated", noise_channels=2,
                  padding="circular", block="up_conv").eval()
    two = Decoder(3, 32, (8, 8, 8, 8, 8), input="modulated", noise_channels=2,
                  padding="circular", block="up_conv", convs=2).eval()
    refine = [m for m in two.blocks if isinstance(m, _RefineConv)]
    first = [m for m in two.blocks if type(m) is torch.nn.Conv2d]
    assert len(refine) == len(first) == 4
    assert all(m.in_channels == 8 for m in refine) and all(m.in_channels == 10 for m in first)
    assert two.project.out_features == 2 * one.project.out_features
    seen = []
    hooks = [c.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1])) for c in refine]
    z = torch.randn(2, 3)
    with torch.no_grad():
        out = two(z, seeds=[1, 2])
    for h in hooks:
        h.remove()
    assert out.shape == (2, 1, 32, 32) and seen == [4, 8, 16, 32]
    # every z moves the refine layers' modulation: a change of their scales changes the output
    with torch.no_grad():
        two.project.bias[-1] += 5.0
        assert float((two(z, seeds=[1, 2]) - out).abs().max()) > 1e-4
    # stationary: rolling every noise map by one cell of its grid rolls the output
    noises = two._noise(1, z.device, z.dtype, [3])
    b = Decoder.forward(two, z[:1], [3]).detach()
    two._noise = lambda *a, **k: [torch.roll(n, 2 ** i, dims=2) for i, n in enumerate(noises)]
    torch.testing.assert_close(Decoder.forward(two, z[:1], [3]).detach(),
                               torch.roll(b, 8, dims=2), atol=1e-5, rtol=0)
    dense = Decoder(3, 32, (8, 8, 8, 8, 8), convs=3)
    assert dense(z).shape == (2, 1, 32, 32)
    assert sum(isinstance(m, _RefineConv) for m in dense.blocks) == 8
    for bad in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="convs"):
            Decoder(3, 32, convs=bad)
    enc = _decoder_option_round_trips(tmp_path, "decoder_convs", 2, 4)
    assert sum(isinstance(m, _RefineConv) for m in enc.model_.decoder.blocks) == 4


def test_noise_start_places_particles_on_a_finer_grid_and_round_trips(tmp_path):
    """``decoder_noise_start=k``: the blocks before k get zeros for noise, so with a modulated
    circular decoder their output is the same at every position (placement starts at block
    k's grid); later blocks still take the seed's noise; validated; saved with the model."""
    import matrep
    from matrep.errors import BadInputError
    from matrep.plugins.texturevae.model import Decoder

    torch.manual_seed(0)
    dec = Decoder(4, 64, input="modulated", padding="circular", noise_start=2).eval()
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o))
             for m in dec.blocks if isinstance(m, torch.nn.Conv2d)]
    z = torch.randn(2, 4)
    with torch.no_grad():
        a, b = dec(z, seeds=[1, 1]), dec(z, seeds=[2, 2])
    for h in hooks:
        h.remove()
    for k, out in enumerate(seen[:4]):  # the first call's four convolutions
        spread = float((out - out.mean((2, 3), keepdim=True)).abs().max())
        assert (spread < 1e-5) == (k < 2), (k, spread)
    assert float((a - b).abs().mean()) > 1e-3  # the seed still places the particles
    with pytest.raises(ValueError, match="noise_start"):
        Decoder(4, 64, input="modulated", padding="circular", noise_start=4)
    X = _patches(8, 32)
    kw = dict(TINY, decoder_input="modulated", decoder_padding="circular",
              decoder_noise_start=1, val_split="patch", val_fraction=0.25)
    for bad in (-1, 4, 1.5, "2"):
        with pytest.raises(BadInputError, match="decoder_noise_start"):
            TextureVAEEncoder(**{**kw, "decoder_noise_start": bad}).fit(X)
    enc = TextureVAEEncoder(**kw)
    enc.fit(X, context=FitContext(run_dir=tmp_path / "run"))
    assert enc.model_.decoder.noise_start == 1
    back = matrep.load_model(tmp_path / "run")
    assert back.decoder_noise_start == 1
    np.testing.assert_allclose(back.reconstruct(X[:2]), enc.reconstruct(X[:2]), atol=1e-6)


def test_phase_correlation_is_the_twopoint_plugins_statistic():
    """The loss's differentiable S2 is the same statistic the ``twopoint`` encoder computes
    (non-periodic, radially averaged over round(|r|) = k), normalised by S2(0)."""
    from matrep.plugins.texturevae.model import phase_correlation, phase_max_lag
    from matrep.plugins.twopoint.stats import radial_average, two_point_stats

    g = torch.Generator().manual_seed(0)
    m = torch.rand(3, 32, 32, generator=g)
    R = phase_max_lag(32)
    ref = radial_average(two_point_stats(m.numpy(), m.numpy(), periodic_boundary=False,
                                         cutoff=R))
    want = ref[:, 1:] / (ref[:, :1] + 1e-4)
    np.testing.assert_allclose(phase_correlation(m).numpy(), want, rtol=1e-4, atol=1e-6)


def test_lineal_path_counts_segments_inside_and_tells_fragments_from_a_disc():
    """``lineal_path`` of a hard indicator is the brute-force share of horizontal and vertical
    segments inside the phase; a disc and the same disc cut by thin gaps have nearly the same
    two-point curve at short lags but a lineal path that falls much faster; the lineal term is
    differentiable and leaves graphite-free inputs out."""
    from matrep.plugins.texturevae.model import (lineal_loss, lineal_path, phase_correlation,
                                                 phase_max_lag)

    rng = np.random.default_rng(0)
    m = (rng.random((32, 32)) < 0.7).astype(np.float32)
    want = []
    for r in range(1, phase_max_lag(32) + 1):
        h = np.mean([m[:, x:x + r + 1].all(1).mean() for x in range(32 - r)])
        v = np.mean([m[y:y + r + 1, :].all(0).mean() for y in range(32 - r)])
        want.append(0.5 * (h + v) / (m.mean() + 1e-4))
    np.testing.assert_allclose(lineal_path(torch.from_numpy(m)[None])[0].numpy(), want,
                               atol=1e-5)
    yy, xx = np.mgrid[0:64, 0:64]
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 15 ** 2).astype(np.float32)
    cut = disc.copy()
    cut[:, 24] = cut[:, 40] = cut[24, :] = cut[40, :] = 0  # the disc in 9 pieces
    L = lineal_path(torch.from_numpy(np.stack([disc, cut])))
    S = phase_correlation(torch.from_numpy(np.stack([disc, cut])))
    assert float(L[0, 9]) > 0.5 and float(L[1, 9]) < 0.5 * float(L[0, 9])
    assert float(S[1, 9]) > 0.8 * float(S[0, 9])
    # the loss: zero for the input itself, differentiable, NaN thresholds left out
    x = torch.from_numpy(0.8 - 0.6 * disc)[None, None]
    thr = torch.tensor([0.5])
    from matrep.plugins.texturevae.model import soft_dark_phase

    target = (thr, lineal_path(soft_dark_phase(x, thr)))
    assert float(lineal_loss(x, target)) < 1e-10
    y = torch.from_numpy(0.8 - 0.6 * cut)[None, None].requires_grad_(True)
    loss = lineal_loss(y, target)
    assert float(loss.detach()) > 0.01
    loss.backward()
    assert float(y.grad.abs().sum()) > 0
    assert float(lineal_loss(y.detach(), (torch.tensor([float("nan")]), target[1]))) == 0.0


def test_minkowski_functionals_count_particles_and_boundary_and_tell_lobes_from_a_disc():
    """On hard masks the Euler number is skimage's (8-connected) and the boundary length the
    brute-force count of pixel edges; a disc and the same area as lobed or split particles
    differ in boundary and count; the term is zero for the input itself, differentiable, and
    leaves graphite-free inputs out."""
    from skimage.measure import euler_number

    from matrep.plugins.texturevae.model import (minkowski_functionals, minkowski_loss,
                                                 soft_dark_phase)

    rng = np.random.default_rng(0)
    masks = [(rng.random((32, 32)) < q).astype(np.float32) for q in (0.2, 0.45, 0.7)]
    f = minkowski_functionals(torch.from_numpy(np.stack(masks))).numpy()
    for m, (a, b, chi) in zip(masks, f):
        pm = np.pad(m, 1)
        edges = (np.abs(np.diff(pm, axis=1))[1:-1].sum()
                 + np.abs(np.diff(pm, axis=0))[:, 1:-1].sum())
        assert np.exp(a) - 0.01 == pytest.approx(m.mean(), rel=1e-5)
        assert (np.exp(b) - 0.01) * m.size == pytest.approx(edges, rel=1e-4)
        want = euler_number(m.astype(bool), connectivity=2)
        assert np.sinh(chi) == pytest.approx(want, abs=1e-3)
    yy, xx = np.mgrid[0:64, 0:64]
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 12 ** 2).astype(np.float32)
    lobed = disc.copy()
    for cy, cx in ((32, 47), (17, 32), (47, 32), (32, 17)):  # four lobes on the disc
        lobed[(yy - cy) ** 2 + (xx - cx) ** 2 < 4 ** 2] = 1
    split = disc.copy()
    split[:, 32] = split[32, :] = 0  # the disc in four pieces
    F = minkowski_functionals(torch.from_numpy(np.stack([disc, lobed, split]))).numpy()
    assert np.sinh(F[:, 2]) == pytest.approx([1, 1, 4], abs=1e-3)
    per_area = np.exp(F[:, 1]) / np.exp(F[:, 0])
    assert per_area[1] > 1.1 * per_area[0] and per_area[2] > 1.1 * per_area[0]
    # the loss
    x = torch.from_numpy(0.8 - 0.6 * disc)[None, None]
    thr = torch.tensor([0.5])
    target = (thr, minkowski_functionals(soft_dark_phase(x, thr, 0.02)))
    assert float(minkowski_loss(x, target)) < 1e-10
    y = torch.from_numpy(0.8 - 0.6 * split)[None, None].requires_grad_(True)
    loss = minkowski_loss(y, target)
    assert float(loss.detach()) > 0.3  # asinh(4) - asinh(1) = 1.2 in one of three
    loss.backward()
    assert float(y.grad.abs().sum()) > 0
    assert float(minkowski_loss(y.detach(), (torch.tensor([float("nan")]), target[1]))) == 0.0


def test_fit_summary_names_the_saved_epoch_when_it_is_not_the_last():
    """`matrep fit`'s last line gives the held-out loss of the model it saved: the best
    epoch's when that is not the last one."""
    from matrep.cli.fit import training_summary

    hist = [{"epoch": e, "val_style": v} for e, v in enumerate([49.49, 20.0, 17.18, 17.21])]
    line = training_summary(hist, best=2)
    assert line.endswith("49.49 before training -> 17.18 at epoch 2 (the saved model; epoch 3, "
                         "the last, had 17.21)")
    assert training_summary(hist, best=3).endswith("-> 17.21 after 3 epochs")
    assert training_summary(hist).endswith("-> 17.21 after 3 epochs")
