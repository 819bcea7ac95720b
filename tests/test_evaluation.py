"""Tests of matrep.evaluation (evaluate / interpret library) with a tiny fake model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("torch")

from matrep.errors import BadInputError, LabelsError  # noqa: E402
from matrep.labels import bookkeeping_columns, columns_path, write_bookkeeping_columns  # noqa: E402
from matrep.evaluation import (evaluate_models, interpret_model, measure_descriptors,  # noqa: E402
                               mutual_information_gap, sap_score, score_pairs,
                               spearman, spearman_matrix)

P = 32


def _discs(size, n_discs, radius, seed):
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 0.85, np.float32)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n_discs):
        cy, cx = rng.uniform(0, size, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2] = 0.15
    return img + rng.normal(0, 0.02, img.shape).astype(np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Six 96 px micrographs of dark discs: density and radius vary; labels.csv with both."""
    root = tmp_path_factory.mktemp("discs")
    (root / "images").mkdir()
    rows = []
    for i, (n_discs, r) in enumerate([(8, 3), (16, 3), (30, 3), (8, 5), (16, 5), (30, 5)]):
        img = _discs(96, n_discs, r, i)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"m{i}.png")
        rows.append({"file": f"images/m{i}.png", "density": n_discs, "radius": r, "seed": i})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    write_bookkeeping_columns(root / "labels.csv", ["seed"])  # the data set's declaration
    other = root / "other"
    other.mkdir()
    yy, xx = np.mgrid[:96, :96]
    stripes = (0.5 + 0.4 * np.sin(xx / 2.5)).astype(np.float32)
    Image.fromarray((stripes * 255).astype(np.uint8)).save(other / "stripes.png")
    return root


class FakeModel:
    """Latents: z0 = dark fraction, z1 = noise, z2 = mean edge strength, z3 = constant-ish."""

    name = "fake"
    can_decode = True

    def __init__(self, latent_dim=4, patch_size=P, blur=True):
        self.latent_dim = latent_dim
        self.patch_size_ = patch_size
        self.blur = blur

    def transform(self, X):
        X = np.asarray(X, dtype=float)
        rng = np.random.default_rng(0)
        dark = (X < 0.5).mean((1, 2))
        edge = np.abs(np.diff(X, axis=2)).mean((1, 2))
        cols = [dark * 10, rng.normal(size=len(X)), edge * 5, 1e-3 * rng.normal(size=len(X))]
        return np.stack(cols[:self.latent_dim], 1).astype(np.float32)

    def reconstruct(self, X):
        X = np.asarray(X, dtype=np.float32)
        if not self.blur:
            return X.copy()
        from scipy.ndimage import uniform_filter

        return np.stack([uniform_filter(x, 3) for x in X])

    def traverse(self, x, dims, values):
        return np.stack([[np.clip(x + 0.05 * v, 0, 1) for v in values] for _ in dims])


def test_score_pairs_identical_and_dists_na(monkeypatch):
    import matrep.metrics.dists as dm

    monkeypatch.delenv(dm.ENV_VGG16, raising=False)
    monkeypatch.delenv(dm.ENV_DISTS, raising=False)
    monkeypatch.setattr(dm, "find_vgg16_weights", lambda p=None: None)
    monkeypatch.setattr(dm, "_wheel_alpha_beta", lambda: None)
    x = np.random.default_rng(0).random((3, P, P)).astype(np.float32)
    sc = score_pairs(x, x)
    np.testing.assert_allclose(sc["stsim2"], 1.0, atol=1e-6)
    np.testing.assert_allclose(sc["stsim2_global"], 1.0, atol=1e-6)
    assert sc["dists"].startswith("n/a (missing: ImageNet VGG16 weights")
    with pytest.raises(BadInputError, match="unknown metric"):
        score_pairs(x, x, ["ssim"])


