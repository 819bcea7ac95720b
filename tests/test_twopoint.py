"""Two-point statistics: physics (closed forms), segmentation rules, and the encoder."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from matrep.errors import BadInputError, NotFittedError
from matrep.plugins.twopoint import (
    TwoPointEncoder,
    correlations_multiple,
    otsu_thresholds,
    radial_average,
    segment,
    two_point_stats,
    two_point_stats_reference,
)
from matrep.testing import check_encoder, make_texture_patches

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LI2018 = DATA / "li2018_segmented"
CASTIRON = DATA / "castiron_ductile"


def _random_phase(shape, frac=0.35, seed=0):
    return (np.random.default_rng(seed).random(shape) < frac).astype(np.float64)


def _brute_force(a, b, cutoff, periodic):
    """sum_s a[s] b[s + r] / S_r by explicit shifts (no FFT)."""
    n, nx, ny = a.shape
    out = np.zeros((n, 2 * cutoff + 1, 2 * cutoff + 1))
    for i, rx in enumerate(range(-cutoff, cutoff + 1)):
        for j, ry in enumerate(range(-cutoff, cutoff + 1)):
            if periodic:
                shifted = np.roll(b, (-rx, -ry), axis=(1, 2))
                out[:, i, j] = (a * shifted).sum(axis=(1, 2)) / (nx * ny)
            else:
                xs = slice(max(0, -rx), nx - max(0, rx))
                ys = slice(max(0, -ry), ny - max(0, ry))
                xs2 = slice(max(0, rx), nx - max(0, -rx))
                ys2 = slice(max(0, ry), ny - max(0, -ry))
                prod = a[:, xs, ys] * b[:, xs2, ys2]
                out[:, i, j] = prod.sum(axis=(1, 2)) / prod[0].size
    return out


# ---------------------------------------------------------------------------------------
# physics
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_s2_at_zero_is_the_volume_fraction(periodic, dtype):
    m = _random_phase((5, 40, 33), frac=0.3).astype(dtype)
    s = two_point_stats(m, m, periodic_boundary=periodic, cutoff=6)
    np.testing.assert_allclose(s[:, 6, 6], m.mean(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize("periodic", [True, False])
def test_matches_brute_force_shifts(periodic):
    a = _random_phase((2, 13, 10), seed=1)
    b = _random_phase((2, 13, 10), frac=0.6, seed=2)
    np.testing.assert_allclose(two_point_stats(a, b, periodic_boundary=periodic, cutoff=4),
                               _brute_force(a, b, 4, periodic), atol=1e-12)


def test_periodic_mean_over_all_vectors_is_phi_squared():
    # odd size + full window = every vector once: mean_r S2(r) = phi^2 exactly
    m = _random_phase((3, 21, 21), frac=0.4, seed=3)
    s = two_point_stats(m, m)
    assert s.shape == (3, 21, 21)
    np.testing.assert_allclose(s.mean(axis=(1, 2)), m.mean(axis=(1, 2)) ** 2, rtol=1e-12)


@pytest.mark.parametrize("block", [1, 3, 4])
def test_checkerboard_closed_form(block):
    # m = (1 + sx sy) / 2 with square waves s of period 2a; their autocorrelation is the
    # triangle wave C(r) = 1 - 2 d / a, d = distance of r to the nearest multiple of 2a,
    # so S2(r) = (1 + C(rx) C(ry)) / 4.
    n = 16 * block  # a whole number of periods: the periodic boundary is seamless
    x = np.arange(n)
    sq = np.where((x // block) % 2 == 0, 1.0, -1.0)
    m = ((1 + sq[:, None] * sq[None, :]) / 2)[None]
    cutoff = 2 * block + 1
    s = two_point_stats(m, m, cutoff=cutoff)[0]
    r = np.arange(-cutoff, cutoff + 1)
    d = np.abs(r) % (2 * block)
    c = 1 - 2 * np.minimum(d, 2 * block - d) / block
    np.testing.assert_allclose(s, (1 + c[:, None] * c[None, :]) / 4, atol=1e-12)
    assert s[cutoff, cutoff] == pytest.approx(0.5)


@pytest.mark.parametrize("periodic", [True, False])
def test_single_disc_against_lens_area(periodic):
    # sum_s m[s] m[s+r] of a disc of radius R is the overlap (lens) area of two discs at
    # distance d: 2 R^2 acos(d / 2R) - (d / 2) sqrt(4 R^2 - d^2)  (Torquato 2002, ch. 2)
    n, radius = 96, 20
    y, x = np.mgrid[:n, :n]
    m = (((y - n // 2) ** 2 + (x - n // 2) ** 2) <= radius**2).astype(float)[None]
    cutoff = 2 * radius
    s = two_point_stats(m, m, periodic_boundary=periodic, cutoff=cutoff)[0]
    r = np.arange(-cutoff, cutoff + 1)
    pairs = n * n if periodic else (n - np.abs(r))[:, None] * (n - np.abs(r))[None, :]
    counts = s * pairs
    d = np.hypot(r[:, None], r[None, :])
    q = np.minimum(d / (2 * radius), 1.0)
    lens = 2 * radius**2 * np.arccos(q) - d / 2 * np.sqrt(np.maximum(4 * radius**2 - d**2, 0))
    area = np.pi * radius**2
    assert np.abs(counts - lens).max() < 0.01 * area  # pixelated disc vs the continuum
    assert counts[cutoff, cutoff] == pytest.approx(m.sum())
    assert np.all(np.abs(counts[d > 2 * radius + 1.5]) < 1e-9)


def test_periodic_vs_nonperiodic_half_plane_closed_forms():
    # phase = left half (x < N/2). Periodic: S2(rx, ry) = (N/2 - |rx|) / N.
    # Non-periodic: pairs inside the image only: (N/2 - |rx|) / (N - |rx|).
    n, cutoff = 32, 10
    m = np.zeros((1, n, n))
    m[0, : n // 2, :] = 1
    r = np.abs(np.arange(-cutoff, cutoff + 1))[:, None] * np.ones((1, 2 * cutoff + 1))
    per = two_point_stats(m, m, cutoff=cutoff)[0]
    non = two_point_stats(m, m, periodic_boundary=False, cutoff=cutoff)[0]
    np.testing.assert_allclose(per, (n / 2 - r) / n, atol=1e-12)
    np.testing.assert_allclose(non, (n / 2 - r) / (n - r), atol=1e-12)
    assert not np.allclose(per, non)


def test_periodic_equals_nonperiodic_counts_away_from_the_border():
    n, cutoff = 40, 6
    m = np.zeros((1, n, n))
    m[0, cutoff:-cutoff, cutoff:-cutoff] = _random_phase((n - 2 * cutoff, n - 2 * cutoff), seed=4)
    r = np.abs(np.arange(-cutoff, cutoff + 1))
    pairs = (n - r)[:, None] * (n - r)[None, :]
    per = two_point_stats(m, m, cutoff=cutoff)[0] * n * n
    non = two_point_stats(m, m, periodic_boundary=False, cutoff=cutoff)[0] * pairs
    np.testing.assert_allclose(per, non, atol=1e-9)


def test_cross_correlations_sum_to_the_volume_fraction():
    # periodic: sum over l of f[r | l, l'] = phi_{l'} for every r
    labels = np.random.default_rng(5).integers(0, 3, size=(2, 24, 24))
    s = correlations_multiple(labels, [(0, 2), (1, 2), (2, 2)], cutoff=5, dtype=np.float64)
    phi2 = (labels == 2).mean(axis=(1, 2))
    np.testing.assert_allclose(s.sum(axis=-1), np.broadcast_to(phi2[:, None, None], s.shape[:3]),
                               atol=1e-12)


def test_cutoff_none_and_clipping_follow_pymks():
    m = _random_phase((1, 16, 12))
    assert two_point_stats(m, m).shape == (1, 11, 11)  # (min(16, 12) - 1) // 2 = 5
    assert two_point_stats(m, m, cutoff=50).shape == (1, 11, 11)
    assert two_point_stats(m, m, cutoff=0).shape == (1, 1, 1)
    with pytest.raises(BadInputError, match="cutoff"):
        two_point_stats(m, m, cutoff=-1)


def test_mask_range_and_shape_errors():
    m = _random_phase((1, 8, 8))
    with pytest.raises(BadInputError, match=r"mask must be in range \[0, 1\]"):
        two_point_stats(m, m, mask=np.full((8, 8), 2.0))
    with pytest.raises(BadInputError, match="same shape"):
        two_point_stats(m, m[:, :7])
    with pytest.raises(BadInputError, match="n_samples"):
        two_point_stats(np.ones(5), np.ones(5))


def test_full_mask_equals_no_mask():
    m = _random_phase((2, 15, 15))
    for periodic in (True, False):
        np.testing.assert_allclose(
            two_point_stats(m, m, periodic_boundary=periodic, cutoff=4, mask=np.ones((15, 15))),
            two_point_stats(m, m, periodic_boundary=periodic, cutoff=4), atol=1e-12)


def test_three_d_volumes():
    v = _random_phase((1, 9, 10, 11), seed=6)
    s = two_point_stats(v, v, periodic_boundary=False, cutoff=3)
    assert s.shape == (1, 7, 7, 7)
    assert s[0, 3, 3, 3] == pytest.approx(v.mean())
    ref = two_point_stats_reference(v, v, periodic_boundary=False, cutoff=3)
    np.testing.assert_allclose(s, ref)


def test_large_batch_is_chunked_consistently(monkeypatch):
    import matrep.plugins.twopoint.stats as tp

    m = _random_phase((7, 20, 20), seed=7)
    whole = two_point_stats(m, m, cutoff=5, periodic_boundary=False)
    monkeypatch.setattr(tp, "_CHUNK_ELEMENTS", 500)  # forces one sample per FFT call
    np.testing.assert_allclose(two_point_stats(m, m, cutoff=5, periodic_boundary=False), whole)
    np.testing.assert_allclose(correlations_multiple(m.astype(int), [(1, 1)], cutoff=5,
                                                     periodic_boundary=False)[..., 0], whole,
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# radial average
# ---------------------------------------------------------------------------------------
def test_radial_average_rings():
    cutoff = 3
    r = np.arange(-cutoff, cutoff + 1)
    dist = np.hypot(r[:, None], r[None, :])
    s = np.rint(dist)[None]  # a stat equal to its own ring index
    out = radial_average(s)
    assert out.shape == (1, cutoff + 1)
    np.testing.assert_allclose(out[0], np.arange(cutoff + 1))
    stacked = radial_average(np.stack([s, 2 * s], axis=-1))
    assert stacked.shape == (1, cutoff + 1, 2)
    np.testing.assert_allclose(stacked[0, :, 1], 2 * np.arange(cutoff + 1))
    with pytest.raises(BadInputError, match="centred shape"):
        radial_average(np.zeros((1, 4, 4)))


def test_radial_average_of_disc_is_decreasing():
    n, radius = 64, 10
    y, x = np.mgrid[:n, :n]
    m = (((y - 32) ** 2 + (x - 32) ** 2) <= radius**2).astype(float)[None]
    prof = radial_average(two_point_stats(m, m, cutoff=25))[0]
    assert np.all(np.diff(prof[: 2 * radius]) < 0)
    assert prof[0] == pytest.approx(m.mean())
    assert np.all(prof[2 * radius + 2:] == pytest.approx(0, abs=1e-12))


# ---------------------------------------------------------------------------------------
# segmentation
# ---------------------------------------------------------------------------------------
def test_segment_integer_and_boolean_inputs_are_used_as_they_are():
    lab = np.array([[[0, 2], [1, 2]]])
    assert segment(lab, threshold=0.5) is lab
    np.testing.assert_array_equal(segment(np.array([[True, False]])), [[1, 0]])


def test_segment_otsu_on_bimodal_grey():
    rng = np.random.default_rng(8)
    truth = rng.random((2, 32, 32)) < 0.3
    grey = np.where(truth, 0.8, 0.2) + rng.normal(0, 0.1, truth.shape)
    assert (segment(grey) == truth).mean() > 0.99  # classes overlap at 3 sigma
    t = otsu_thresholds(grey)
    assert t.shape == (1,) and 0.4 < t[0] < 0.6


def test_segment_multi_otsu_three_phases():
    rng = np.random.default_rng(9)
    truth = rng.integers(0, 3, size=(1, 40, 40))
    grey = np.choose(truth, [0.1, 0.5, 0.9]) + rng.normal(0, 0.07, truth.shape)
    assert (segment(grey, n_phases=3) == truth).mean() > 0.99
    t = otsu_thresholds(grey, n_phases=3)
    assert t.shape == (2,) and 0.2 < t[0] < 0.4 and 0.6 < t[1] < 0.8


def test_segment_given_thresholds_and_ties_go_low():
    x = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    np.testing.assert_array_equal(segment(x, threshold=0.5), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(segment(x, threshold=[0.6, 0.2], n_phases=3), [0, 1, 1, 2, 2])


def test_segment_none_reads_labels_stored_as_grey():
    # a 3-phase label map written as an 8-bit PNG with scale 127 reads as 0, 127/255, 254/255
    lab = np.array([[0, 1, 2, 1]])
    grey = (lab * 127).astype(np.uint8) / 255.0
    np.testing.assert_array_equal(segment(grey, threshold=None, n_phases=3), lab)
    # "otsu" recognises a map with at most n_phases levels and cuts between them
    np.testing.assert_array_equal(segment(grey, n_phases=3), lab)


@pytest.mark.parametrize("kw, match", [
    (dict(threshold="triangle"), "threshold must be"),
    (dict(threshold=[0.2, 0.5]), "one finite value per phase boundary"),
    (dict(threshold=float("nan")), "one finite value"),
    (dict(n_phases=1), "n_phases must be an integer >= 2"),
])
def test_segment_bad_arguments(kw, match):
    with pytest.raises(BadInputError, match=match):
        segment(np.linspace(0, 1, 10), **kw)


# ---------------------------------------------------------------------------------------
# the encoder
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("params", [
    {},
    dict(n_components=3, random_state=0),
    dict(radial=True, periodic_boundary=False, cutoff=10),
    dict(n_phases=3, correlations=[(0, 0), (1, 2)], n_components=4),
    dict(threshold=0.5, phase=0, cutoff=None),
])
def test_passes_the_encoder_contract(params):
    check_encoder(TwoPointEncoder(**params))


def test_registered_under_its_entry_point():
    import matrep

    enc = matrep.get_encoder("twopoint", cutoff=8)
    assert isinstance(enc, TwoPointEncoder) and enc.cutoff == 8


def test_params_are_stored_and_cloned():
    enc = TwoPointEncoder(threshold=0.4, n_phases=3, phase=2, cutoff=5, radial=True,
                          n_components=2, random_state=1)
    p = enc.get_params()
    assert p["threshold"] == 0.4 and p["phase"] == 2 and p["n_components"] == 2
    assert clone(enc).get_params() == p
    with pytest.raises(NotFittedError):
        enc.transform(make_texture_patches(2, 16))


def test_raw_features_are_the_functional_statistics_flattened():
    patches = make_texture_patches(4, 40)
    enc = TwoPointEncoder(cutoff=7, periodic_boundary=False).fit(patches)
    feats = enc.transform(patches)
    labels = segment(patches, threshold=enc.thresholds_.tolist())
    expected = two_point_stats((labels == 1).astype(float), (labels == 1).astype(float),
                               periodic_boundary=False, cutoff=7).reshape(4, -1)
    assert feats.dtype == np.float32 and feats.shape == (4, 15 * 15)
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    names = enc.get_feature_names_out()
    assert len(names) == feats.shape[1] and names[0] == "S2[1,1](-7,-7)"
    centre = list(names).index("S2[1,1](+0,+0)")
    np.testing.assert_allclose(feats[:, centre], (labels == 1).mean(axis=(1, 2)), rtol=1e-5)


def test_multiple_correlations_layout_is_pymks_flatten():
    patches = make_texture_patches(3, 32)
    enc = TwoPointEncoder(n_phases=3, correlations=[(0, 0), (0, 2)], cutoff=4).fit(patches)
    feats = enc.transform(patches)
    labels = segment(patches, threshold=enc.thresholds_.tolist(), n_phases=3)
    stats = correlations_multiple(labels, [(0, 0), (0, 2)], cutoff=4)
    np.testing.assert_allclose(feats, stats.reshape(3, -1), rtol=1e-6)
    assert enc.get_feature_names_out()[1] == "S2[0,2](-4,-4)"


def test_thresholds_are_learned_in_fit_and_reused():
    patches = make_texture_patches(6, 32)
    enc = TwoPointEncoder(cutoff=4).fit(patches)
    np.testing.assert_allclose(enc.thresholds_, otsu_thresholds(patches))
    # a patch of only one phase keeps the fitted grey level: S2 = 0 (all dark) or 1 (all bright)
    dark, bright = np.full((1, 32, 32), 0.05, np.float32), np.full((1, 32, 32), 0.95, np.float32)
    assert np.all(enc.transform(dark) == 0) and np.all(enc.transform(bright) == 1)


def test_pca_matches_sklearn_and_round_trips(tmp_path):
    from sklearn.decomposition import PCA

    patches = make_texture_patches(8, 32, seed=3)
    enc = TwoPointEncoder(cutoff=6, radial=True, n_components=3, random_state=0).fit(patches)
    raw = TwoPointEncoder(cutoff=6, radial=True).fit(patches).transform(patches)
    ref = PCA(n_components=3).fit(raw.astype(np.float64)).transform(raw)
    z = enc.transform(patches)
    assert z.shape == (8, 3)
    np.testing.assert_allclose(np.abs(z), np.abs(ref), rtol=1e-3, atol=1e-5)  # sign is free
    assert list(enc.get_feature_names_out()) == ["pc0", "pc1", "pc2"]
    loaded = TwoPointEncoder.load(enc.save(tmp_path / "tp"))
    np.testing.assert_array_equal(loaded.transform(patches), z)
    np.testing.assert_array_equal(loaded.explained_variance_ratio_, enc.explained_variance_ratio_)
    assert loaded.cutoff_ == 6 and loaded.n_stats_ == 7


def test_refit_without_pca_drops_the_old_pca():
    patches = make_texture_patches(6, 32)
    enc = TwoPointEncoder(cutoff=3, n_components=2).fit(patches)
    enc.set_params(n_components=None).fit(patches)
    assert enc.transform(patches).shape == (6, 49)


@pytest.mark.parametrize("params, match", [
    (dict(n_components=50, cutoff=3), "n_components=50 needs at least"),
    (dict(n_components=0), "n_components must be None or an integer"),
    (dict(phase=2), "phase must name phases in 0..1"),
    (dict(correlations=[(0, 3)], n_phases=3), "correlations must name phases in 0..2"),
    (dict(correlations=[]), "correlations must name"),
    (dict(threshold="yen"), "threshold must be"),
    (dict(periodic_boundary="no"), "periodic_boundary must be True or False"),
    (dict(cutoff=2.5), "cutoff must be None or an integer"),
])
def test_bad_parameters_raise_in_fit(params, match):
    with pytest.raises(BadInputError, match=match):
        TwoPointEncoder(**params).fit(make_texture_patches(4, 24))


def test_patches_smaller_than_the_fitted_window_are_refused():
    enc = TwoPointEncoder(cutoff=10).fit(make_texture_patches(3, 32))
    with pytest.raises(BadInputError, match="too small for the fitted cutoff 10"):
        enc.transform(make_texture_patches(1, 16))
    # larger patches are fine: the window stays 21 x 21
    assert enc.transform(make_texture_patches(1, 48)).shape == (1, 441)


# ---------------------------------------------------------------------------------------
# real micrographs
# ---------------------------------------------------------------------------------------
needs_li2018 = pytest.mark.skipif(
    not LI2018.is_dir(), reason=f"real data folder {LI2018} is absent (see data/README.md)")
needs_castiron = pytest.mark.skipif(
    not CASTIRON.is_dir(), reason=f"real data folder {CASTIRON} is absent (see data/README.md)")


@needs_li2018
@pytest.mark.parametrize("material, n_phases", [("pmma", 2), ("alloy", 2), ("composite", 3)])
def test_li2018_png_encoded_equals_npy_labels(material, n_phases):
    from matrep.io import extract_patches, read_micrograph

    labels = np.load(LI2018 / "npy" / f"{material}_resized.npy")
    grey = read_micrograph(LI2018 / "png" / f"{material}_resized.png")
    patches, coords = extract_patches(grey, 64, 64)
    lab_patches = np.stack([labels[y:y + 64, x:x + 64] for y, x in coords])
    pairs = [(p, p) for p in range(n_phases)]
    for threshold in ("otsu", None):
        enc = TwoPointEncoder(threshold=threshold, n_phases=n_phases, correlations=pairs,
                              cutoff=16).fit(patches)
        feats = enc.transform(patches).reshape(len(patches), 33, 33, n_phases)
        expected = correlations_multiple(lab_patches, pairs, cutoff=16)
        np.testing.assert_allclose(feats, expected, atol=1e-6)
    # S2(0) of each phase is its volume fraction, and the fractions sum to one
    np.testing.assert_allclose(feats[:, 16, 16, :].sum(axis=1), 1.0, rtol=1e-6)


@needs_li2018
def test_li2018_classes_differ_in_two_point_statistics():
    names = ["alloy", "carbonate", "copolymer", "pmma", "sandstone"]
    profiles = []
    for nm in names:
        lab = np.load(LI2018 / "npy" / f"{nm}_resized.npy")[None]
        profiles.append(radial_average(two_point_stats(lab == 1, lab == 1, cutoff=20))[0])
    profiles = np.array(profiles)
    d = np.abs(profiles[:, None] - profiles[None]).max(axis=-1)
    assert d[~np.eye(len(names), dtype=bool)].min() > 0.01


@needs_castiron
def test_castiron_graphite_statistics():
    from matrep.io import extract_patches, read_micrograph

    img = read_micrograph(CASTIRON / "images" / "sample1(min_grainsize=0.007).jpg")
    patches, _ = extract_patches(img, 256, 256)
    enc = TwoPointEncoder(phase=0, cutoff=64, radial=True).fit(patches)  # phase 0 = dark graphite
    prof = enc.transform(patches)
    phi = (patches <= enc.thresholds_[0]).mean(axis=(1, 2))
    np.testing.assert_allclose(prof[:, 0], phi, atol=1e-6)
    assert 0.02 < phi.mean() < 0.3  # graphite nodules are a minority phase
    mean_prof = prof.mean(axis=0)
    assert np.all(np.diff(mean_prof[:15]) < 0)  # correlation decays over a nodule size
    # at distances beyond a nodule diameter the phases are uncorrelated: S2 -> phi^2
    assert mean_prof[40:].mean() == pytest.approx((phi**2).mean(), rel=0.3)


def test_docstring_examples():
    import matrep.plugins.twopoint as tp
    from matrep.testing import package_doctests

    attempted, failed = package_doctests(tp)
    assert attempted >= 8 and failed == 0
