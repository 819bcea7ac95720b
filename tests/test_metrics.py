"""Tests of matrep.metrics: steerable pyramid, STSIM-2 and DISTS."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from matrep.errors import BadInputError, WeightsNotFoundError  # noqa: E402
from matrep.metrics import METRICS, dists, stsim2  # noqa: E402
from matrep.metrics.dists import (CHANNELS, ENV_DISTS, ENV_VGG16, build_dists_network,  # noqa: E402
                                  dists_from_features, load_alpha_beta, load_dists,
                                  missing_ingredients)
from matrep.metrics.steerable import steerable_pyramid  # noqa: E402
from matrep.metrics.stsim import n_terms, stsim2_terms  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CASTIRON = DATA / "castiron_ductile" / "images" / "sample1(min_grainsize=0.007).jpg"
CASTIRON_B = DATA / "castiron_ductile" / "images" / "sample2(min_grainsize=0.007).jpg"
UHCS_PEARLITE = DATA / "uhcs" / "images" / "micrograph1.png"  # metadata.csv: pearlite

torch.set_num_threads(1)


def _rand(n, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, h, w, generator=g)


# ---------------------------------------------------------------------------------------
# steerable pyramid
# ---------------------------------------------------------------------------------------
def test_pyramid_shapes_and_tight_frame():
    x = _rand(2, 64, 48)[:, 0].double()
    p = steerable_pyramid(x)
    assert p.highpass.shape == (2, 64, 48)
    assert [b[0].shape for b in p.bands] == [(2, 64, 48), (2, 32, 24), (2, 16, 12)]
    assert p.lowpass.shape == (2, 8, 6)
    # the undecimated pyramid is a tight frame: energy of the input = energy of the bands
    # (complex bands carry half of each real band's energy in their real part)
    u = steerable_pyramid(x, subsample=False)
    energy = (u.highpass ** 2).sum((1, 2)) + (u.lowpass ** 2).sum((1, 2))
    energy = energy + sum((b.real ** 2).sum((1, 2)) for s in u.bands for b in s)
    np.testing.assert_allclose(energy.numpy(), (x ** 2).sum((1, 2)).numpy(), rtol=1e-3)


def test_pyramid_matches_pyrtools():
    pt = pytest.importorskip("pyrtools", reason="pyrtools (optional test oracle) not installed")
    rng = np.random.default_rng(1)
    # even sizes only: for odd sizes pyrtools centres its frequency grid differently from
    # MATLAB's buildSCFpyr (which matrep follows) and warns that it is imperfect there
    for shape in [(64, 48), (40, 56)]:
        im = rng.random(shape)
        ref = pt.pyramids.SteerablePyramidFreq(im, height=3, order=3, is_complex=True).pyr_coeffs
        p = steerable_pyramid(torch.tensor(im)[None])
        np.testing.assert_allclose(p.highpass[0].numpy(), ref["residual_highpass"], atol=1e-4)
        np.testing.assert_allclose(p.lowpass[0].numpy(), ref["residual_lowpass"], atol=1e-4)
        for s in range(3):
            for o in range(4):
                np.testing.assert_allclose(p.bands[s][o][0].numpy(), ref[(s, o)], atol=1e-4)


def test_pyramid_rejects_bad_shapes():
    with pytest.raises(ValueError, match="too small"):
        steerable_pyramid(torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="grey"):
        steerable_pyramid(torch.rand(1, 3, 32, 32))


# ---------------------------------------------------------------------------------------
# STSIM-2
# ---------------------------------------------------------------------------------------
def test_stsim2_identical_is_one_and_terms_count():
    x = _rand(3)
    s = stsim2(x, x)
    assert s.shape == (3,) and s.dtype == torch.float32
    np.testing.assert_allclose(s.numpy(), 1.0, atol=1e-6)
    assert stsim2_terms(x, x).shape == (3, n_terms()) == (3, 40)


@pytest.mark.parametrize("window", [7, None])
def test_stsim2_symmetric_and_in_range(window):
    x, y = _rand(3, seed=1), _rand(3, seed=2) ** 3
    a, b = stsim2(x, y, window=window), stsim2(y, x, window=window)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    assert bool(((a >= 0) & (a <= 1)).all())
    assert bool((a < 0.999).all())


def test_stsim2_batched_equals_single():
    x, y = _rand(3, seed=3), _rand(3, seed=4)
    full = stsim2(x, y, batch_size=2)
    single = torch.cat([stsim2(x[i:i + 1], y[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(full.numpy(), single.numpy(), atol=1e-6)


def test_stsim2_small_images_and_bad_input():
    x = _rand(1, 24, 24)
    assert float(stsim2(x, x)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        stsim2(_rand(1, 32, 32), _rand(1, 32, 40))
    with pytest.raises(ValueError, match="grey"):
        stsim2(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(TypeError):
        stsim2(np.zeros((1, 1, 32, 32)), np.zeros((1, 1, 32, 32)))


def test_stsim2_prefers_same_texture_synthetic():
    """Shifted crops of one random-disc texture beat stripes and white noise. The global
    variant is nearly shift invariant; the 7x7 sliding window compares local statistics at
    the same positions, so its margin is smaller (the reason matrep reports both)."""
    from matrep.metrics.stsim import stsim2_variants

    rng = np.random.default_rng(0)
    img = np.ones((192, 192), np.float32)
    yy, xx = np.mgrid[:192, :192]
    for _ in range(60):
        cy, cx, r = rng.uniform(0, 192), rng.uniform(0, 192), rng.uniform(3, 7)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 0.1
    stripes = (0.5 + 0.4 * np.sin(xx / 3.0 + yy / 9.0)).astype(np.float32)
    noise = rng.random((64, 64)).astype(np.float32)
    a = torch.tensor(np.stack([img[:64, :64]] * 3))[:, None]
    b = torch.tensor(np.stack([img[100:164, 90:154], stripes[:64, :64], noise]))[:, None]
    v = stsim2_variants(a, b, windows=(7, None))
    np.testing.assert_allclose(v[7].numpy(), stsim2(a, b).numpy(), atol=1e-6)
    np.testing.assert_allclose(v[None].numpy(), stsim2(a, b, window=None).numpy(), atol=1e-6)
    same, stripe, white = v[None].tolist()
    assert same > 0.9 and same > max(stripe, white) + 0.1
    same, stripe, white = v[7].tolist()
    assert same > max(stripe, white) + 0.03


def _patches(path, corners, size=128):
    from matrep.io import read_micrograph

    img = read_micrograph(path)
    return torch.tensor(np.stack([img[y:y + size, x:x + size] for y, x in corners]))[:, None]


@pytest.mark.skipif(not (CASTIRON.is_file() and UHCS_PEARLITE.is_file()),
                    reason="real micrographs ../shared/data (castiron_ductile, uhcs) not present")
@pytest.mark.parametrize("window", [7, None])
def test_stsim2_real_textures(window):
    """Nodular cast iron vs itself (shifted crops) scores clearly above cast iron vs UHCS
    pearlite (micrograph1, labelled pearlite in uhcs/metadata.csv)."""
    ref = _patches(CASTIRON, [(300, 300), (700, 1100), (1000, 400)])
    same = _patches(CASTIRON, [(340, 360), (760, 1150), (900, 500)])
    other = _patches(UHCS_PEARLITE, [(60, 60), (200, 300), (300, 450)])
    s_same = stsim2(ref, same, window=window)
    s_other = stsim2(ref, other, window=window)
    assert float(s_same.min()) > (0.9 if window is None else 0.7)
    assert float(s_same.mean()) > float(s_other.mean()) + (0.08 if window is None else 0.02)
    assert float(s_same.min()) > float(s_other.max())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stsim2_gpu_matches_cpu():
    x, y = _rand(4, seed=5), _rand(4, seed=6)
    cpu = stsim2(x, y)
    gpu = stsim2(x.cuda(), y.cuda())
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------
# DISTS
# ---------------------------------------------------------------------------------------
def _synthetic_net(seed=0):
    from torchvision.models import vgg16

    torch.manual_seed(seed)
    return build_dists_network(vgg16(weights=None).features)


def test_dists_math_with_synthetic_weights():
    """The DISTS arithmetic on features of a *random* VGG16 (test-only; never exposed as DISTS)."""
    net = _synthetic_net()
    g = torch.Generator().manual_seed(0)
    alpha = torch.rand(1, sum(CHANNELS), 1, 1, generator=g)
    beta = torch.rand(1, sum(CHANNELS), 1, 1, generator=g)
    x = torch.rand(2, 3, 48, 48, generator=g)
    y = torch.rand(2, 3, 48, 48, generator=g) ** 2
    with torch.no_grad():
        fx, fy = net(x), net(y)
    assert [f.shape[1] for f in fx] == list(CHANNELS)
    d_same = dists_from_features(fx, fx, alpha, beta)
    np.testing.assert_allclose(d_same.numpy(), 0.0, atol=1e-6)
    d_xy = dists_from_features(fx, fy, alpha, beta)
    d_yx = dists_from_features(fy, fx, alpha, beta)
    np.testing.assert_allclose(d_xy.numpy(), d_yx.numpy(), atol=1e-6)
    assert bool((d_xy > 0.01).all())
    # scaling alpha and beta together changes nothing (they are normalised)
    np.testing.assert_allclose(dists_from_features(fx, fy, 3 * alpha, 3 * beta).numpy(),
                               d_xy.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        dists_from_features(fx, fy, alpha[:, :10], beta[:, :10])


def test_dists_missing_weights_is_clear(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VGG16, raising=False)
    monkeypatch.delenv(ENV_DISTS, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    import matrep.metrics.dists as dm

    monkeypatch.setattr(dm, "_wheel_alpha_beta", lambda: None)
    assert missing_ingredients() == ["ImageNet VGG16 weights", "DISTS alpha/beta"]
    x = _rand(1, 32, 32)
    with pytest.raises(WeightsNotFoundError) as err:
        dists(x, x)
    msg = str(err.value)
    for part in ("VGG16", "alpha/beta", ENV_VGG16, ENV_DISTS, "vgg16-397923af.pth",
                 "never substitutes"):
        assert part in msg
    monkeypatch.setenv(ENV_VGG16, str(tmp_path / "nope.pth"))
    assert "nope.pth" in missing_ingredients()[0]


def test_dists_loads_files_and_refuses_pickles(monkeypatch, tmp_path):
    """The loading path end to end with synthetic files (random VGG16 saved as safetensors,
    random alpha/beta as .pt): identical images score 1, symmetric, in [0, 1]."""
    from safetensors.torch import save_file

    from torchvision.models import vgg16

    torch.manual_seed(1)
    feats = vgg16(weights=None).features
    save_file({f"features.{k}": v.contiguous() for k, v in feats.state_dict().items()},
              str(tmp_path / "vgg16.safetensors"))
    g = torch.Generator().manual_seed(0)
    torch.save({"alpha": torch.rand(1, sum(CHANNELS), 1, 1, generator=g),
                "beta": torch.rand(1, sum(CHANNELS), 1, 1, generator=g)}, tmp_path / "ab.pt")
    monkeypatch.setenv(ENV_VGG16, str(tmp_path / "vgg16.safetensors"))
    monkeypatch.setenv(ENV_DISTS, str(tmp_path / "ab.pt"))
    assert missing_ingredients() == []
    x, y = _rand(2, 40, 40, seed=7), _rand(2, 40, 40, seed=8)
    s_same, s_xy, s_yx = dists(x, x), dists(x, y), dists(y, x)
    np.testing.assert_allclose(s_same.numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(s_xy.numpy(), s_yx.numpy(), atol=1e-6)
    assert bool(((s_xy >= 0) & (s_xy < 1)).all())
    m = load_dists()
    assert m.provenance["alpha_beta_published"] is False
    assert len(m.provenance["vgg16_sha256"]) == 64

    # a pickle with an arbitrary object is refused by weights_only loading
    torch.save({"alpha": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(BadInputError, match="weights_only"):
        load_alpha_beta(tmp_path / "evil.pt")
    torch.save({"alpha": torch.zeros(5), "beta": torch.zeros(5)}, tmp_path / "short.pt")
    with pytest.raises(BadInputError, match="1475"):
        load_alpha_beta(tmp_path / "short.pt")


class Evil:
    """An arbitrary object inside a pickle (must be refused)."""


REF_DIR = os.environ.get("MATREP_DISTS_REFERENCE_IMAGES")


@pytest.mark.skipif(
    not (REF_DIR and (Path(REF_DIR) / "r0.png").is_file() and not missing_ingredients()),
    reason="needs the authors' example images (set MATREP_DISTS_REFERENCE_IMAGES to the folder "
           "holding r0.png and r1.png) and both DISTS ingredients (VGG16 weights and alpha/beta); "
           "neither is shipped with matrep")
def test_dists_matches_authors_reference():
    """The authors' DISTS_pt.py prints 0.3347 for r0.png vs r1.png (RGB, resized to 256)."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    def prep(p):
        im = Image.open(p).convert("RGB")
        if min(im.size) > 256:
            im = TF.resize(im, 256)
        return TF.to_tensor(im)[None]

    r0, r1 = prep(Path(REF_DIR) / "r0.png"), prep(Path(REF_DIR) / "r1.png")
    d = load_dists().distance(r0, r1)
    assert float(d) == pytest.approx(0.3347, abs=1e-3)


def test_metrics_registry():
    assert list(METRICS) == ["stsim2", "dists"]
