"""Texture-VAE: model, cache, split, training (resume, NaN, Ctrl-C), save/load, contract, CLI.

Fast: random VGG19 weights (weights="random"), 32x32 patches, a tiny decoder, one thread.
The real-data quick run is in ``test_texturevae_slow.py`` (marked slow).
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from matrep.errors import BadInputError, TrainingDivergedError  # noqa: E402
from matrep.encoder import FitContext  # noqa: E402
from matrep.testing import stop_after  # noqa: E402
from matrep.plugins.texturevae import TextureVAEEncoder  # noqa: E402
from matrep.plugins.texturevae import train as tr  # noqa: E402
from matrep.plugins.texturevae import step as trstep  # noqa: E402  (the step: style_loss_grams)
from matrep.plugins.texturevae.cache import FeatureCache, target_layout  # noqa: E402
from matrep.plugins.texturevae.model import Decoder, kl_divergence, pool_features  # noqa: E402

TINY = dict(latent_dim=4, weights="random", decoder_channels=(8, 8, 8, 8, 8), epochs=2,
            batch_size=4, device="cpu", batch_size_eval=8)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _patches(n=14, size=32, seed=0):
    from matrep.testing import make_texture_patches

    return make_texture_patches(n, size, seed)


def _patchset(size=32):
    """Two 'micrographs' of 4 rows x 2 columns of patches with coordinates."""
    from matrep.io import PatchSet

    X = _patches(16, size)
    ids = np.array(["a"] * 8 + ["b"] * 8)
    coords = np.array([(y * 16, x * 16) for _ in range(2) for y in range(4) for x in range(2)])
    return PatchSet(X, np.array(["a.png"] * 8 + ["b.png"] * 8), ids, coords, size, 16)


# -- model pieces -----------------------------------------------------------------------
def test_decoder_shape_and_range():
    dec = Decoder(3, 64, (8, 8, 8, 8, 8))
    y = dec(torch.randn(5, 3) * 10)
    assert y.shape == (5, 1, 64, 64)
    assert float(y.detach().min()) >= 0.0 and float(y.detach().max()) <= 1.0
    convs = [m for m in dec.blocks if isinstance(m, torch.nn.Conv2d)]
    ups = [m for m in dec.blocks if isinstance(m, torch.nn.Upsample)]
    assert len(convs) == 4 and len(ups) == 4 and all(c.kernel_size == (3, 3) for c in convs)


def test_decoder_rejects_patch_not_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        Decoder(3, 40)


def test_kl_zero_at_prior_and_positive_elsewhere():
    mu, lv = torch.zeros(3, 5), torch.zeros(3, 5)
    assert float(kl_divergence(mu, lv)) == 0.0
    # KL(N(1, 1) || N(0, 1)) = 0.5 per dimension
    assert float(kl_divergence(torch.ones(2, 4), torch.zeros(2, 4))) == pytest.approx(2.0)


def test_pool_features_meanstd():
    f = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 2, 2)
    out = pool_features({"pool1": f}, ["pool1"], "meanstd")
    assert out.shape == (2, 6)
    np.testing.assert_allclose(out[0, :3].numpy(), f[0].flatten(1).mean(1).numpy())
    np.testing.assert_allclose(out[0, 3:].numpy(), f[0].flatten(1).std(1, unbiased=False).numpy(),
                               rtol=1e-5)


# -- cache ------------------------------------------------------------------------------
def test_layout_stores_smaller_of_gram_and_features():
    from matrep.backbone import tap_shapes

    lay = {s.tap: s.kind for s in target_layout(tap_shapes(128), tr_taps())}
    assert lay == {"conv1_1": "gram", "pool1": "gram", "pool2": "gram", "pool3": "gram",
                   "pool4": "features"}


def tr_taps():
    return ("conv1_1", "pool1", "pool2", "pool3", "pool4")


@pytest.fixture(scope="module")
def random_backbone():
    # the same (cached) frozen network the tiny encoders use: building seeded random VGG19
    # weights takes seconds
    return TextureVAEEncoder(**TINY)._get_backbone()


@pytest.mark.parametrize("budget", [2**30, 0])  # in memory, spilled to a temporary file
def test_cache_matches_direct_computation(tmp_path, budget, random_backbone):
    from matrep.kernels import gram_matrix

    bb = random_backbone
    X = _patches(5, 32)
    cache = FeatureCache(bb, X, encoder_taps=tr_taps(), style_taps=tr_taps(), batch_size=2,
                         memory_budget=budget, directory=tmp_path)
    assert cache.on_disk == (budget == 0)
    idx = np.array([3, 0, 4])
    pooled, grams = cache.batch(idx, "cpu")
    with torch.no_grad():
        x = torch.from_numpy(X[idx])[:, None]
        feats = bb(bb.preprocess(x).contiguous(memory_format=torch.channels_last))
    np.testing.assert_allclose(pooled.numpy(), pool_features(feats, tr_taps()).numpy(), rtol=1e-4,
                               atol=1e-5)
    for g, t in zip(grams, tr_taps()):
        np.testing.assert_allclose(g.numpy(), gram_matrix(feats[t], backend="torch").numpy(),
                                   rtol=1e-4, atol=1e-4)
    spill = cache._spill
    cache.close()
    assert spill is None or not spill.exists()


# -- split ------------------------------------------------------------------------------
def test_region_split_has_no_overlap_and_covers_every_micrograph():
    ps = _patchset()
    tri, vai = tr.split_patches(len(ps), micrograph_ids=ps.micrograph_ids, coords=ps.coords,
                                patch=32, val_fraction=0.25)
    assert set(ps.micrograph_ids[vai]) == {"a", "b"}
    for v in vai:
        for t in tri:
            if ps.micrograph_ids[v] == ps.micrograph_ids[t]:
                dy = abs(ps.coords[v][0] - ps.coords[t][0])
                dx = abs(ps.coords[v][1] - ps.coords[t][1])
                assert dy >= 32 or dx >= 32, "held-out patch overlaps a training patch"


def test_micrograph_split_holds_out_whole_micrographs():
    ps = _patchset()
    tri, vai = tr.split_patches(len(ps), micrograph_ids=ps.micrograph_ids, coords=ps.coords,
                                patch=32, val_fraction=0.5, how="micrograph")
    assert not set(ps.micrograph_ids[tri]) & set(ps.micrograph_ids[vai])
    assert len(tri) + len(vai) == len(ps)


# -- training -----------------------------------------------------------------------------
def _losses(hist):
    keys = ("epoch", "train_loss", "train_style", "train_kl", "val_style")
    return [tuple(None if isinstance(h[k], float) and np.isnan(h[k]) else h[k] for k in keys)
            for h in hist]


def test_fit_logs_and_saves_and_loads(tmp_path):
    import matrep

    ps = _patchset()
    run = tmp_path / "run"
    enc = TextureVAEEncoder(**TINY).fit(ps, context=FitContext(run_dir=run))
    assert {"config.json", "state.safetensors", "log.csv", "checkpoint"} <= {p.name for p in run.iterdir()}
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,train_loss,train_style,train_kl,val_style")
    assert len(rows) == 1 + 3  # epoch 0 (before training) + 2 epochs
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["encoder"] == "texturevae"
    info = cfg["meta"]["weights_info"]
    assert info["name"].startswith("random") and len(info["sha256"]) == 64
    assert cfg["provenance"]["backbone"]["sha256"] == info["sha256"]
    loaded = matrep.load_model(run)
    assert isinstance(loaded, TextureVAEEncoder)
    X = ps.patches[:3]
    np.testing.assert_allclose(loaded.transform(X), enc.transform(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.reconstruct(X), enc.reconstruct(X), rtol=1e-5, atol=1e-6)
    # no pickle anywhere in the run folder
    for p in run.rglob("*"):
        if p.is_file():
            assert p.suffix in (".json", ".safetensors", ".csv"), p


def test_methods_shapes(tmp_path):
    enc = TextureVAEEncoder(**{**TINY, "epochs": 1}).fit(_patches(8))
    X = _patches(3, seed=1)
    mu, lv = enc.encode_full(X)
    assert mu.shape == lv.shape == (3, 4)
    assert enc.transform(X).shape == (3, 4)
    enc.set_params(output="mu_logvar")
    np.testing.assert_allclose(enc.transform(X), np.concatenate([mu, lv], 1), rtol=1e-5)
    assert enc.decode(mu).shape == (3, 32, 32)
    s = enc.sample(5, seed=3)
    assert s.shape == (5, 32, 32) and 0 <= s.min() and s.max() <= 1
    np.testing.assert_array_equal(s, enc.sample(5, seed=3))
    t = enc.traverse(X[0], [0, 3], np.linspace(-4, 4, 5))
    assert t.shape == (2, 5, 32, 32)
    d = enc.style_distance(X, X)
    np.testing.assert_allclose(d, 0.0, atol=1e-9)
    with pytest.raises(BadInputError, match="trained on 32x32"):
        enc.transform(_patches(2, 48))
    with pytest.raises(BadInputError, match="out of range"):
        enc.traverse(X[0], [4])


def test_resume_gives_the_same_losses(tmp_path):
    ps = _patchset()
    kw = {**TINY, "epochs": 3, "checkpoint_every": 1}
    full = TextureVAEEncoder(**kw).fit(ps, context=FitContext(run_dir=tmp_path / "full"))
    part = tmp_path / "part"
    # stop mid-epoch 1 (3 batches per epoch), then stop again in epoch 2, then finish
    stop_after(TextureVAEEncoder(**kw), 2).fit(ps, context=FitContext(run_dir=part))
    stop_after(TextureVAEEncoder(**kw), 3).fit(ps, context=FitContext(run_dir=part, resume=True))
    resumed = TextureVAEEncoder(**kw).fit(ps, context=FitContext(run_dir=part, resume=True))
    assert _losses(resumed.history_) == _losses(full.history_)
    np.testing.assert_array_equal(resumed.transform(ps.patches), full.transform(ps.patches))


def test_resume_refuses_other_settings_and_fresh_fit_refuses_old_run(tmp_path):
    ps = _patchset()
    stop_after(TextureVAEEncoder(**TINY), 1).fit(ps, context=FitContext(run_dir=tmp_path / "r"))
    with pytest.raises(BadInputError, match="already holds a training checkpoint"):
        TextureVAEEncoder(**TINY).fit(ps, context=FitContext(run_dir=tmp_path / "r"))
    with pytest.raises(BadInputError, match="differs in: params"):
        TextureVAEEncoder(**{**TINY, "lr": 0.5}).fit(ps, context=FitContext(run_dir=tmp_path / "r", resume=True))
    with pytest.raises(BadInputError, match="no checkpoint to resume from"):
        TextureVAEEncoder(**TINY).fit(ps, context=FitContext(run_dir=tmp_path / "empty", resume=True))


def test_nan_loss_raises_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    ps = _patchset()
    run = tmp_path / "run"
    real = trstep.style_loss_grams
    calls = {"n": 0}

    def flaky(*a, **k):
        out = real(*a, **k)
        if not torch.is_grad_enabled():  # validation
            return out
        calls["n"] += 1
        return out * float("nan") if calls["n"] == 5 else out  # poison the 5th training step

    monkeypatch.setattr(trstep, "style_loss_grams", flaky)
    kw = {**TINY, "epochs": 3, "checkpoint_every": 2}
    with pytest.raises(TrainingDivergedError, match="last good checkpoint .* is intact"):
        TextureVAEEncoder(**kw).fit(ps, context=FitContext(run_dir=run))
    meta = json.loads((run / "checkpoint" / "checkpoint.json").read_text())
    assert meta["position"]["global_step"] == 4  # the checkpoint written after step 4
    monkeypatch.setattr(trstep, "style_loss_grams", real)
    enc = TextureVAEEncoder(**kw).fit(ps, context=FitContext(run_dir=run, resume=True))
    assert np.isfinite(enc.transform(ps.patches)).all()


def test_ctrl_c_writes_checkpoint_and_resume_matches(tmp_path, monkeypatch):
    ps = _patchset()
    kw = {**TINY, "epochs": 2}
    full = TextureVAEEncoder(**kw).fit(ps, context=FitContext(run_dir=tmp_path / "full"))
    real = tr.train_step
    calls = {"n": 0}

    def step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGINT)  # like Ctrl-C in the middle of a step
        return real(*a, **k)

    monkeypatch.setattr(tr, "train_step", step)
    run = tmp_path / "int"
    with pytest.raises(KeyboardInterrupt):
        TextureVAEEncoder(**kw).fit(ps, context=FitContext(run_dir=run))
    meta = json.loads((run / "checkpoint" / "checkpoint.json").read_text())
    assert meta["position"]["global_step"] == 2  # the interrupted step finished first
    monkeypatch.setattr(tr, "train_step", real)
    resumed = TextureVAEEncoder(**kw).fit(ps, context=FitContext(run_dir=run, resume=True))
    assert _losses(resumed.history_) == _losses(full.history_)


def test_load_refuses_unfinished_run(tmp_path):
    import matrep

    stop_after(TextureVAEEncoder(**TINY), 1).fit(_patchset(), context=FitContext(run_dir=tmp_path / "r"))
    with pytest.raises(BadInputError):
        matrep.load_model(tmp_path / "r")


def test_bad_params_are_refused():
    with pytest.raises(BadInputError, match="layer_weights needs one weight per style layer"):
        TextureVAEEncoder(**{**TINY, "layer_weights": (1, 2)}).fit(_patches(4))
    with pytest.raises(BadInputError, match="multiple of 16"):
        TextureVAEEncoder(**TINY).fit(_patches(4, 40))


def test_check_encoder_contract():
    from matrep.testing import check_encoder

    check_encoder(TextureVAEEncoder(**{**TINY, "epochs": 1}), _patches(6, 32))


def test_import_does_not_load_torch():
    import subprocess
    import sys

    code = ("import sys, matrep.plugins.texturevae as t; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- CLI ----------------------------------------------------------------------------------
def test_cli_fit_reconstruct_generate_traverse(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from matrep.cli import main

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    X = _patches(2, 64)
    for i, x in enumerate(X):
        Image.fromarray((x * 255).astype(np.uint8)).save(imgs / f"m{i}.png")
    run = tmp_path / "run"
    r = CliRunner()
    res = r.invoke(main, ["fit", "--method", "texturevae", "--images", str(imgs), "--patch", "32",
                          "--stride", "16", "--out", str(run), "--epochs", "1", "--batch-size", "4",
                          "--latent-dim", "4", "--weights", "random", "--device", "cpu",
                          "--param", "decoder_channels=[8,8,8,8,8]", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "model saved to" in res.output
    # the same command again resumes the finished run (--resume is the default): nothing to do
    res = r.invoke(main, ["fit", "--method", "texturevae", "--images", str(imgs), "--patch", "32",
                          "--out", str(run), "--quiet"])
    assert res.exit_code == 0 and "model saved to" in res.output, res.output
    res = r.invoke(main, ["fit", "--method", "texturevae", "--images", str(imgs), "--out",
                          str(tmp_path / "x"), "--param", "nonsense=1"])
    assert res.exit_code != 0 and "no parameter(s) nonsense" in res.output

    fig = tmp_path / "rec.png"
    res = r.invoke(main, ["reconstruct", "--model", str(run), "--images", str(imgs), "-n", "3", "--stride", "16",
                          "--out", str(fig), "--quiet"])
    assert res.exit_code == 0, res.output
    assert fig.stat().st_size > 1000
    with np.load(fig.with_suffix(".npz")) as z:
        assert z["originals"].shape == z["reconstructions"].shape == (3, 32, 32)

    gen = tmp_path / "gen"
    res = r.invoke(main, ["generate", "--model", str(run), "-n", "4", "--out", str(gen)])
    assert res.exit_code == 0, res.output
    assert (gen / "samples.png").is_file() and len(list(gen.glob("sample_*.png"))) == 4

    tfig = tmp_path / "trav.png"
    res = r.invoke(main, ["traverse", "--model", str(run), "--image", str(imgs / "m0.png"),
                          "--dims", "0,2", "--range", "-2", "2", "--steps", "3", "--out", str(tfig)])
    assert res.exit_code == 0, res.output
    with np.load(tfig.with_suffix(".npz")) as z:
        assert z["rows"].shape == (2, 3, 32, 32)
    res = r.invoke(main, ["traverse", "--model", str(run), "--image", str(imgs / "m0.png"),
                          "--dims", "9", "--out", str(tfig)])
    assert res.exit_code != 0 and "out of range" in res.output
