"""matrep.design: surrogate, search, physics check, the loop, bad requests (tiny fakes, fast).

The fake generative model draws 2 x 2 dark ellipses per 32^2 patch: z0 sets their size (so the
graphite fraction and Young's modulus), z1 their aspect ratio, z2 and z3 nothing. Its encoder
measures the ellipses back, so latents and images correspond as in a trained VAE, and the
physics of a decoded latent is known to be a smooth function of z0 and z1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from matrep.design import DesignError, DesignSettings, design, make_designer, write_design
from matrep.design import physics as ph
from matrep.design.distinct import StyleDistance
from matrep.design.search import (optimise, prior_radius, project_to_ball, propose,
                                  secant_steps, select_diverse)
from matrep.design.surrogate import CorrectedSurrogate, LatentGP
from matrep.errors import LabelsError
from matrep.seeds import array_seed

P = 32


def _sig(x):
    return 1 / (1 + np.exp(-x))


class FakeModel:
    """Decodes (z0, z1) into ellipses and measures them back; z2, z3 unused."""

    name = "fake"
    generative = True
    latent_dim = 4
    patch_size_ = P

    def decode(self, Z, seeds=None):
        Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
        yy, xx = np.mgrid[0:16, 0:16] + 0.5
        out = []
        for z in Z:
            rx = 2.5 + 2.5 * _sig(z[0])
            ry = rx * np.exp(0.4 * np.tanh(z[1]))
            d = np.sqrt(((xx - 8) / rx) ** 2 + ((yy - 8) / ry) ** 2)
            cell = 0.75 - 0.6 * np.clip((1 - d) * min(rx, ry) + 0.5, 0, 1)
            out.append(np.tile(cell, (2, 2)))
        return np.array(out, dtype=np.float32)

    def transform(self, X):
        out = []
        for x in np.asarray(X):
            dark = x[:16, :16] < 0.45
            w = max(dark.any(0).sum(), 1) / 2
            h = max(dark.any(1).sum(), 1) / 2
            z0 = np.log(np.clip((w - 2.5) / 2.5, 1e-3, 1 - 1e-3)
                        / (1 - np.clip((w - 2.5) / 2.5, 1e-3, 1 - 1e-3)))
            z1 = np.arctanh(np.clip(np.log(h / w) / 0.4, -0.999, 0.999))
            out.append([z0, z1, 0.0, 0.0])
        return np.array(out, dtype=np.float32)


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    """12 micrographs of 64^2 (2 x 2 fake patches each) with masks and labels."""
    root = tmp_path_factory.mktemp("fakeci")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    m = FakeModel()
    rng = np.random.default_rng(0)
    rows = ["file,mask_file,youngs_modulus_gpa,poisson_ratio,hardness"]
    for i in range(12):
        tiles = m.decode(np.c_[rng.normal(0, 1.2, (4, 2)), np.zeros((4, 2))])
        img = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
        name = f"m{i:02d}.png"
        Image.fromarray((img * 255).astype(np.uint8)).save(root / "images" / name)
        Image.fromarray(((img < 0.45) * 255).astype(np.uint8)).save(root / "masks" / name)
        rows.append(f"{name},{name},150,0.27,{200 + i}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def designer(fake_data):
    return make_designer(FakeModel(), fake_data / "images", fake_data / "labels.csv",
                         ["youngs_modulus_gpa"], stride=32, style_weights=False,
                         settings=DesignSettings(n=3, budget=9, batch=3, size=64, seed=0))


# ----------------------------------------------------------------------------- surrogate
def test_gp_fits_a_smooth_function_and_is_unsure_away_from_data():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, (120, 2))
    f = lambda X: np.sin(X[:, 0]) + 0.5 * X[:, 1]  # noqa: E731
    gp = LatentGP(seed=0).fit(X, f(X))
    Xt = rng.uniform(-1.5, 1.5, (50, 2))
    m, s = gp.predict(Xt, return_std=True)
    r2 = 1 - np.sum((m - f(Xt)) ** 2) / np.sum((f(Xt) - f(Xt).mean()) ** 2)
    assert r2 > 0.98
    _, s_far = gp.predict(np.array([[8.0, 8.0]]), return_std=True)
    assert s_far[0] > 5 * np.median(s)


def test_gp_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3))
    gp = LatentGP(seed=0).fit(X, X[:, 0] ** 2 - X[:, 1] + 0.3 * X[:, 2])
    z = np.array([3.5, -3.0, 3.0])          # off the data, where the variance varies
    m, v, gm, gv = gp.predict_grad(z)
    assert v > 1e-3
    assert m == pytest.approx(gp.predict(z[None])[0])
    eps = 1e-5
    for j in range(3):
        e = np.zeros(3)
        e[j] = eps
        mp, vp, _, _ = gp.predict_grad(z + e)
        mm, vm, _, _ = gp.predict_grad(z - e)
        assert gm[j] == pytest.approx((mp - mm) / (2 * eps), rel=1e-4, abs=1e-7)
        assert gv[j] == pytest.approx((vp - vm) / (2 * eps), rel=1e-2, abs=1e-7)


def test_corrected_surrogate_learns_an_offset():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 2))
    base = LatentGP(seed=0).fit(X, X[:, 0])
    s = CorrectedSurrogate(base)
    Zc = rng.normal(size=(10, 2))
    s.add(Zc, base.predict(Zc) + 3.0)           # physics is 3 above the base everywhere
    Zt = rng.normal(size=(5, 2)) * 0.5
    assert s.predict(Zt) - base.predict(Zt) == pytest.approx(np.full(5, 3.0), abs=0.3)


# ----------------------------------------------------------------------------- search
def test_prior_ball_and_projection():
    assert prior_radius(1, 0.95) == pytest.approx(1.959964, rel=1e-5)
    assert prior_radius(10, 0.99) ** 2 == pytest.approx(23.209, rel=1e-3)
    Z = project_to_ball(np.array([[3.0, 4.0], [0.3, 0.4]]), 1.0)
    assert np.linalg.norm(Z, axis=1) == pytest.approx([1.0, 0.5])


def test_search_reaches_the_target_inside_the_ball():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 3))
    gp = LatentGP(seed=0).fit(X, 2 * X[:, 0] + X[:, 1])
    sur, tg, sc = {"y": gp}, {"y": 1.5}, {"y": 0.05}
    r = prior_radius(3, 0.99)
    Z = optimise(sur, tg, sc, rng.normal(size=(4, 3)), r)
    assert np.all(np.linalg.norm(Z, axis=1) <= r + 1e-9)
    assert np.abs(gp.predict(Z) - 1.5) == pytest.approx(np.zeros(4), abs=0.1)
    Zp, _ = propose(sur, tg, sc, pool=X, radius=r, n=3, min_distance=0.8, rng=rng)
    assert len(Zp) == 3
    d = np.linalg.norm(Zp[:, None] - Zp[None], axis=-1)[np.triu_indices(3, 1)]
    assert d.min() >= 0.8 - 1e-9                          # one-to-many: apart from each other
    assert np.abs(gp.predict(Zp) - 1.5).max() < 0.3


def test_secant_steps_land_on_the_target_of_a_linear_function():
    Z = np.array([[0.0, 0.0], [1.0, 0.2], [0.2, 3.0], [2.0, 2.0]])
    e = Z[:, 0] - 0.5                                       # physics - target, linear in z0
    S = secant_steps(Z, e, 2, radius=10.0, min_distance=0.1)
    assert len(S) == 2
    assert S[:, 0] - 0.5 == pytest.approx([0.0, 0.0], abs=1e-12)
    assert len(secant_steps(Z, np.abs(e) + 1, 2, 10.0)) == 0   # no sign change: no step


def test_select_diverse_keeps_distance_and_order():
    Z = np.array([[0.0], [0.1], [2.0], [2.05], [5.0]])
    idx = select_diverse(Z, np.array([0, 1, 2, 3, 4.0]), 3, 1.0)
    assert idx.tolist() == [0, 2, 4]
    assert select_diverse(Z, np.arange(5.0), 3, 1.0, exclude=[[0.0]]).tolist() == [2, 4]


# ----------------------------------------------------------------------------- physics
def test_segment_and_castiron_solver():
    img = np.full((16, 16), 0.8, np.float32)
    img[4:8, 4:8] = 0.1
    mask = ph.segment(img)
    assert mask.sum() == 16 and mask[5, 5]
    assert not ph.segment(np.full((8, 8), 0.5)).any()            # constant: no phase 1
    s = ph.get_solver("castiron")
    r0 = ph.solve_mask(s, np.zeros((16, 16), bool))
    assert r0.values["youngs_modulus_gpa"] == pytest.approx(210.0)
    r1 = ph.solve_mask(s, mask)
    assert 150 < r1.values["youngs_modulus_gpa"] < 210 and r1.converged
    res, masks = ph.check_designs(img[None], s)
    assert res[0].values == pytest.approx(r1.values) and masks[0].sum() == 16


def test_solver_registry(monkeypatch):
    monkeypatch.setattr(ph, "_REGISTERED", dict(ph._REGISTERED))
    with pytest.raises(DesignError, match="no physics solver registered for material 'steel'"):
        ph.get_solver("steel")
    steel = ph.Solver("steel", ("hardness",), lambda m: {"values": {"hardness": float(m.mean())},
                                                         "residual": 0.0})
    ph.register_solver(steel)
    assert ph.get_solver("steel") is steel
    with pytest.raises(DesignError, match="already registered"):
        ph.register_solver(ph.Solver("steel", ("x",), steel.solve))
    with pytest.raises(DesignError, match="no physics solver for 'poisson_ratio'"):
        steel.check(["poisson_ratio"])


# ----------------------------------------------------------------------------- the loop
def test_training_data_are_patch_level_from_masks(designer):
    d = designer.data
    assert "mask_file" in d.sources["youngs_modulus_gpa"]
    v = d.values["youngs_modulus_gpa"]
    assert len(v) == 48 and v.std() > 5                         # not the micrograph label (150)
    assert designer.active.tolist() == [0, 1]                   # z2, z3 unused by the encoder


def test_patch_properties_are_cached(fake_data):
    from matrep.design.training import load_training_data

    calls = []

    def solve(mask):
        calls.append(1)
        return {"values": {"youngs_modulus_gpa": 200.0 - 100 * float(mask.mean())}, "residual": 0.0}

    s = ph.Solver("counting", ("youngs_modulus_gpa",), solve)
    args = (FakeModel(), fake_data / "images", fake_data / "labels.csv", ["youngs_modulus_gpa"])
    a = load_training_data(*args, solver=s, stride=32)
    assert len(calls) == 48
    b = load_training_data(*args, solver=s, stride=32)
    assert len(calls) == 48                                     # second time from the cache
    assert np.array_equal(a.values["youngs_modulus_gpa"], b.values["youngs_modulus_gpa"])
    load_training_data(*args, solver=s, stride=32, cache=False)
    assert len(calls) == 96


def test_design_meets_target_by_physics_and_beats_random(designer):
    lo, hi = designer.data.range("youngs_modulus_gpa")
    t = lo + 0.3 * (hi - lo)
    r = designer.design({"youngs_modulus_gpa": t})
    assert r.solver_calls == 9 and len(r.designs) == 3
    err = np.abs(r.design_errors("youngs_modulus_gpa"))
    assert np.median(err) < 0.03
    for c in r.designs:                                        # predicted with uncertainty
        m, s = c.predicted["youngs_modulus_gpa"]
        assert np.isfinite(m) and s > 0 and c.physics.residual < 1e-4
    assert r.large and r.large[0]["image"].shape == (64, 64)
    assert r.large[0]["physics"].values["youngs_modulus_gpa"] > 0
    b = designer.baseline({"youngs_modulus_gpa": t})
    assert b.solver_calls == 9
    assert np.median(err) <= np.median(np.abs(b.design_errors("youngs_modulus_gpa")))


class StationaryFake(FakeModel):
    """A fake whose decoder is stationary: it decodes any size by repeating its cell, and
    records the seeds and sizes it was asked for."""

    decodes_any_size = True

    def __init__(self):
        self.calls = []

    def decode(self, Z, seeds=None, size=None):
        self.calls.append((None if seeds is None else list(seeds), size))
        out = super().decode(Z)
        if size is None:
            return out
        reps = size // out.shape[-1]
        return np.tile(out, (1, reps, reps))


def test_large_designs_are_decoded_whole_by_a_stationary_decoder(designer):
    from matrep.design.inverse import Designer

    fake = StationaryFake()
    d = Designer.__new__(Designer)
    d.__dict__.update(designer.__dict__)
    d.model = fake
    r = d.design({"youngs_modulus_gpa": float(np.median(designer.data.values["youngs_modulus_gpa"]))})
    assert r.large[0]["method"].startswith("decoded whole")
    assert r.large[0]["image"].shape == (64, 64)
    sizes = [s for _, s in fake.calls]
    assert 64 in sizes                                         # one call per large design
    seeds = [sd for sd, s in fake.calls if s is None]
    assert all(sd is not None for sd in seeds)                 # every candidate has its seed
    flat = [v for sd in seeds for v in sd]
    assert len(set(flat)) == len(flat)                         # different latents, seeds


class SeededFake(FakeModel):
    """A fake whose noise seed matters: each seed draws the ellipse a little wider or
    narrower, as the texture-VAE's seeded noise places and shapes its particles."""

    def decode(self, Z, seeds=None):
        Z = np.atleast_2d(np.asarray(Z, dtype=np.float64)).copy()
        if seeds is not None:
            Z[:, 0] += np.array([0.15 * (int(s) % 7 - 3) for s in seeds])
        return super().decode(Z)