def test_evaluate_models_table_and_files(dataset, tmp_path):
    perfect, blurred = FakeModel(blur=False), FakeModel(latent_dim=2)
    rep = evaluate_models([perfect, blurred], dataset / "images", n=6, stride=32, seed=1,
                          other_images=dataset / "other", metrics=("stsim2", "stsim2_global"))
    kinds = [r["kind"] for r in rep.rows]
    assert kinds == ["model", "model", "ceiling", "floor"]
    assert [r["latent_dim"] for r in rep.rows[:2]] == [4, 2]
    g = {r["kind"] + str(i): r["stsim2_global"]["mean"] for i, r in enumerate(rep.rows)}
    assert g["model0"] == pytest.approx(1.0, abs=1e-6)      # perfect reconstruction
    assert g["model1"] < 1.0
    assert g["ceiling2"] > g["floor3"] + 0.05                 # discs vs stripes
    paths = rep.write(tmp_path / "ev")
    md = paths["markdown"].read_text()
    assert "| model | latent | patch | n | STSIM-2 | STSIM-2 global |" in md
    assert "ceiling" in md and "floor" in md
    data = json.loads(paths["json"].read_text())
    assert data["rows"][0]["n"] == 6 and len(data["scores"]["fake"]["stsim2"]) == 6
    csv_text = paths["csv"].read_text().splitlines()
    assert csv_text[0].startswith("name,kind,latent_dim,patch,n,stsim2_mean")
    assert len(csv_text) == 5


def test_evaluate_floor_from_same_folder_and_single_micrograph(dataset, tmp_path):
    rep = evaluate_models([FakeModel()], dataset / "images", n=4, stride=32,
                          metrics=("stsim2_global",))
    assert "different micrograph" in rep.settings["floor_source"]
    assert isinstance(rep.rows[-1]["stsim2_global"], dict)
    one = tmp_path / "one"
    one.mkdir()
    (one / "m0.png").write_bytes((dataset / "images" / "m0.png").read_bytes())
    rep = evaluate_models([FakeModel()], one, n=4, stride=32, metrics=("stsim2_global",))
    assert rep.rows[-1]["stsim2_global"].startswith("n/a (only one micrograph")


def test_mig_and_sap_on_known_structure():
    rng = np.random.default_rng(0)
    n = 600
    a = rng.integers(0, 5, n).astype(float)
    b = rng.integers(0, 4, n).astype(float)
    f = pd.DataFrame({"a": a, "b": b})
    disentangled = np.stack([a + 0.1 * rng.normal(size=n), b + 0.1 * rng.normal(size=n),
                             rng.normal(size=n)], 1)
    mixed = np.stack([a + b, a - b, rng.normal(size=n)], 1)
    mig_d, mig_m = mutual_information_gap(disentangled, f), mutual_information_gap(mixed, f)
    sap_d, sap_m = sap_score(disentangled, f), sap_score(mixed, f)
    assert mig_d["score"] > 0.8 and mig_d["top_dims"] == {"a": [0, mig_d["top_dims"]["a"][1]],
                                                          "b": [1, mig_d["top_dims"]["b"][1]]}
    assert mig_m["score"] < mig_d["score"] - 0.4
    assert sap_d["score"] > 0.8 and sap_m["score"] < 0.3
    for s in (mig_d, mig_m, sap_d, sap_m):
        assert 0.0 <= s["score"] <= 1.0
    with pytest.raises(BadInputError):
        mutual_information_gap(disentangled[:, :1], f)


def test_spearman_matrix_handles_constant_and_nan():
    z = np.stack([np.arange(10.0), np.ones(10)], 1)
    f = pd.DataFrame({"up": np.arange(10.0) ** 2, "const": np.ones(10),
                      "gappy": [np.nan] * 3 + list(range(7, 0, -1))})
    rho, p = spearman_matrix(z, f)
    assert rho.shape == (2, 3)
    assert rho[0, 0] == pytest.approx(1.0)
    assert rho[0, 2] == pytest.approx(-1.0)
    assert np.isnan(rho[1]).all() and np.isnan(rho[0, 1])


