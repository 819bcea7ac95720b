"""Physical scale: pixel sizes, their sources, resampling (matrep.scale) and file formats.

The physics test renders one synthetic cast iron at 1 um/px and the same microstructure at
0.5 um/px (``generate_micrograph(..., oversample=2)``); after resampling both to 1 um/px
they must give the same two-point statistics and mask descriptors, and without resampling
they must not.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from matrep.cli import main
from matrep.datasets.castiron import Factors, generate_micrograph
from matrep.datasets.descriptors import measure_mask
from matrep.errors import BadInputError
from matrep.formats import read_pixel_size
from matrep.io import list_images, load_patches, read_micrograph
from matrep.plugins.twopoint import otsu_thresholds, two_point_stats
from matrep.scale import (ScaleOptions, auto_target, plan_scale, resample, resolve_pixel_sizes,
                          scale_bar_pixel_size)

tifffile = pytest.importorskip("tifffile")

SIZE = 384  # um: the field of view of both renderings (384 px at 1 um/px, 768 at 0.5)
# nodular graphite: every descriptor is a smooth function of the outlines (nodularity counts
# particles on either side of the ISO roundness cut 0.625; for vermicular graphite, where many
# particles sit near that cut, one pixel of edge jitter flips a particle and, with ~40-80
# particles in the field, moves nodularity by 2-7 %)
FACTORS = Factors(cooling_rate_k_s=4.0, mg_wt_pct=0.05)


def _png(path, arr):
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def two_scales(tmp_path_factory):
    """One microstructure at 1 and 0.5 um/px, as PNGs with a pixel_size_um labels column."""
    d = tmp_path_factory.mktemp("two_scales")
    (d / "images").mkdir()
    coarse, coarse_mask = generate_micrograph(FACTORS, size=SIZE, seed=3)
    fine, fine_mask = generate_micrograph(FACTORS, size=SIZE, seed=3, oversample=2)
    assert fine.shape == (2 * SIZE, 2 * SIZE)
    _png(d / "images" / "at_1um.png", coarse)
    _png(d / "images" / "at_0.5um.png", fine)
    (d / "labels.csv").write_text("file,pixel_size_um\nimages/at_1um.png,1.0\n"
                                  "images/at_0.5um.png,0.5\n")
    return d, coarse_mask, fine_mask


def _segment(img):
    return img < otsu_thresholds(img)[0]  # graphite is the dark phase


def _s2(mask):
    m = mask[None].astype(np.float64)
    return two_point_stats(m, m, periodic_boundary=False, cutoff=30)[0]


def _descriptors(mask):
    d = measure_mask(mask, pixel_size_um=1.0, periodic=False)
    return {k: d[k] for k in ("graphite_fraction", "particle_density", "mean_eq_diameter",
                              "nodularity")}


# ---------------------------------------------------------------------------------------
# the physics test
# ---------------------------------------------------------------------------------------
def test_generator_oversample_keeps_the_geometry(two_scales):
    """oversample=2 draws the same particles: the fine mask, averaged 2x2, is the coarse one."""
    _, coarse_mask, fine_mask = two_scales
    block = fine_mask.reshape(SIZE, 2, SIZE, 2).mean(axis=(1, 3))
    agree = np.mean((block > 0.5) == coarse_mask)
    assert agree > 0.99  # only edge pixels differ
    assert abs(fine_mask.mean() - coarse_mask.mean()) < 0.005


def test_scale_1_gives_the_same_two_point_statistics_and_descriptors(two_scales):
    """After resampling to 1 um/px both renderings give the same S2 and descriptors.

    Tolerance of the two-point statistics: 5 % of the volume fraction phi = S2(0), i.e.
    max_r |S2_a(r) - S2_b(r)| <= 0.05 phi. Two segmentations that differ in a fraction eps of
    pixels have |S2_a(r) - S2_b(r)| <= 2 eps for every r; the renderings share the geometry,
    so they differ only in edge pixels (the optical rendering, noise and roughness
    interpolation are drawn per grid), and eps measured here is about 0.3 %. Ignoring the
    scale instead (the same pixels read as if both were 1 um/px) moves S2 by about 30 % of
    phi, which the test also checks, so the tolerance separates the two cases.
    """
    d, _, _ = two_scales
    ps = load_patches(d / "images", patch=SIZE, stride=SIZE,
                      scale=ScaleOptions(scale=1.0, labels=d / "labels.csv"))
    by_name = {s.split("/")[-1]: i for i, s in enumerate(ps.sources)}
    assert len(ps) == 2  # one 384 x 384 patch each: both images now cover 384 um at 1 um/px
    assert ps.scale.factors[str(d / "images" / "at_0.5um.png")] == 0.5
    a = _segment(ps.patches[by_name["at_1um.png"]])
    b = _segment(ps.patches[by_name["at_0.5um.png"]])
    eps = np.mean(a != b)
    assert eps < 0.01
    s2a, s2b = _s2(a), _s2(b)
    phi = s2a.max()
    assert np.abs(s2a - s2b).max() <= 0.05 * phi

    da, db = _descriptors(a), _descriptors(b)
    for k in da:
        assert db[k] == pytest.approx(da[k], rel=0.05), k

    # without --scale the fine image's pixels are read as if they were 1 um: it fails
    raw = load_patches(d / "images", patch=SIZE, stride=SIZE)
    fine_raw = raw.patches[[i for i, s in enumerate(raw.sources) if "0.5um" in s][0]]
    assert np.abs(s2a - _s2(_segment(fine_raw))).max() > 0.05 * phi


def test_cli_scale_1_end_to_end(two_scales, tmp_path):
    """`matrep encode --scale 1`: same twopoint features from both, pixel sizes in the store."""
    from matrep.store import FeatureStore, load_features

    d, _, _ = two_scales
    out = tmp_path / "f.h5"
    r = CliRunner().invoke(main, ["encode", "--method", "twopoint", "--images", str(d / "images"),
                                  "--labels", str(d / "labels.csv"), "--patch", "128",
                                  "--stride", "128", "--scale", "1", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    X, table = load_features(out, "twopoint")
    assert len(X) == 2 * 9  # 3 x 3 patches of 128 px from each 384 x 384 image
    fine = table["source"].str.contains("0.5um").to_numpy()
    assert set(table["pixel_size_um"][fine]) == {0.5}
    assert set(table["pixel_size_um"][~fine]) == {1.0}
    assert set(table["pixel_size_source"]) == {"labels:pixel_size_um"}
    rec = FeatureStore(out).read_patches()
    assert rec["scale"]["target_um_per_px"] == 1.0
    assert set(rec["resample_factor"].tolist()) == {0.5, 1.0}
    # features are S2 of the matrix phase on each patch: compare the per-image means
    diff = np.abs(X[fine].mean(0) - X[~fine].mean(0)).max()
    assert diff <= 0.05 * X[~fine].mean(0).max()


# ---------------------------------------------------------------------------------------
# resampling rules
# ---------------------------------------------------------------------------------------
def test_downsampling_is_anti_aliased():
    """Stripes finer than the new pixel average out instead of folding into false texture."""
    x = np.arange(400)
    stripes = np.tile((0.5 + 0.5 * np.cos(2 * np.pi * x / 2.5)).astype(np.float32), (400, 1))
    out = resample(stripes, 0.25)
    assert out.shape == (100, 100)
    assert out.std() < 0.02  # uniform grey, the stripes' mean
    assert out.mean() == pytest.approx(stripes.mean(), abs=0.01)
    from skimage.transform import rescale

    aliased = rescale(stripes, 0.25, order=1, anti_aliasing=False)
    assert aliased.std() > 0.1  # what the low-pass prevents: a false coarse pattern
    assert resample(stripes, 1.0) is stripes


def _grey_pngs(tmp_path, sizes):
    rng = np.random.default_rng(0)
    lines = ["file,pixel_size_um"]
    for name, p in sizes.items():
        _png(tmp_path / f"{name}.png", (rng.random((200, 200)) * 255).astype(np.uint8))
        lines.append(f"{name}.png,{p}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "labels.csv"


def test_upsampling_beyond_2x_is_refused_with_a_warning(tmp_path):
    labels = _grey_pngs(tmp_path, {"fine": 0.5, "ok": 1.9, "coarse": 2.5})
    msgs = []
    ps = load_patches(sorted(tmp_path.glob("*.png")), patch=64, stride=64,
                      scale=ScaleOptions(scale=1.0, labels=labels, warn=msgs.append))
    assert sorted({s.split("/")[-1] for s in ps.sources}) == ["fine.png", "ok.png"]
    assert len(msgs) == 1 and "coarse.png" in msgs[0] and "2.5 um/px" in msgs[0] \
        and "2.5x upsampling" in msgs[0]
    assert [r for _, r in ps.scale.dropped] == ["needs 2.5x upsampling (pixel size 2.5 um/px)"]
    fine = [s for s in ps.scale.factors if s.endswith("fine.png")][0]
    assert ps.scale.factors[fine] == 0.5  # 200 px -> 100 px: one 64-px patch
    assert (ps.sources == fine).sum() == 1


def test_auto_picks_the_coarsest_pixel_size_of_the_finest_90_percent(tmp_path):
    assert auto_target([0.1] * 9 + [10.0]) == 0.1
    assert auto_target([0.1, 0.2, 0.3, 0.4], share=0.5) == 0.2
    labels = _grey_pngs(tmp_path, {"a": 0.5, "b": 0.5, "c": 0.6})
    ps = load_patches(sorted(tmp_path.glob("*.png")), patch=64, stride=64,
                      scale=ScaleOptions(scale="auto", labels=labels))
    assert ps.scale.target_um_per_px == 0.6 and ps.scale.auto
    assert ps.settings()["scale"]["um_per_px"] == 0.6  # part of the store's digest


def test_min_max_pixel_size_select(tmp_path):
    labels = _grey_pngs(tmp_path, {"a": 0.2, "b": 0.5, "c": 1.0})
    plan = plan_scale(sorted(tmp_path.glob("*.png")),
                      ScaleOptions(labels=labels, min_pixel_size=0.3, max_pixel_size=0.9))
    assert [f.split("/")[-1] for f in plan.factors] == ["b.png"]
    assert plan.factors[str(tmp_path / "b.png")] == 1.0  # no --scale: no resampling
    assert len(plan.dropped) == 2


# ---------------------------------------------------------------------------------------
# bad input: one line naming the file
# ---------------------------------------------------------------------------------------
def test_missing_pixel_size_with_scale_names_the_file(tmp_path):
    _png(tmp_path / "x.png", np.zeros((200, 200), np.uint8))
    with pytest.raises(BadInputError, match=r"x\.png: no pixel size"):
        load_patches(tmp_path, patch=64, scale=ScaleOptions(scale=1.0))
    r = CliRunner().invoke(main, ["encode", "--method", "twopoint", "--images", str(tmp_path),
                                  "--scale", "1", "--out", str(tmp_path / "f.h5"), "-q"])
    assert r.exit_code == 1
    err = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(err) == 1 and "x.png: no pixel size" in err[0] and "--pixel-size" in err[0]
    # without --scale the pixel size is recorded as unknown
    ps = load_patches(tmp_path, patch=64, stride=64, scale=ScaleOptions())
    assert ps.scale.pixel_size(tmp_path / "x.png").source == "unknown"


@pytest.mark.parametrize("bar,bar_px,problem", [
    ("0", "100", "micron_bar must be a positive number, got 0"),
    ("5", "-3", "micron_bar_px must be a positive number, got -3"),
    ("five", "100", "micron_bar must be a positive number, got 'five'"),
])
def test_bad_scale_bar_values_name_the_file(tmp_path, bar, bar_px, problem):
    _png(tmp_path / "m.png", np.zeros((200, 200), np.uint8))
    (tmp_path / "labels.csv").write_text(f"file,micron_bar,micron_bar_px\nm.png,{bar},{bar_px}\n")
    with pytest.raises(BadInputError) as exc:
        resolve_pixel_sizes([tmp_path / "m.png"], labels=tmp_path / "labels.csv")
    assert str(exc.value).startswith(str(tmp_path / "m.png")) and problem in str(exc.value)


def test_scale_bar_units():
    assert scale_bar_pixel_size(10, 103) == pytest.approx(10 / 103)
    assert scale_bar_pixel_size(500, 50, "nm") == pytest.approx(0.01)
    with pytest.raises(BadInputError, match="unknown scale bar unit"):
        scale_bar_pixel_size(1, 10, "furlong")


def test_uhcs_style_labels_resolve_by_scale_bar(tmp_path):
    _png(tmp_path / "m1.png", np.zeros((200, 200), np.uint8))
    _png(tmp_path / "m2.png", np.zeros((200, 200), np.uint8))
    (tmp_path / "meta.csv").write_text("file,micron_bar,micron_bar_px,micron_bar_units\n"
                                       "m1.png,10,103,um\nm2.png,500,50,nm\n")
    got = resolve_pixel_sizes([tmp_path / "m1.png", tmp_path / "m2.png"],
                              labels=tmp_path / "meta.csv")
    assert got[str(tmp_path / "m1.png")].um_per_px == pytest.approx(10 / 103)
    assert got[str(tmp_path / "m2.png")].um_per_px == pytest.approx(0.01)
    assert got[str(tmp_path / "m1.png")].source == "labels:micron_bar/micron_bar_px"


def _fei_tiff(path, pixel_width_m, img=None):
    img = np.zeros((200, 200), np.uint8) if img is None else img
    fei = (f"[User]\nDate=01/01/2024\n[Scan]\nPixelWidth={pixel_width_m}\n"
           f"PixelHeight={pixel_width_m}\n")
    tifffile.imwrite(path, img, extratags=[(34682, "s", 0, fei, True)], resolution=(72, 72))
    return path


def test_label_contradicting_metadata_wins_with_a_warning(tmp_path):
    _fei_tiff(tmp_path / "sem.tif", 1.5e-8)  # 0.015 um/px in the file
    (tmp_path / "labels.csv").write_text("file,pixel_size_um\nsem.tif,0.02\n")
    msgs = []
    got = resolve_pixel_sizes([tmp_path / "sem.tif"], labels=tmp_path / "labels.csv",
                              warn=msgs.append)
    assert got[str(tmp_path / "sem.tif")].um_per_px == 0.02
    assert got[str(tmp_path / "sem.tif")].source == "labels:pixel_size_um"
    assert len(msgs) == 1 and "sem.tif" in msgs[0] and "0.02" in msgs[0] and "0.015" in msgs[0]
    # agreeing values: no warning; no label: the file's value
    (tmp_path / "labels.csv").write_text("file,pixel_size_um\nsem.tif,0.015\n")
    msgs.clear()
    resolve_pixel_sizes([tmp_path / "sem.tif"], labels=tmp_path / "labels.csv", warn=msgs.append)
    assert msgs == []
    got = resolve_pixel_sizes([tmp_path / "sem.tif"])
    assert got[str(tmp_path / "sem.tif")].source == "file:tiff:FEI_HELIOS[Scan]PixelWidth"


# ---------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------
def test_fei_tiff_pixel_size(tmp_path):
    p = read_pixel_size(_fei_tiff(tmp_path / "fei.tif", 1.5e-8))
    assert p.um_per_px == pytest.approx(0.015) and p.where == "tiff:FEI_HELIOS[Scan]PixelWidth"


def test_zeiss_tiff_pixel_size(tmp_path):
    sem = "0\nAP_IMAGE_PIXEL_SIZE\nImage Pixel Size = 2.5 nm\nAP_WD\nWD = 5.0 mm\n"
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((64, 64), np.uint8),
                     extratags=[(34118, "s", 0, sem, True)])
    p = read_pixel_size(tmp_path / "z.tif")
    assert p.um_per_px == pytest.approx(0.0025) and "CZ_SEM" in p.where


def test_resolution_tags_and_print_dpi(tmp_path):
    img = np.zeros((64, 64), np.uint8)
    tifffile.imwrite(tmp_path / "cm.tif", img, resolution=(2000, 2000), resolutionunit="CENTIMETER")
    assert read_pixel_size(tmp_path / "cm.tif").um_per_px == pytest.approx(5.0)
    tifffile.imwrite(tmp_path / "dpi.tif", img, resolution=(300, 300), resolutionunit="INCH")
    assert read_pixel_size(tmp_path / "dpi.tif") is None  # a printing density, not a pixel size
    tifffile.imwrite(tmp_path / "ij.tif", img, imagej=True, resolution=(4, 4),
                     metadata={"unit": "um"})
    assert read_pixel_size(tmp_path / "ij.tif").um_per_px == pytest.approx(0.25)
    tifffile.imwrite(tmp_path / "plain.tif", img)
    assert read_pixel_size(tmp_path / "plain.tif") is None
    _png(tmp_path / "p.png", img)
    assert read_pixel_size(tmp_path / "p.png") is None


def test_emd_file_pixel_size_and_pixels(tmp_path):
    pytest.importorskip("rsciio")
    from rsciio.emd import file_writer

    img = (np.random.default_rng(0).random((150, 170)) * 255).astype(np.uint8)
    axes = [{"name": n, "size": s, "scale": 2.5, "offset": 0.0, "units": "nm",
             "navigate": False} for n, s in (("y", 150), ("x", 170))]
    file_writer(str(tmp_path / "tem.emd"), {"data": img, "axes": axes, "original_metadata": {},
                                            "metadata": {"General": {"title": "t"},
                                                         "Signal": {"signal_type": ""}}})
    p = read_pixel_size(tmp_path / "tem.emd")
    assert p.um_per_px == pytest.approx(0.0025) and p.where.startswith("emd:")
    assert list_images(tmp_path) == [tmp_path / "tem.emd"]
    arr = read_micrograph(tmp_path / "tem.emd")
    np.testing.assert_allclose(arr, img / 255.0, atol=1e-6)
    ps = load_patches(tmp_path, patch=64, stride=64, scale=ScaleOptions(scale=0.005))
    assert ps.scale.pixel_size(tmp_path / "tem.emd").source.startswith("file:emd:")
    assert ps.scale.factors[str(tmp_path / "tem.emd")] == pytest.approx(0.5)
    assert len(ps) == 1  # 150 x 170 px at 2.5 nm -> 75 x 85 at 5 nm: one 64-px patch


def test_unreadable_dm3_names_the_file(tmp_path):
    (tmp_path / "bad.dm3").write_bytes(b"not a dm3 file at all")
    with pytest.raises(BadInputError, match=r"bad\.dm3: "):
        read_micrograph(tmp_path / "bad.dm3")


# ---------------------------------------------------------------------------------------
# a model records its scale and applies it
# ---------------------------------------------------------------------------------------
def test_fit_records_scale_and_encode_applies_it(two_scales, tmp_path):
    d, _, _ = two_scales
    run = tmp_path / "run"
    common = ["--images", str(d / "images"), "--patch", "128", "--stride", "128", "-q"]
    r = CliRunner().invoke(main, ["fit", "--method", "twopoint", "--out", str(run),
                                  "--pixel-size-labels", str(d / "labels.csv"), "--scale", "2",
                                  "--param", "cutoff=8", *common])
    assert r.exit_code == 0, r.output
    rec = json.loads((run / "fit.json").read_text())
    assert rec["patches"]["scale_um_per_px"] == 2.0
    assert rec["patches"]["pixel_sizes"]["sources"] == {"labels:pixel_size_um": 2}
    r = CliRunner().invoke(
        main, ["encode", "--method", "twopoint", "--model", str(run), "--labels",
               str(d / "labels.csv"), "--out", str(tmp_path / "f.h5"), *common[:-1]])
    assert r.exit_code == 0, r.output
    assert "resampling to 2 um/px" in r.output
    from matrep.store import FeatureStore

    rec = FeatureStore(tmp_path / "f.h5").read_patches()
    assert rec["scale"]["target_um_per_px"] == 2.0
    assert len(rec["source"]) == 2  # 384 um at 2 um/px = 192 px: one 128-px patch per image


def test_a_model_trained_without_scale_warns_when_encoding_resampled_patches(two_scales,
                                                                             tmp_path):
    """A model fitted at native pixel sizes never silently encodes resampled patches."""
    from matrep.scale import model_trained_unscaled

    d, _, _ = two_scales
    run = tmp_path / "run"
    common = ["--images", str(d / "images"), "--patch", "128", "--stride", "128"]
    r = CliRunner().invoke(main, ["fit", "--method", "twopoint", "--out", str(run),
                                  "--param", "cutoff=8", *common, "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "fit.json").read_text())["patches"]["scale_um_per_px"] is None
    assert model_trained_unscaled(run)
    enc = ["encode", "--method", "twopoint", "--model", str(run), "--labels",
           str(d / "labels.csv"), *common, "-q"]
    r = CliRunner().invoke(main, [*enc, "--scale", "2", "--out", str(tmp_path / "a.h5")])
    assert r.exit_code == 0, r.output
    assert f"warning: {run}/fit.json: the model was trained without --scale" in r.output
    assert "resampled to 2 um/px" in r.output
    r = CliRunner().invoke(main, [*enc, "--out", str(tmp_path / "b.h5")])
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    # the library paths (evaluate, interpret) say it as a ScaleWarning, once: options built
    # by a command carry its warn callback and were warned about there
    from matrep.scale import ScaleOptions, ScaleWarning, unscaled_model_warnings
    from matrep.scale.resampling import warn_unscaled_models

    assert unscaled_model_warnings([run], None) == []
    assert "--scale auto" in unscaled_model_warnings([run], "auto")[0]
    with pytest.warns(ScaleWarning, match="trained without --scale"):
        warn_unscaled_models([run], ScaleOptions(scale=2.0))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_unscaled_models([run], ScaleOptions(scale=2.0, warn=lambda m: None))
        warn_unscaled_models([run], ScaleOptions())
    # a fit.json that does not say (written before scales were recorded) is not flagged
    rec = json.loads((run / "fit.json").read_text())
    del rec["patches"]["scale_um_per_px"]
    (run / "fit.json").write_text(json.dumps(rec))
    assert not model_trained_unscaled(run)


def test_store_without_scale_keeps_its_old_digest(tmp_path):
    """No --scale: the patch settings (and so stores' digests) are those of before."""
    _png(tmp_path / "x.png", np.zeros((100, 100), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ps = load_patches(tmp_path, patch=64, stride=64, scale=ScaleOptions())
    assert "scale" not in ps.settings()
    assert ps.settings() == load_patches(tmp_path, patch=64, stride=64).settings()


def test_lazy_patches_resample_like_load_patches(tmp_path):
    from matrep.patchsource import lazy_patches

    labels = _grey_pngs(tmp_path, {"a": 0.5, "b": 1.0, "c": 3.0})
    opts = ScaleOptions(scale=1.0, labels=labels, warn=lambda m: None)
    eager = load_patches(tmp_path, patch=48, stride=40, scale=opts)
    lazy = lazy_patches(tmp_path, patch=48, stride=40, scale=opts)
    assert lazy.sources.tolist() == eager.sources.tolist()
    np.testing.assert_array_equal(np.asarray(lazy.patches), eager.patches)
    assert lazy.settings() == eager.settings()
    assert lazy.subset(np.arange(3)).scale is lazy.scale


def test_unreadable_tiff_is_skipped_with_skip_bad(tmp_path):
    labels = _grey_pngs(tmp_path, {"a": 1.0})
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    ps = load_patches(tmp_path, patch=64, stride=64, skip_bad=True,
                      scale=ScaleOptions(labels=labels))
    assert [s.split("/")[-1] for s in ps.files] == ["a.png"]
    assert ps.skipped and ps.skipped[0][0].endswith("broken.tif")