def test_other_draws_check_each_design_latent_with_other_seeds(designer):
    import dataclasses

    from matrep.design.inverse import Designer
    from matrep.design.report import summary_rows, target_dict
    from matrep.design.study import _accuracy

    d = Designer.__new__(Designer)
    d.__dict__.update(designer.__dict__)
    d.model = SeededFake()
    d.rng = np.random.default_rng(5)          # its own: later tests draw from the fixture's
    d.settings = dataclasses.replace(designer.settings, draws=5)
    prop = "youngs_modulus_gpa"
    t = float(np.median(designer.data.values[prop]))
    r = d.design({prop: t})
    values = []
    for c in r.designs:
        assert len(c.draws) == 5 and len(set(c.draw_seeds)) == 5
        assert array_seed(c.latent) not in c.draw_seeds      # other draws than the design's own
        imgs = d.model.decode(np.repeat(c.latent[None], 5, axis=0), seeds=c.draw_seeds)
        again, _ = ph.check_designs(imgs, d.solver)
        np.testing.assert_allclose(c.draw_values(prop), [x.values[prop] for x in again])
        values += list(c.draw_values(prop))
    assert np.ptp(values) > 0                                 # the seeds change the property
    acc = _accuracy([r], prop, draws=True)
    assert acc["n"] == len(r.designs)
    v = r.designs[0].draw_values(prop)
    assert acc["max_abs_rel_error"] >= abs(v.mean() - t) / t - 1e-12
    td = target_dict(r, "design_t0")
    od = td["designs"][0]["other_draws"]
    assert all("other_draws" not in c for c in td["checked"])  # listed once, under designs
    assert od["noise_seeds"] == r.designs[0].draw_seeds
    assert od["physics"][prop]["mean"] == pytest.approx(v.mean(), abs=1e-6)
    assert od["physics"][prop]["error_relative_of_mean"] == pytest.approx((v.mean() - t) / t,
                                                                          abs=1e-6)
    # the baseline's designs get the same check
    b = d.baseline({prop: t})
    assert all(len(c.draws) == 5 for c in b.designs)
    # --draws 0: none, and the report says n/a
    d.settings = dataclasses.replace(designer.settings, draws=0)
    r0 = d.design({prop: t})
    assert all(c.draws is None for c in r0.designs)
    assert "other_draws" not in target_dict(r0, "design_t0")["designs"][0]
    assert _accuracy([r0], prop, draws=True) == {"n": 0}
    with pytest.raises(DesignError, match="--draws"):
        dataclasses.replace(designer.settings, draws=-1).check(physics=True)

    class _Res:
        results, baselines = [r0], []
    assert summary_rows(_Res)[0][-1] == "n/a"