def test_measure_descriptors_tracks_density(dataset):
    from matrep.io import load_patches

    ps = load_patches(dataset / "images", patch=96, stride=96)
    d = measure_descriptors(ps.patches, min_diameter_px=2)
    assert list(d.columns) == ["graphite_fraction", "particle_density", "mean_eq_diameter",
                               "nodularity"]
    gf = d["graphite_fraction"].to_numpy()
    assert gf[2] > gf[1] > gf[0] and gf[5] > gf[3]         # more discs -> more dark phase
    assert d["mean_eq_diameter"][3] > d["mean_eq_diameter"][0]
    assert d["nodularity"].between(0.5, 1.0).all()           # discs are round


def test_interpret_with_labels(dataset, tmp_path):
    rep = interpret_model(FakeModel(), dataset / "images", labels=dataset / "labels.csv",
                          stride=16, out_dir=tmp_path / "interp", top_k=2)
    assert rep.factor_source == "labels"
    assert rep.factors == ["density", "radius"]             # "seed" is declared bookkeeping
    # z0 (dark fraction) and z2 (edges) both grow with the disc density; z1 is noise
    assert {r["dim"] for r in rep.ranking["density"]} == {0, 2}
    assert rep.ranking["density"][0]["rho"] > 0.5
    assert abs(rep.rho[1, 0]) < 0.3
    assert rep.rho.shape == (4, 2)
    assert 0 <= rep.mig["score"] <= 1 and 0 <= rep.sap["score"] <= 1
    out = tmp_path / "interp"
    for f in ("interpret.json", "interpret.md", "interpret_spearman.csv", "traversal.png"):
        assert (out / f).is_file()
    md = (out / "interpret.md").read_text()
    assert "MIG" in md and "| density | z" in md
    rep2 = interpret_model(FakeModel(), dataset / "images", labels=dataset / "labels.csv",
                           factors=["radius"], stride=32)
    assert rep2.factors == ["radius"] and rep2.figures == []
    with pytest.raises(LabelsError, match="nope"):
        interpret_model(FakeModel(), dataset / "images", labels=dataset / "labels.csv",
                        factors=["nope"], stride=32)


def test_bookkeeping_columns_come_from_the_data_sets_declaration(dataset, tmp_path):
    """Which label columns are not factors is declared beside the CSV (or passed), not a
    list of names in matrep's code."""
    import shutil

    plain = tmp_path / "labels.csv"
    shutil.copy(dataset / "labels.csv", plain)            # the same table, no declaration
    assert bookkeeping_columns(plain) == []
    kw = {"labels": plain, "stride": 32, "traversal_bases": 0}
    assert interpret_model(FakeModel(), dataset / "images", **kw).factors == \
        ["density", "radius", "seed"]
    assert interpret_model(FakeModel(), dataset / "images", ignore_columns=["seed"],
                           **kw).factors == ["density", "radius"]
    columns_path(plain).write_text('{"bookkeeping": "seed"}')
    with pytest.raises(LabelsError, match=r"labels\.columns\.json: expected"):
        bookkeeping_columns(plain)
    columns_path(plain).write_text("{not json")
    with pytest.raises(LabelsError, match="not readable JSON"):
        interpret_model(FakeModel(), dataset / "images", **kw)


def test_interpret_measured(dataset):
    rep = interpret_model(FakeModel(), dataset / "images", stride=32, n=20)
    assert rep.factor_source == "measured" and rep.n_patches == 20
    assert rep.factors[0] == "graphite_fraction"
    assert rep.ranking["graphite_fraction"][0]["dim"] == 0
    assert rep.ranking["graphite_fraction"][0]["rho"] > 0.9
    spread = [n for n in rep.notes if "posterior means of these patches spread" in n]
    assert len(spread) == 1 and "z0 " in spread[0]
    with pytest.raises(LabelsError):
        interpret_model(FakeModel(), dataset / "images", factors=["x"], stride=32)


