"""Synthetic cast-iron generator, mask descriptors, cache and CLI (small images only)."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matrep.datasets import (
    GENERATOR_VERSION,
    LABEL_COLUMNS,
    Factors,
    default_castiron,
    design,
    generate_micrograph,
    make_castiron,
    measure_mask,
    particle_table,
)
from matrep.datasets import castiron as ci
from matrep.errors import BadInputError

EXPECTED_COLUMNS = [
    "file", "mask_file", "micrograph", "seed",
    "cooling_rate_k_s", "mg_wt_pct", "target_nodularity", "target_eq_diameter_um",
    "target_graphite_fraction", "target_particle_density",
    "graphite_fraction", "particle_density", "mean_eq_diameter", "nodularity", "n_particles",
    "youngs_modulus_gpa", "poisson_ratio", "stress_concentration",
    "solver_residual", "solver_iterations", "pixel_size_um",
]


def read_labels(folder):
    with open(Path(folder) / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- generator

def test_deterministic_per_seed():
    f = Factors(2.0, 0.03)
    a_img, a_mask = generate_micrograph(f, size=128, seed=7)
    b_img, b_mask = generate_micrograph(f, size=128, seed=7)
    c_img, c_mask = generate_micrograph(f, size=128, seed=8)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_mask, c_mask)
    assert a_img.dtype == np.uint8 and a_mask.dtype == bool and a_img.shape == (128, 128)


def test_image_looks_like_a_micrograph():
    img, mask = generate_micrograph(Factors(1.0, 0.05), size=256, seed=1)
    img = img.astype(float)
    # dark graphite on a light matrix, grey levels of the real as-polished images
    assert img[mask].mean() < 90 and img[~mask].mean() > 150
    assert 0.05 < mask.mean() < 0.15
    # not a mask: the matrix has noise, grain boundaries and illumination variation
    assert img[~mask].std() > 2.0
    assert len(np.unique(img)) > 50


@pytest.mark.parametrize("mg, lo, hi", [(0.05, 0.75, 1.0), (0.03, 0.15, 0.7), (0.015, 0.0, 0.15)])
def test_measured_nodularity_follows_mg(mg, lo, hi):
    mask = generate_micrograph(Factors(2.0, mg), size=384, seed=0)[1]
    d = measure_mask(mask)
    assert lo <= d["nodularity"] <= hi, d


def test_large_particles_are_sparse():
    slow = measure_mask(generate_micrograph(Factors(0.5, 0.05), size=384, seed=0)[1])
    fast = measure_mask(generate_micrograph(Factors(4.0, 0.05), size=384, seed=0)[1])
    assert slow["mean_eq_diameter"] > 2 * fast["mean_eq_diameter"]
    assert slow["particle_density"] < fast["particle_density"] / 3


def test_design_grid():
    d = design(12)
    assert {(f.cooling_rate_k_s, f.mg_wt_pct) for f in d} == {
        (c, m) for c in ci.COOLING_RATES_K_S for m in ci.MG_LEVELS_WT_PCT}
    assert len(design(5)) == 5 and design(13)[12].cooling_rate_k_s == d[0].cooling_rate_k_s


# ----------------------------------------------------------------------------- descriptors

def test_descriptors_disc_line_and_periodic_wrap():
    m = np.zeros((64, 64), bool)
    yy, xx = np.mgrid[:64, :64]
    m[(yy - 32) ** 2 + (xx - 20) ** 2 < 64] = True          # disc, d ~ 16 px
    m[10:12, 30:62] = True                                   # thin line, 2 x 32 px
    t = particle_table(m)
    assert len(t["area"]) == 2
    rsf = sorted(t["roundness"])
    assert rsf[0] < 0.2 and rsf[1] > 0.8
    d = measure_mask(m, pixel_size_um=1.0, min_diameter_um=1.0)
    assert d["n_particles"] == 2
    assert d["nodularity"] == pytest.approx(t["area"][np.argmax(t["roundness"])] / t["area"].sum())
    # a disc cut by the image edge counts once when periodic, twice when not
    w = np.roll(m & (xx < 28), 44, axis=1)  # the disc, now wrapped across the left/right edges
    assert len(particle_table(w)["area"]) == 1
    assert len(particle_table(w, periodic=False)["area"]) == 2
    assert d["particle_density"] == pytest.approx(2 / (64 * 64 * 1e-6))


# ----------------------------------------------------------------------------- data set

def test_make_castiron_writes_complete_deterministic_set(tmp_path):
    a = make_castiron(tmp_path / "a", n_micrographs=3, size=96, seed=4, n_jobs=1)
    b = make_castiron(tmp_path / "b", n_micrographs=3, size=96, seed=4, n_jobs=1)
    rows = read_labels(a)
    assert list(rows[0].keys()) == EXPECTED_COLUMNS == list(LABEL_COLUMNS)
    assert len(rows) == 3
    assert (a / "labels.csv").read_text() == (b / "labels.csv").read_text()
    # the set declares its bookkeeping columns beside labels.csv (matrep.labels)
    from matrep.datasets import BOOKKEEPING_COLUMNS
    from matrep.labels import bookkeeping_columns

    assert bookkeeping_columns(a / "labels.csv") == list(BOOKKEEPING_COLUMNS)
    assert set(BOOKKEEPING_COLUMNS) <= set(LABEL_COLUMNS)
    for r in rows:
        img = Image.open(a / "images" / r["file"])
        assert img.mode == "L" and img.size == (96, 96)
        assert (a / "images" / r["file"]).read_bytes() == (b / "images" / r["file"]).read_bytes()
        mask = np.asarray(Image.open(a / "masks" / r["mask_file"]))
        assert set(np.unique(mask)) <= {0, 255}
        assert float(r["graphite_fraction"]) == pytest.approx((mask > 0).mean(), abs=1e-6)
        assert 15.0 < float(r["youngs_modulus_gpa"]) < 210.0
        assert float(r["solver_residual"]) <= 1e-5 and int(r["solver_iterations"]) > 0
        assert r["micrograph"] == Path(r["file"]).stem
    assert not list(a.glob("**/.tmp-*"))


def test_parallel_equals_serial_and_stale_files_removed(tmp_path):
    out = tmp_path / "s"
    make_castiron(out, n_micrographs=3, size=64, seed=1, n_jobs=1)
    serial = (out / "labels.csv").read_text()
    make_castiron(out, n_micrographs=2, size=64, seed=1, n_jobs=2)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["castiron_000.png", "castiron_001.png"]
    assert (out / "labels.csv").read_text().splitlines() == serial.splitlines()[:3]


def test_interrupted_run_leaves_no_labels(tmp_path, monkeypatch):
    real = ci._make_one
    calls = []

    def flaky(job):
        calls.append(job[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(ci, "_make_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_castiron(tmp_path / "x", n_micrographs=3, size=64, n_jobs=1)
    assert not (tmp_path / "x" / "labels.csv").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(BadInputError, match="n_micrographs"):
        make_castiron(tmp_path, n_micrographs=0)
    with pytest.raises(BadInputError, match="size"):
        generate_micrograph(Factors(1.0, 0.03), size=8)


def test_default_castiron_cached_and_versioned(tmp_path, monkeypatch):
    made = []

    def fake_make(out, **kw):
        made.append(kw)
        (Path(out) / "images").mkdir(parents=True)
        (Path(out) / "images" / "castiron_000.png").write_bytes(b"png")
        (Path(out) / "labels.csv").write_text("file\ncastiron_000.png\n")
        return Path(out)

    monkeypatch.setattr(ci, "make_castiron", fake_make)
    monkeypatch.setenv("MATREP_CACHE", str(tmp_path / "cache"))
    first = default_castiron()
    assert first.parent == tmp_path / "cache" / "datasets"
    assert f"v{GENERATOR_VERSION}" in first.name and (first / "labels.csv").is_file()
    assert default_castiron() == first and len(made) == 1      # cached: not regenerated
    # a set cached before data sets declared their bookkeeping columns gets the declaration
    from matrep.datasets import BOOKKEEPING_COLUMNS
    from matrep.labels import bookkeeping_columns

    assert bookkeeping_columns(first / "labels.csv") == list(BOOKKEEPING_COLUMNS)
    (first / "images" / "castiron_000.png").unlink()            # incomplete -> regenerated
    assert default_castiron() == first and len(made) == 2
    other = default_castiron(cache_dir=tmp_path / "elsewhere")
    assert other.parent == tmp_path / "elsewhere" and len(made) == 3


@pytest.mark.slow
def test_default_castiron_real(tmp_path):
    folder = default_castiron(cache_dir=tmp_path)
    rows = read_labels(folder)
    assert len(rows) == 12
    e = {(r["cooling_rate_k_s"], r["mg_wt_pct"]): float(r["youngs_modulus_gpa"]) for r in rows}
    # flake (low Mg) softer than nodular (high Mg) at every cooling rate
    for cr in ci.COOLING_RATES_K_S:
        assert e[(str(cr), "0.015")] < e[(str(cr), "0.05")]


# ----------------------------------------------------------------------------- CLI

def test_cli_make_castiron(tmp_path):
    from click.testing import CliRunner

    from matrep.cli import main

    res = CliRunner().invoke(main, ["datasets", "make", "castiron", "--out", str(tmp_path / "o"),
                                    "--n-micrographs", "2", "--size", "64", "-j", "1", "-q"])
    assert res.exit_code == 0, res.output
    assert "labels.csv" in res.output
    assert len(read_labels(tmp_path / "o")) == 2
    res = CliRunner().invoke(main, ["datasets", "make", "castiron", "--out", str(tmp_path / "o"),
                                    "--n-micrographs", "0"])
    assert res.exit_code != 0 and "n-micrographs" in res.output