def test_report_files(designer, tmp_path, fake_data):
    res = design(FakeModel(), fake_data / "images", fake_data / "labels.csv",
                 {"youngs_modulus_gpa": float(np.median(designer.data.values["youngs_modulus_gpa"]))},
                 designer=designer)
    paths = write_design(res, tmp_path / "out")
    js = json.loads(paths["json"].read_text())
    d0 = js["targets"][0]["designs"][0]
    assert len(d0["latent"]) == 4 and {"mean", "std"} <= set(d0["predicted"]["youngs_modulus_gpa"])
    assert "solver_residual" in d0 and "physics" in d0 and "large" in d0 and "other_draws" in d0
    # the latent and noise seed in the JSON decode to the design's image again
    z = np.asarray(d0["latent"], np.float32)
    assert d0["noise_seed"] == array_seed(z)
    np.testing.assert_array_equal(z, res.results[0].designs[0].latent)
    assert js["budget"]["designed"] == 9 and js["budget"]["baseline"] == 9
    assert (tmp_path / "out" / "designs.png").stat().st_size > 0
    assert (tmp_path / "out" / "target_vs_achieved_youngs_modulus_gpa.png").is_file()
    assert not list((tmp_path / "out").glob(".tmp-*"))


# ----------------------------------------------------------------------------- bad requests
def test_target_outside_range_is_refused_or_flagged(designer):
    lo, hi = designer.data.range("youngs_modulus_gpa")
    with pytest.raises(DesignError, match="outside the data's patch-level range"):
        designer.design({"youngs_modulus_gpa": hi + 20})
    designer.settings.allow_extrapolation = True
    try:
        assert designer.check_targets({"youngs_modulus_gpa": hi + 20}) == {"youngs_modulus_gpa": True}
    finally:
        designer.settings.allow_extrapolation = False