# ---------------------------------------------------------------------------------------
# CLI, end to end with a tiny real texture-VAE (random VGG19 weights, 32 px patches)
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(dataset, tmp_path_factory):
    import torch

    from matrep.io import load_patches
    from matrep.encoder import FitContext
    from matrep.plugins.texturevae import TextureVAEEncoder

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("runs") / "tiny"
        ps = load_patches(dataset / "images", patch=32, stride=32)
        TextureVAEEncoder(latent_dim=4, weights="random", decoder_channels=(8, 8, 8, 8, 8),
                          epochs=1, batch_size=8, device="cpu", batch_size_eval=16,
                          max_patches=24).fit(ps, context=FitContext(run_dir=run))
    finally:
        torch.set_num_threads(n)
    return run


def test_cli_evaluate_and_interpret(dataset, tiny_run, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import matrep.metrics.dists as dm
    from matrep.cli import main

    monkeypatch.setattr(dm, "find_vgg16_weights", lambda p=None: None)
    monkeypatch.setattr(dm, "_wheel_alpha_beta", lambda: None)
    monkeypatch.delenv(dm.ENV_DISTS, raising=False)
    r = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_run), "--images",
                                  str(dataset / "images"), "--n", "4", "--stride", "32",
                                  "--other-images", str(dataset / "other"),
                                  "--out", str(tmp_path / "ev"), "-q"])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "ev" / "evaluation.md").read_text()
    assert "n/a (missing: ImageNet VGG16 weights" in md
    row = [ln for ln in md.splitlines() if ln.startswith(f"| {tiny_run}")][0]
    assert "| 4 | 32 | 4 |" in row                             # latent, patch, n
    r = CliRunner().invoke(main, ["interpret", "--model", str(tiny_run), "--images",
                                  str(dataset / "images"), "--labels",
                                  str(dataset / "labels.csv"), "--stride", "32",
                                  "--traversal-dims", "2", "--out", str(tmp_path / "in"), "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "in" / "interpret.json").read_text())
    assert data["latent_dim"] == 4 and data["factors"] == ["density", "radius"]
    assert (tmp_path / "in" / "traversal.png").stat().st_size > 1000
    assert data["mig"]["score"] >= 0
    # a bad metric name is a one-line error, not a traceback
    r = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_run), "--images",
                                  str(dataset / "images"), "--metrics", "ssim",
                                  "--out", str(tmp_path / "bad")])
    assert r.exit_code != 0 and "unknown metric" in r.output


# ---------------------------------------------------------------------------------------
# descriptor fidelity on images with known masks (the built-in cast-iron generator)
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def castiron(tmp_path_factory):
    """Four 256 px synthetic cast-iron micrographs (flake/nodular, coarse/fine) and masks."""
    from matrep.datasets.castiron import Factors, generate_micrograph

    root = tmp_path_factory.mktemp("castiron")
    (root / "images").mkdir()
    masks = {}
    for i, (rate, mg) in enumerate([(0.5, 0.015), (0.5, 0.05), (4.0, 0.015), (4.0, 0.05)]):
        img, mask = generate_micrograph(Factors(rate, mg), size=256, seed=i)
        Image.fromarray(img).save(root / "images" / f"c{i}.png")
        masks[f"c{i}"] = np.asarray(mask) > 0
    return root, masks


class Constant(FakeModel):
    """Reconstructs every patch as the same flat grey."""

    def reconstruct(self, X):
        return np.full(np.shape(X), 0.6, np.float32)


class WithStyle(FakeModel):
    """The identity reconstruction, a style distance and a held-out half of each image."""

    def __init__(self):
        super().__init__(patch_size=64, blur=False)

    def style_distance(self, X, Y):
        return np.abs(np.asarray(X) - np.asarray(Y)).mean((1, 2))

    def held_out_patches(self, ps):
        return ps.subset(ps.coords[:, 0] >= 128)