def test_unknown_column_and_missing_solver(fake_data):
    args = (FakeModel(), fake_data / "images", fake_data / "labels.csv")
    with pytest.raises(LabelsError, match="no column 'strength'.*columns are: file, mask_file"):
        make_designer(*args, ["strength"], stride=32, style_weights=False)
    with pytest.raises(DesignError, match="no physics solver for 'hardness' of material 'castiron'"):
        make_designer(*args, ["hardness"], physics=True, stride=32, style_weights=False)
    d = make_designer(*args, ["hardness"], stride=32, style_weights=False,
                      settings=DesignSettings(n=2, size=0))        # default: predictions only
    assert d.solver is None and "micrograph label" in d.data.sources["hardness"]
    r = d.design({"hardness": 205.0})
    assert len(r.designs) == 2 and r.designs[0].physics is None and r.solver_calls == 0


@pytest.fixture
def cli(monkeypatch, fake_data, tmp_path):
    import matrep.registry

    monkeypatch.setattr(matrep.registry, "load_model", lambda path: FakeModel())
    from matrep.cli import main

    def run(*extra):
        args = ["design", "--model", str(tmp_path), "--images", str(fake_data / "images"),
                "--labels", str(fake_data / "labels.csv"), "--stride", "32", "--size", "0",
                "--out", str(tmp_path / "o"), "-q", "--no-distinct", *extra]
        return CliRunner().invoke(main, args)
    return run


@pytest.mark.parametrize("extra, message, code", [
    (["--target", "youngs_modulus_gpa=5000"], "outside the data's patch-level range", 1),
    (["--target", "strength=3"], "no column 'strength'", 1),
    (["--target", "hardness=205", "--physics"], "no physics solver for 'hardness'", 1),
    (["--target", "youngs_modulus_gpa"], "expected COLUMN=VALUE", 2),     # a usage error
])
def test_cli_bad_requests_one_line(cli, extra, message, code):
    r = cli(*extra)
    assert r.exit_code == code, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in r.output


def test_cli_designs(cli, tmp_path):
    r = cli("--target", "youngs_modulus_gpa=150", "-n", "2", "--budget", "4", "--batch", "2",
            "--no-baseline", "--no-distinct")
    assert r.exit_code == 0, r.output
    js = json.loads((tmp_path / "o" / "designs.json").read_text())
    assert len(js["targets"][0]["designs"]) == 2 and js["baseline"] == []




def test_search_ball_widens_only_when_designs_are_missing_and_the_best_is_on_the_rim(designer):
    """The widening rule, without the luck of a 9-call search: the loop widens the ball one
    step a round while fewer than ``n`` designs are within tolerance and the best candidate
    sits on the rim (``_at_rim``), never past ``max_quantile``; ``_at_rim`` itself is a
    length test on the best candidate's search coordinates."""
    from dataclasses import replace
    from types import SimpleNamespace

    from matrep.design.inverse import Designer
    from matrep.design.search import SearchSpace, prior_radius

    lo, hi = designer.data.range("youngs_modulus_gpa")
    mid = {"youngs_modulus_gpa": float(np.median(designer.data.values["youngs_modulus_gpa"]))}
    far = {"youngs_modulus_gpa": hi + 0.3 * (hi - lo)}

    def run(target, at_rim, **settings):
        d = Designer.__new__(Designer)
        d.__dict__.update(designer.__dict__)
        d.rng = np.random.default_rng(0)          # its own: later tests draw from the fixture's
        msgs = []
        d.log = msgs.append
        d.settings = replace(designer.settings, allow_extrapolation=True, region="prior",
                             **settings)
        d.space = SearchSpace.prior(len(d.active))
        d._at_rim = lambda cands, targets, radius: at_rim
        return d, d.design(target), msgs

    # budget 9 in rounds of 3: widened after rounds 1 and 2, up to max_quantile
    d, r, msgs = run(far, True)
    assert r.search_quantile == d.settings.max_quantile == 0.9999
    assert any("widens to mass 0.999" in m for m in msgs)
    length = np.linalg.norm(d._coords(r.candidates), axis=1)    # in search coordinates
    assert np.all(length <= prior_radius(len(d.active), 0.9999) + 1e-4)
    # not on the rim, or max_quantile equal to quantile, or every design found: never
    assert run(far, False)[1].search_quantile == 0.99
    assert run(far, True, max_quantile=0.99)[1].search_quantile == 0.99
    assert run(mid, True, tolerance=10.0)[1].search_quantile == 0.99
    # the rim test: the best candidate's length against 0.95 of the radius
    d = run(mid, False)[0]
    d.__dict__.pop("_at_rim")

    def cand(u, err):
        z = np.zeros(designer.model.latent_dim)
        z[d.active] = d.space.to_latent(np.asarray(u, float)[None])[0]
        return SimpleNamespace(latent=z, worst_error=lambda targets, e=err: e)

    k = len(d.active)
    rim, inner = np.eye(k)[0] * 0.96, np.eye(k)[0] * 0.5
    assert Designer._at_rim(d, [cand(rim, 0.01), cand(inner, 0.2)], mid, 1.0)
    assert not Designer._at_rim(d, [cand(rim, 0.2), cand(inner, 0.01)], mid, 1.0)
    with pytest.raises(DesignError, match="max-quantile"):
        DesignSettings(quantile=0.99, max_quantile=0.9).check(physics=True)