def test_segmentation_recovers_known_masks(castiron):
    from matrep.datasets.descriptors import measure_mask
    from matrep.io import load_patches
    from matrep.metrics.morphology import descriptor_array, segment_dark_phase

    root, masks = castiron
    ps = load_patches(root / "images", patch=64, stride=64)
    true = np.stack([masks[m][y:y + 64, x:x + 64]
                     for m, (y, x) in zip(ps.micrograph_ids, ps.coords)])
    seg = np.stack([segment_dark_phase(p) for p in ps.patches])
    assert (seg & true).sum() / (seg | true).sum() > 0.8                  # IoU of graphite
    d = descriptor_array(ps.patches)
    t = np.array([[measure_mask(m, min_diameter_um=3, periodic=False)[k] for k in
                   ("graphite_fraction", "particle_density", "mean_eq_diameter", "nodularity")]
                  for m in true])
    for j in range(4):
        assert spearman(d[:, j], t[:, j]).rho > 0.8
    # a flat or noise-only patch is one phase: no graphite
    rng = np.random.default_rng(0)
    assert not segment_dark_phase(np.full((64, 64), 0.7)).any()
    assert not segment_dark_phase(0.7 + 0.01 * rng.standard_normal((64, 64))).any()


def test_descriptor_fidelity_identity_is_exactly_one(castiron, tmp_path):
    root, _ = castiron
    rep = evaluate_models([WithStyle()], root / "images", n=24, stride=32, metrics=())
    fid = rep.rows[0]["fidelity"]
    assert set(fid) == {"graphite_fraction", "particle_density", "mean_eq_diameter",
                        "nodularity"}
    for k, f in fid.items():
        assert f["rho"] == 1.0 and f["note"] is None and f["interval"] == [1.0, 1.0], k
    # the same-micrograph ceiling is a number below 1, not undefined, with an interval around it
    ceiling = rep.rows[1]["fidelity"]["graphite_fraction"]
    assert rep.rows[1]["kind"] == "ceiling" and ceiling["rho"] is not None and ceiling["rho"] < 1
    lo, hi = ceiling["interval"]
    assert lo < ceiling["rho"] < hi
    # the identity is closer to its own input than to another micrograph's reconstruction
    assert rep.rows[0]["specificity"]["frac_own_lower"] == 1.0
    paths = rep.write(tmp_path / "ev")
    md = paths["markdown"].read_text()
    g = rep.rows[0]["graphite_found"]
    assert g["input"] == g["compared"] >= 20                         # nearly all hold graphite
    assert "## Descriptor fidelity" in md
    assert f"| fake | 24 | {g['input']} → {g['input']} | +1.00 [+1.00, +1.00] | +1.00 [" in md
    assert "100 % (own/other 0.00)" in md
    data = json.loads(paths["json"].read_text())
    assert data["rows"][0]["fidelity"]["nodularity"]["rho"] == 1.0
    head = paths["csv"].read_text().splitlines()[0].split(",")
    assert "fidelity_rho_graphite_fraction" in head and "specificity_frac_own_lower" in head
    assert "fidelity_low_nodularity" in head and "fidelity_high_nodularity" in head


def test_descriptor_fidelity_constant_reconstruction_is_undefined(castiron, tmp_path):
    root, _ = castiron
    rep = evaluate_models([Constant(patch_size=64)], root / "images", n=16, stride=32,
                          metrics=())
    for k, f in rep.rows[0]["fidelity"].items():
        assert f["rho"] is None and f["p"] is None, k
        assert f["note"].startswith("undefined"), k
    assert "reconstruction is constant" in rep.rows[0]["fidelity"]["graphite_fraction"]["note"]
    assert rep.rows[0]["specificity"].startswith("n/a (the model has no style_distance")
    assert rep.rows[0]["graphite_found"]["compared"] == 0
    paths = rep.write(tmp_path / "ev")
    md = paths["markdown"].read_text()
    row = [ln for ln in md.split("## Descriptor fidelity")[1].splitlines()
           if ln.startswith("| fake |")][0]
    assert "undefined [1]" in row and "+" not in row and "nan" not in row.lower()
    assert "[1] fake, area fraction: undefined: reconstruction is constant" in md
    data = json.loads(paths["json"].read_text())                   # null, not NaN
    assert data["rows"][0]["fidelity"]["graphite_fraction"]["rho"] is None
    import csv as _csv
    import io as _io

    rows = list(_csv.DictReader(_io.StringIO(paths["csv"].read_text())))
    assert rows[0]["fidelity_rho_graphite_fraction"] == ""
    assert "constant" in rows[0]["fidelity_note_graphite_fraction"]