def test_secant_steps_skip_checked_and_repeated_points():
    from matrep.design.search import secant_steps

    Z = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # anchor 0 is already on target (error 0 is skipped); 1 and 2 share the partner 0 ...
    steps = secant_steps(Z, np.array([1e-12, -1.0, -1.0]), 3, 10.0)
    # ... whose steps land on it: nothing new to check
    assert len(steps) == 0
    steps = secant_steps(Z, np.array([0.5, -0.5, -0.5]), 3, 10.0)
    assert len(steps) == 2 and np.allclose(steps, [[0.5, 0.0], [0.0, 0.5]])


def test_select_distinct_does_not_take_a_poor_design_for_looking_different():
    from matrep.design.distinct import select_distinct

    errors = np.array([0.001, 0.004, 0.30])      # 0 and 1 alike, 2 different but 30 % off
    D = np.full((3, 3), 10.0)
    np.fill_diagonal(D, 0.0)
    D[0, 1] = D[1, 0] = 1.0
    idx, flags = select_distinct(errors, D, 2, 5.0)
    assert idx.tolist() == [0, 2] and flags.tolist() == [True, True]
    idx, flags = select_distinct(errors, D, 2, 5.0, max_error=0.05)
    assert idx.tolist() == [0, 1] and flags.tolist() == [True, False]
    # nothing within max_error: the bound follows the best error (2x)
    idx, flags = select_distinct(np.array([0.20, 0.21, 0.30]), D, 2, 5.0, max_error=0.05)
    assert idx.tolist() == [0, 2] and flags.tolist() == [True, True]
    idx, flags = select_distinct(np.array([0.20, 0.21, 0.50]), D, 2, 5.0, max_error=0.05)
    assert idx.tolist() == [0, 1] and flags.tolist() == [True, False]


def test_select_distinct_finds_the_set_that_greedy_choice_blocks():
    """The best item is close to two good ones that are far from each other: taking it first
    leaves two distinct designs, the exact search finds three; of several sets of the largest
    size it takes the one whose worst error is smallest."""
    import matrep.design.distinct as dm

    errors = np.array([0.001, 0.002, 0.003, 0.004, 0.009])
    D = np.full((5, 5), 10.0)
    np.fill_diagonal(D, 0.0)
    for a, b in ((0, 1), (0, 2), (3, 4)):
        D[a, b] = D[b, a] = 1.0
    idx, flags = dm.select_distinct(errors, D, 3, 5.0)
    # {1, 2, 3} and {1, 2, 4} are both apart; {1, 2, 3} has the smaller worst error
    assert idx.tolist() == [1, 2, 3] and flags.tolist() == [True] * 3
    idx, flags = dm.select_distinct(errors, D, 4, 5.0)
    assert idx.tolist() == [1, 2, 3, 0] and flags.tolist() == [True, True, True, False]
    # the error bound still applies: item 3 is 2.5 x the bound away, so {1, 2} and a fill
    idx, flags = dm.select_distinct(np.array([0.001, 0.002, 0.003, 0.3, 0.4]), D, 3, 5.0,
                                    max_error=0.05)
    assert idx.tolist() == [1, 2, 0] and flags.tolist() == [True, True, False]
    # past the node budget: the greedy choice, never an error
    old = dm.SEARCH_NODES
    try:
        dm.SEARCH_NODES = 1
        idx, flags = dm.select_distinct(errors, D, 3, 5.0)
        assert idx.tolist() == [0, 3, 1] and flags.tolist() == [True, True, False]
    finally:
        dm.SEARCH_NODES = old