def test_evaluate_held_out_draws_only_held_out_patches(castiron):
    root, _ = castiron
    rep = evaluate_models([WithStyle()], root / "images", n=100, stride=32, metrics=(),
                          held_out=True)
    drawn = rep.patches["64"]
    assert drawn and all(y >= 128 for _, y, _ in drawn)
    assert rep.settings["held_out"] is True
    with pytest.raises(BadInputError, match="does not say which patches"):
        evaluate_models([FakeModel(patch_size=64)], root / "images", n=4, stride=32,
                        metrics=(), held_out=True)
    other_split = WithStyle()
    other_split.n_val_patches_ = 999                     # trained on other images or patching
    with pytest.raises(BadInputError, match="held out 999 patches in training"):
        evaluate_models([other_split], root / "images", n=4, stride=32, metrics=(),
                        held_out=True)


def test_spearman_interval_brackets_rho_and_narrows_with_n():
    from matrep.metrics.correlation import spearman, spearman_interval

    rng = np.random.default_rng(4)
    x = rng.normal(size=400)
    y = 0.8 * x + 0.6 * rng.normal(size=400)
    lo, hi = spearman_interval(x[:60], y[:60])
    assert lo < spearman(x[:60], y[:60]).rho < hi < 1.0
    lo4, hi4 = spearman_interval(x, y)
    assert hi4 - lo4 < 0.7 * (hi - lo)                             # 400 pairs: narrower
    assert spearman_interval(x[:60], y[:60]) == (lo, hi)           # seeded
    assert spearman_interval(x, x) == (1.0, 1.0)                   # every resample exact
    assert spearman_interval(x, np.ones_like(x)) is None           # undefined rho: none
    y[::2] = np.nan                                                # pairs with a NaN left out
    assert spearman_interval(x, y) is not None


def test_spearman_helper_undefined_and_exact():
    from matrep.metrics.correlation import spearman as sp

    x = np.random.default_rng(1).random(50).round(1)                 # with ties
    assert sp(x, x).rho == 1.0 and sp(x, -x).rho == -1.0
    s = sp(x, np.full(50, 0.3), y_name="reconstruction")
    assert np.isnan(s.rho) and not s.defined and "reconstruction is constant" in s.note
    assert s.to_dict()["rho"] is None and s.format() == "undefined"
    assert "2 pair(s)" in sp([1.0, 2.0, np.nan], [1.0, 2.0, 3.0]).note
    from scipy.stats import spearmanr

    y = np.random.default_rng(2).random(50)
    ref = spearmanr(x, y)
    assert sp(x, y).rho == pytest.approx(ref.statistic, abs=1e-12)
    assert sp(x, y).pvalue == pytest.approx(ref.pvalue, rel=1e-9)