def test_baseline_draws_do_not_depend_on_the_design_loop(designer):
    t = {"youngs_modulus_gpa": float(np.median(designer.data.values["youngs_modulus_gpa"]))}
    first = designer.baseline(t)
    designer.design(t)                                  # uses the search's generator
    again = designer.baseline(t)
    np.testing.assert_array_equal(np.stack([c.latent for c in first.candidates]),
                                  np.stack([c.latent for c in again.candidates]))
    other = designer.baseline({"youngs_modulus_gpa": t["youngs_modulus_gpa"] + 1.0})
    assert not np.array_equal(first.candidates[0].latent, other.candidates[0].latent)


def test_cli_max_quantile_below_quantile_is_refused(cli):
    res = cli("--target", "youngs_modulus_gpa=150", "--quantile", "0.999",
              "--max-quantile", "0.99")
    assert res.exit_code == 1
    assert "--max-quantile" in res.output and "0.999" in res.output
    assert "Traceback" not in res.output


def test_search_space_whitens_the_training_latents_and_carries_gradients():
    """``SearchSpace.fit``: the training latents come out with mean 0 and identity covariance,
    the map back is exact, and a wrapped surrogate's gradient in search coordinates matches
    finite differences (chain rule through the whitening)."""
    from matrep.design.search import SearchSpace

    rng = np.random.default_rng(3)
    A = np.array([[3.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, -1.0, 2.0]])
    Z = rng.normal(size=(400, 3)) @ A.T + np.array([1.0, -2.0, 0.5])
    sp = SearchSpace.fit(Z)
    U = sp.to_search(Z)
    np.testing.assert_allclose(U.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(np.cov(U.T), np.eye(3), atol=1e-4)
    np.testing.assert_allclose(sp.to_latent(U), Z, atol=1e-9)
    prior = SearchSpace.prior(3)
    np.testing.assert_allclose(prior.to_search(Z), Z)
    gp = LatentGP(seed=0).fit(Z, np.sin(Z[:, 0] / 3) + 0.2 * Z[:, 1] * Z[:, 2])
    w = sp.wrap(CorrectedSurrogate(gp))
    u = np.array([3.5, -3.0, 3.2])        # off the data, where the variance varies
    m, v, gm, gv = w.predict_grad(u)
    assert np.isclose(m, w.predict(u[None])[0])
    assert np.abs(gv).max() > 1e-4
    eps = 1e-3   # the prediction far off the data is a difference of large terms
    for i in range(3):
        e = np.eye(3)[i] * eps
        mp, vp, _, _ = w.predict_grad(u + e)
        mm, vm, _, _ = w.predict_grad(u - e)
        assert np.isclose(gm[i], (mp - mm) / (2 * eps), rtol=1e-4, atol=1e-7)
        assert np.isclose(gv[i], (vp - vm) / (2 * eps), rtol=1e-3, atol=1e-7)
    with pytest.raises(ValueError, match="more latents"):
        SearchSpace.fit(Z[:3])


def test_design_region_data_reaches_the_training_latents_region(designer):
    """The default search ball is the training latents' own ellipsoid: its search
    coordinates are whitened training latents; ``region="prior"`` searches N(0, I)'s ball."""
    from dataclasses import replace

    from matrep.design.inverse import Designer

    U = designer.space.to_search(designer.data.latents[:, designer.active])
    np.testing.assert_allclose(np.cov(U.T), np.eye(U.shape[1]), atol=1e-4)
    s = replace(designer.settings, region="prior")
    d = Designer(designer.model, designer.data, ["youngs_modulus_gpa"], settings=s)
    np.testing.assert_allclose(d.space.to_search(designer.data.latents[:, d.active]),
                               designer.data.latents[:, d.active], atol=1e-6)
    with pytest.raises(DesignError, match="--region"):
        Designer(designer.model, designer.data, ["youngs_modulus_gpa"],
                 settings=replace(s, region="posterior"))
    # too few training patches for the data's Gaussian: one line that says what to do
    import copy

    few = copy.copy(designer.data)
    few.latents = designer.data.latents[:2]
    with pytest.raises(DesignError, match="--region data: .*more latents .*--region prior"):
        Designer(designer.model, few, ["youngs_modulus_gpa"],
                 settings=replace(s, region="data"))


class _MeanStyle(StyleDistance):
    """A style distance for tests: (50 x the difference of mean grey levels)² / 4."""

    def grams(self, patches):
        m = 50.0 * np.asarray(patches, dtype=np.float64).reshape(len(patches), -1).mean(1)
        return [m[:, None, None]]


def test_novelty_screen_prefers_proposals_that_look_new(designer):
    """When checked candidates on target are too few apart, proposals are screened by their
    decoded images before any solver call: eligible ones apart from the distinct set found so
    far (and from each other) come first, then the best by score."""
    from matrep.design.inverse import Candidate, Designer

    d = Designer.__new__(Designer)
    d.__dict__.update(designer.__dict__)
    d.style, d.reference_distance = _MeanStyle(), 1.0
    targets = {"youngs_modulus_gpa": 100.0}
    mk = lambda z0, v: Candidate(latent=d.full(np.array([[z0, 0.0]]))[0].astype(np.float32),  # noqa: E731
                                 predicted={}, image=d.model.decode([[z0, 0, 0, 0]])[0],
                                 physics=ph.PhysicsResult(values={"youngs_modulus_gpa": v},
                                                          residual=0.0, converged=True,
                                                          iterations=1, fraction=0.1))
    # two on target that look alike (z0 0 and 0.05), one on target that looks different
    same = [mk(0.0, 100.5), mk(0.05, 100.2)]
    assert len(d._distinct_so_far(same, targets, 2)) == 1
    assert d._distinct_so_far(same + [mk(4.0, 99.9)], targets, 2) is None  # two apart already
    assert d._distinct_so_far([mk(4.0, 150.0)], targets, 2) is None        # none on target yet
    # proposals: two near the one found (best scores), one far from it (worse score)
    U = d.space.to_search(np.array([[0.02, 0.0], [0.01, 0.0], [-4.0, 0.0]]))
    scores = np.array([0.1, 0.2, 1.0])
    apart = d._distinct_so_far(same, targets, 2)
    picked, n_novel, screened = d._screen_novel(U, scores, np.ones(3, bool), 2, apart)
    assert n_novel == 1
    np.testing.assert_allclose(picked, U[[2, 0]])
    # the screen's images and Gram matrices go to the check: nothing is decoded twice
    assert len(screened) == 2
    Z = np.stack([s[0] for s in screened])
    np.testing.assert_allclose(Z, d.full(d.space.to_latent(picked)))
    calls = []
    d.model = type("Counting", (), {"decode": lambda self, Z, seeds=None: calls.append(len(Z))
                                    or designer.model.decode(Z)})()
    new = d._check(Z, d.predict(Z), 0, "novel", screened)
    assert calls == []
    np.testing.assert_array_equal(new[0].image, screened[0][1])
    assert new[0].grams is screened[0][2]
    new = d._check(Z, d.predict(Z), 0, "search")        # without: decoded, same images
    assert calls == [2]
    np.testing.assert_allclose(new[0].image, screened[0][1])
    d.model = designer.model
    # a new look the surrogate expects off target is not taken for its looks
    picked, n_novel, _ = d._screen_novel(U, scores, np.array([True, True, False]), 2, apart)
    assert n_novel == 0
    np.testing.assert_allclose(picked, U[[0, 1]])
    # eligibility: the surrogate mean within NOVEL_MAX_OFFSET tolerances of the target
    sur = {"youngs_modulus_gpa": d.space.wrap(d.surrogates["youngs_modulus_gpa"])}
    t = float(np.median(d.data.values["youngs_modulus_gpa"]))
    off = d._offsets(sur, {"youngs_modulus_gpa": t}, {"youngs_modulus_gpa": 0.02 * t}, U)
    m = sur["youngs_modulus_gpa"].predict(U)
    np.testing.assert_allclose(off, np.abs(m - t) / (0.02 * t))