# ---------------------------------------------------------------------------------------
# traversals: what each latent dimension does to the decoded image
# ---------------------------------------------------------------------------------------
class Traverser(FakeModel):
    """Decodes discs: z0 sets the radius, z1 does nothing, z2 the number of discs."""

    def __init__(self):
        super().__init__(latent_dim=3, patch_size=64)

    def traverse(self, x, dims, values):
        seed = int(np.asarray(x).sum() * 1000) % 1000
        out = []
        for d in dims:
            row = []
            for v in values:
                radius = 4.0 + (v if d == 0 else 0.0)
                n = int(8 + 2 * (v if d == 2 else 0.0))
                rng = np.random.default_rng(seed)
                img = np.full((64, 64), 0.8, np.float32)
                yy, xx = np.mgrid[:64, :64]
                for cy, cx in rng.uniform(8, 56, (n, 2)):
                    img[(yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2] = 0.2
                row.append(img)
            out.append(row)
        return np.array(out)


def test_traversal_effects_rank_dimensions_per_descriptor(dataset):
    from matrep.evaluation import traversal_effects
    from matrep.io import load_patches

    ps = load_patches(dataset / "images", patch=64, stride=32)
    bases = ps.patches[:3]
    tr = traversal_effects(Traverser(), bases, reference=ps.patches)
    assert tr.curves.shape == (3, 4, 7) and tr.n_bases == 3
    assert tr.found == 1.0 and 0 < tr.found_reference <= 1
    top = {f: tr.top(f) for f in tr.descriptors}
    assert top["mean_eq_diameter"]["dim"] == 0 and top["mean_eq_diameter"]["rho"] > 0.9
    assert top["particle_density"]["dim"] == 2 and top["particle_density"]["monotone"]
    # z1 changes nothing: undefined, so never ranked
    assert np.isnan(tr.rho[1]).all()
    assert all(e["dim"] != 1 for f in tr.descriptors for e in tr.ranking(f))
    g = tr.goals()
    assert g["mean_eq_diameter"]["met"] and g["mean_eq_diameter"]["dim"] == 0
    assert g["graphite_fraction"]["met"] and g["graphite_fraction"]["goal"]
    assert not g["particle_density"]["goal"]
    dims, labels = tr.auto_dims()
    assert 0 in dims and 2 in dims and 1 not in dims
    assert any(lab.startswith("dim 0: ") and "mean diameter ↑" in lab for lab in labels)
    assert "| mean diameter |" in "\n".join(tr.markdown_lines())
    head = "descriptor,rank,dim,rho,span,moved_iqr,monotone,direction"
    assert tr.to_csv().splitlines()[0] == head
    json.dumps(tr.to_dict())                                           # JSON-clean


def test_traversal_goal_share_over_resampled_bases(dataset):
    """``met_share``: in how many resamples of the bases each goal is met — all of them when
    every base moves the descriptor, some when one base alone does, none when nothing moves."""
    from matrep.evaluation import traversal_effects
    from matrep.evaluation.traversal import BOOTSTRAP_RESAMPLES
    from matrep.io import load_patches

    bases = load_patches(dataset / "images", patch=64, stride=32).patches[:4]

    class OneBase(Traverser):  # z0 grows the discs from the first base only
        def traverse(self, x, dims, values):
            if np.array_equal(x, bases[0]):
                return super().traverse(x, dims, values)
            return super().traverse(x, dims, np.zeros_like(np.asarray(values, float)))

    tr = traversal_effects(Traverser(), bases)
    g = tr.goals()
    assert tr.met_share.shape == (4,) and g["mean_eq_diameter"]["met"]
    assert g["mean_eq_diameter"]["met_share"] == 1.0          # every resample: every base moves
    still = traversal_effects(OneBase(), bases[1:], reference=bases).goals()
    assert all(v["met_share"] == 0.0 and not v["met"] for v in still.values())  # nothing moves
    one = traversal_effects(OneBase(), bases, reference=bases).goals()["mean_eq_diameter"]
    assert one["met"] and 0.0 < one["met_share"] < 1.0        # met only when base 0 is drawn
    assert one["met_share"] * BOOTSTRAP_RESAMPLES == int(one["met_share"] * BOOTSTRAP_RESAMPLES)
    assert "yes (100 %)" in "\n".join(tr.markdown_lines())
    assert traversal_effects(Traverser(), bases, bootstrap=False).goals()["mean_eq_diameter"][
        "met_share"] is None


def test_interpret_reports_traversal_ranking(dataset, tmp_path):
    rep = interpret_model(Traverser(), dataset / "images", stride=32, n=12,
                          traversal_bases=2, out_dir=tmp_path / "in", n_traversal_dims=2)
    assert rep.traversal is not None and rep.traversal.n_bases == 2
    assert rep.traversal.top("mean_eq_diameter")["dim"] == 0
    out = tmp_path / "in"
    assert (out / "interpret_traversal.csv").is_file() and (out / "traversal.png").is_file()
    data = json.loads((out / "interpret.json").read_text())
    assert data["traversal"]["goals"]["mean_eq_diameter"]["met"] is True
    assert "What each dimension's traversal does" in (out / "interpret.md").read_text()


def test_cli_traverse_dims_auto_and_list(dataset, tiny_run, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import matrep.cli.model as cm
    from matrep.cli import main

    img = str(dataset / "images" / "m4.png")
    r = CliRunner().invoke(main, ["traverse", "--model", str(tiny_run), "--image", img,
                                  "--dims", "0,1", "--steps", "3",
                                  "--out", str(tmp_path / "list.png")])
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "list.npz")["dims"].tolist() == [0, 1]
    # auto: the fake decoder's z0 sets the disc radius, z2 the number of discs
    monkeypatch.setattr(cm, "_load_decoder_model", lambda m: Traverser())
    r = CliRunner().invoke(main, ["traverse", "--model", str(tiny_run), "--image", img,
                                  "--dims", "auto", "--auto-bases", "2", "--steps", "3",
                                  "--out", str(tmp_path / "auto.png")])
    assert r.exit_code == 0, r.output
    data = np.load(tmp_path / "auto.npz")
    labels = data["labels"].tolist()
    assert sorted(data["dims"].tolist()) == [0, 2] and len(labels) == 2
    assert "dim 0: " in r.output and "mean diameter ↑" in labels[data["dims"].tolist().index(0)]
    assert "particle density ↑" in labels[data["dims"].tolist().index(2)]
    assert (tmp_path / "auto.png").stat().st_size > 1000


class NoiseCode(WithStyle):
    """The identity reconstruction with a latent code that is pure noise."""

    def transform(self, X):
        return np.random.default_rng(1).normal(size=(len(X), 4)).astype(np.float32)


def test_code_fidelity_separates_what_the_code_carries(castiron, tmp_path):
    """The code probe: a code holding the dark fraction predicts the area fraction out of fold;
    a noise code predicts nothing, even when the reconstruction is perfect."""
    root, _ = castiron
    rep = evaluate_models([WithStyle(), NoiseCode()], root / "images", n=40, stride=32,
                          metrics=())
    carried, noise = rep.rows[0]["code_fidelity"], rep.rows[1]["code_fidelity"]
    assert carried["graphite_fraction"]["rho"] > 0.8
    assert noise["graphite_fraction"]["rho"] is None or noise["graphite_fraction"]["rho"] < 0.5
    assert rep.rows[1]["fidelity"]["graphite_fraction"]["rho"] == 1.0   # decoder not to blame
    assert all(r.get("code_fidelity") is None for r in rep.rows if r["kind"] != "model")
    paths = rep.write(tmp_path / "ev")
    md = paths["markdown"].read_text()
    assert "## What the latent code carries" in md
    line = [ln for ln in md.split("## What the latent code carries")[1].splitlines()
            if ln.startswith("| fake |")][0]
    assert f"{carried['graphite_fraction']['rho']:+.2f}" in line
    head = paths["csv"].read_text().splitlines()[0].split(",")
    assert "code_rho_mean_eq_diameter" in head


def test_interpret_help_states_the_traversal_bases_default():
    """The CLI leaves --traversal-bases unset (the library's default applies); its help names
    that default, which must follow the constant."""
    from click.testing import CliRunner

    from matrep.cli import main
    from matrep.evaluation.traversal import TRAVERSAL_BASES

    out = CliRunner().invoke(main, ["interpret", "--help"], terminal_width=200).output
    assert f"Default: {TRAVERSAL_BASES} " in " ".join(out.split())
