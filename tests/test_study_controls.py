"""The study's baseline row, the texture-VAE controls, the verdict and mixed-class groups.

Fast: the tiny labelled images of ``study_utils``, 32x32 patches, a texture-VAE with
random VGG19 weights and a tiny decoder.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from matrep import registry
from matrep.report import format_summary, write_report
from matrep.study import (MethodSpec, Study, baseline_predict, mixed_class_groups,
                          prepare_data, regression_metrics, texturevae_controls, verdict)

from study_utils import train_tiny_vae

FAST = {"patch": 32, "stride": 32}
STYLE = ["conv1_1", "pool1", "pool2", "pool3", "pool4"]


def _data(dataset, target="modulus", **kw):
    return prepare_data(dataset / "images", dataset / "labels.csv", target, **FAST, **kw)


@pytest.fixture
def one_thread(one_torch_thread):
    """One torch thread (the shared conftest fixture)."""


# ---------------------------------------------------------------------------------------
# the baseline row
# ---------------------------------------------------------------------------------------
def test_baseline_predict_mean_and_majority():
    np.testing.assert_allclose(baseline_predict("regression", [1.0, 2.0, 6.0], 3), [3.0] * 3)
    assert baseline_predict("classification", ["b", "a", "b"], 2).tolist() == ["b", "b"]
    assert baseline_predict("classification", ["b", "a"], 1).tolist() == ["a"]  # tie: sorted


def test_baseline_row_once_per_split_from_training_targets(plugins, dataset, tmp_path):
    data = _data(dataset)
    out = tmp_path / "out"
    res = Study(data, [MethodSpec("histogram", {"bins": 6}), MethodSpec("spy")], out, seeds=2,
                regressors=["linear", "sklearn.linear_model.Ridge"]).run()
    base = [r for r in res.records if r["method"] == "baseline"]
    assert len(base) == len(res.splits) == 2 + 6  # once per split, not per encoder or model
    moved = 0
    for split, rec in zip(res.splits, base):
        assert rec["split"] == split.id and rec["test"] == split.test.tolist()
        want = data.y[split.train].mean()
        np.testing.assert_allclose(rec["pred"], want)  # fitted on the training part only
        moved += not np.isclose(want, data.y.mean())
        assert rec["metrics"] == pytest.approx(regression_metrics(data.y[split.test], rec["pred"]),
                                               nan_ok=True)
    assert moved >= 6  # leaving a micrograph out moves the mean: it is not the overall mean
    rows = [r for r in res.summary if r["role"] == "baseline"]
    assert [(r["method"], r["regressor"], r["kind"]) for r in rows] == \
        [("baseline", "mean", "random"), ("baseline", "mean", "grouped")]
    grouped = rows[1]
    assert grouped["r2"] < 0  # the mean of the others predicts an unseen micrograph badly
    write_report(res)
    md = (out / "report.md").read_text()
    assert md.count("| baseline | training mean |") == 2  # Table 2 and Table 3, one row each
    assert "**baseline** (training mean): predicts the mean of the training part" in md
    rep = json.loads((out / "report.json").read_text())
    assert rep["baseline"]["regressor"] == "mean"
    assert sum(r["method"] == "baseline" for r in rep["summary"]) == 2
    pred = pd.read_csv(out / "predictions.csv")
    b = pred[pred.method == "baseline"]
    assert len(b) == sum(len(r["test"]) for r in base)
    assert set(b["regressor"]) == {"training mean"}
    assert "baseline" in format_summary(res)


def test_baseline_majority_class_for_classification(plugins, dataset, tmp_path):
    data = _data(dataset, target="phase")
    res = Study(data, [MethodSpec("histogram", {"bins": 6})], tmp_path / "out", seeds=2,
                regressors=["linear"]).run()
    for split, rec in zip(res.splits, [r for r in res.records if r["method"] == "baseline"]):
        vals, counts = np.unique(data.y[split.train], return_counts=True)
        assert set(rec["pred"]) == {vals[counts.argmax()]}
    assert {r["regressor"] for r in res.summary if r["role"] == "baseline"} == {"majority"}


# ---------------------------------------------------------------------------------------
# mixed-class groups
# ---------------------------------------------------------------------------------------
def test_mixed_class_groups_are_named_and_vote_per_micrograph(plugins, dataset, tmp_path):
    # the fixture's samples pair an even ("fine") and an odd ("coarse") micrograph
    msgs = []
    data = _data(dataset, target="phase", group="sample", warn=msgs.append)
    assert data.mixed_groups == {"s0": {"coarse": ["m1"], "fine": ["m0"]},
                                 "s1": {"coarse": ["m3"], "fine": ["m2"]},
                                 "s2": {"coarse": ["m5"], "fine": ["m4"]}}
    assert any("different classes of 'phase'" in m and "s0 (coarse: m1; fine: m0)" in m
               for m in msgs)
    out = tmp_path / "out"
    res = Study(data, [MethodSpec("histogram", {"bins": 6})], out, split="grouped",
                regressors=["linear"]).run()
    row = next(r for r in res.summary if r["method"] == "histogram")
    units = {g["group"]: g for g in row["groups"]}
    assert sorted(units) == [f"s{i // 2} / m{i}" for i in range(6)]
    ps = data.patchset
    rec = [r for r in res.records if r["method"] == "histogram"]
    pred = dict(zip(np.concatenate([r["test"] for r in rec]).tolist(),
                    np.concatenate([r["pred"] for r in rec]).tolist()))
    right = 0
    for i in range(6):
        u = units[f"s{i // 2} / m{i}"]
        assert u["mixed_group"] == f"s{i // 2}"
        assert u["true"] == ("coarse" if i % 2 else "fine")  # the micrograph's own class
        idx = np.flatnonzero(ps.micrograph_ids == f"m{i}")
        vals, counts = np.unique([pred[j] for j in idx], return_counts=True)
        assert u["majority"] == vals[counts.argmax()]  # this micrograph's patches only
        right += u["majority"] == u["true"]
    assert row["group_vote_accuracy"] == pytest.approx(right / 6)
    assert row["mixed_groups"] == ["s0", "s1", "s2"]
    files = write_report(res)
    md = files["markdown"].read_text()
    assert "3 group(s) hold micrographs of different classes" in md
    assert "| s0 / m0 |" in md
    rep = json.loads(files["json"].read_text())
    assert rep["mixed_groups"]["s1"] == {"coarse": ["m3"], "fine": ["m2"]}


def test_groups_of_one_class_keep_one_vote(plugins, dataset):
    assert mixed_class_groups(["a", "a", "b"], ["s0", "s0", "s1"], ["m0", "m1", "m2"]) == {}
    data = _data(dataset, target="phase")  # grouped by micrograph: never mixed
    assert data.mixed_groups == {}
    data = _data(dataset, target="modulus", group="sample")  # regression: not a class
    assert data.mixed_groups == {}


# ---------------------------------------------------------------------------------------
# controls of a given texture-VAE
# ---------------------------------------------------------------------------------------
def test_texturevae_controls_follow_the_models_configuration():
    enc = registry.get_encoder("texturevae", pooling="mean", encoder_taps=("pool1", "pool2"),
                               seed=7, weights="random", epochs=5, downsample=2)
    specs, notes = texturevae_controls(MethodSpec("texturevae", model="runs/x"), enc)
    assert not notes
    untrained, vgg = specs
    assert untrained.key == "texturevae (untrained head)" and untrained.fit_all
    assert untrained.params["epochs"] == 0 and untrained.params["seed"] == 7
    assert untrained.model is None and untrained.control_of == "texturevae"
    assert vgg.name == "vgg19" and vgg.key == "vgg19 (pool1+pool2 mean)"
    assert vgg.params == {"layer": ["pool1", "pool2"], "pooling": "mean", "weights": "random",
                          "downsample": 2}  # the model reads its patches at half resolution
    default = registry.get_encoder("texturevae", weights="random")
    assert texturevae_controls(MethodSpec("texturevae", model="m"), default)[0][1].key == \
        "vgg19 (style mean/std)"


@pytest.mark.parametrize("downsample", [1, 2])
def test_vgg19_meanstd_is_the_texturevae_head_input(one_thread, downsample):
    """The vgg19 control's features are exactly the statistics the texture-VAE head reads."""
    import torch

    from matrep.backbone import VGG19Backbone
    from matrep.plugins.texturevae.model import downsample_patches, pool_features
    from matrep.testing import make_texture_patches

    X = make_texture_patches(5, 64, 0)
    got = registry.get_encoder("vgg19", layer=STYLE, pooling="meanstd", weights="random",
                               device="cpu", downsample=downsample).fit(X).transform(X)
    bb = VGG19Backbone(weights="random", taps=tuple(STYLE), device=torch.device("cpu"))
    with torch.inference_mode():
        x = downsample_patches(torch.from_numpy(X)[:, None], downsample)
        want = pool_features(bb(bb.preprocess(x)), STYLE, "meanstd")
    assert got.shape == (5, 2 * (64 + 64 + 128 + 256 + 512))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


def test_untrained_control_is_the_trained_models_starting_point(plugins, dataset, tmp_path,
                                                                 one_thread):
    """lr=1e-12: a step moves no float32 weight, so the trained model is its own start and
    must give the untrained control's features."""
    from matrep.store import FeatureStore

    data = _data(dataset)
    model = train_tiny_vae(data.patchset, tmp_path / "vae-lr0", lr=1e-12)
    out = tmp_path / "out"
    res = Study(data, [MethodSpec("texturevae", model=str(model))], out, split="grouped",
                folds=2, regressors=["linear"]).run()
    feats = {k: m["features"][0] for k, m in res.methods.items()}
    trained, _ = FeatureStore(out / feats["texturevae"]["store"]).read(feats["texturevae"]["key"])
    c = feats["texturevae (untrained head)"]
    untrained, _ = FeatureStore(out / c["store"]).read(c["key"])
    np.testing.assert_allclose(untrained, trained, rtol=1e-5, atol=1e-6)


def test_trained_texturevae_gets_two_controls_and_a_verdict(plugins, dataset, tmp_path,
                                                            one_thread):
    from matrep.store import FeatureStore

    data = _data(dataset)
    model = train_tiny_vae(data.patchset, tmp_path / "vae")
    out = tmp_path / "out"
    res = Study(data, [MethodSpec("texturevae", model=str(model))], out, seeds=2, folds=2,
                regressors=["linear"]).run()
    labels = ["texturevae", "texturevae (untrained head)", "vgg19 (style mean/std)"]
    assert list(res.methods) == labels
    assert [res.methods[k]["role"] for k in labels] == ["method", "control", "control"]
    assert res.methods["vgg19 (style mean/std)"]["provenance"]["params"]["pooling"] == "meanstd"
    assert res.methods["texturevae (untrained head)"]["fitting"].startswith("fitted once on all")
    for k in labels + ["baseline"]:  # the same splits for every row
        assert [r["split"] for r in res.records if r["method"] == k] == \
            [s.id for s in res.splits]
    feats = {k: m["features"][0] for k, m in res.methods.items()}
    X = {k: FeatureStore(out / f["store"]).read(f["key"])[0] for k, f in feats.items()}
    assert X["texturevae"].shape == X["texturevae (untrained head)"].shape == (len(data.y), 4)
    assert not np.allclose(X["texturevae"], X["texturevae (untrained head)"])  # training moved it
    assert X["vgg19 (style mean/std)"].shape[1] == 2048
    v = res.verdict
    assert v["metric"] == "r2" and len(v["comparisons"]) == 2  # grouped and random, one model
    for comp in v["comparisons"]:
        assert set(comp["values"]) == set(labels) | {"baseline"}
        row = next(r for r in res.summary if r["method"] == "texturevae"
                   and r["kind"] == comp["kind"])
        assert comp["values"]["texturevae"] == row["r2"]
        assert comp["beats_all"] == all(row["r2"] > comp["values"][k] for k in labels[1:]
                                        + ["baseline"])
    assert "unseen micrographs" in v["text"] and "random 80/20 splits" in v["text"]
    assert "verdict:" in format_summary(res)  # the report's files: test_compare_cli.py
    # without controls: no control rows and no verdict, the baseline stays
    bare = Study(data, [MethodSpec("texturevae", model=str(model))], out, seeds=2, folds=2,
                 regressors=["linear"], controls=False).run()
    assert bare.settings["computed_results"] == 0  # same features, same results: reused
    assert list(bare.methods) == ["texturevae"] and bare.verdict is None
    assert [r["method"] for r in bare.summary] == ["texturevae"] * 2 + ["baseline"] * 2


# ---------------------------------------------------------------------------------------
# the verdict's wording
# ---------------------------------------------------------------------------------------
def _fake(values, stds=None, regs=("svr",)):
    """A result holding summary rows with the given R² per (method, kind)."""
    methods = {"tv": {"role": "method"},
               "tv (untrained head)": {"role": "control", "control_of": "tv"},
               "vgg19 (style mean/std)": {"role": "control", "control_of": "tv"}}
    summary = []
    for (name, kind), r2 in values.items():
        for reg in (("mean",) if name == "baseline" else regs):
            summary.append({"method": name, "regressor": reg, "kind": kind, "r2": r2,
                            "r2_std": (stds or {}).get((name, kind), 0.0)})
    data = SimpleNamespace(task="regression", group_column=None)
    return SimpleNamespace(data=data, methods=methods, regressors=list(regs), summary=summary)


def test_verdict_says_yes_only_when_every_competitor_is_beaten():
    vals = {("tv", "grouped"): 0.704, ("tv (untrained head)", "grouped"): 0.63,
            ("vgg19 (style mean/std)", "grouped"): 0.64, ("baseline", "grouped"): -0.19}
    v = verdict(_fake(vals))
    assert v["text"] == ("On unseen micrographs (held-out patches pooled), the trained tv beats "
                         "both controls and the baseline with every model (R²). With svr: tv "
                         "0.704 vs tv (untrained head) 0.630, vgg19 (style mean/std) 0.640, "
                         "baseline -0.190.")
    vals[("tv (untrained head)", "grouped")] = 0.71
    v = verdict(_fake(vals))
    assert "does not beat both controls and the baseline with any model" in v["text"]
    assert "(tv (untrained head) as good or better)" in v["text"]
    assert v["comparisons"][0]["beats"] == {"tv (untrained head)": False,
                                            "vgg19 (style mean/std)": True, "baseline": True}
    vals[("tv (untrained head)", "grouped")] = 0.704  # a tie is not a win
    assert not verdict(_fake(vals))["comparisons"][0]["beats_all"]


def test_verdict_names_the_models_it_holds_for():
    vals = {("tv", "grouped"): 0.70, ("tv (untrained head)", "grouped"): 0.60,
            ("vgg19 (style mean/std)", "grouped"): 0.65, ("baseline", "grouped"): -0.19}
    res = _fake(vals, regs=("svr", "linear"))
    for row in res.summary:  # linear: the vgg19 control wins
        if row["regressor"] == "linear" and row["method"].startswith("vgg19"):
            row["r2"] = 0.75
    res.data.group_column = "sample_key"
    v = verdict(res)
    assert v["text"].startswith("On unseen sample_key groups (held-out patches pooled), the "
                                "trained tv beats both controls and the baseline with svr but "
                                "not with linear (R²).")
    assert "With linear: tv 0.700 vs tv (untrained head) 0.600, vgg19 (style mean/std) 0.750, " \
           "baseline -0.190 (vgg19 (style mean/std) as good or better)." in v["text"]


def test_verdict_flags_a_random_split_margin_within_the_seeds_spread():
    vals = {("tv", "random"): 0.80, ("tv (untrained head)", "random"): 0.79,
            ("vgg19 (style mean/std)", "random"): 0.70, ("baseline", "random"): -0.03}
    v = verdict(_fake(vals, stds={("tv", "random"): 0.02}))
    assert v["comparisons"][0]["within_std"] == ["tv (untrained head)"]
    assert "(margin over tv (untrained head) within one standard deviation over seeds)" \
        in v["text"]
    assert verdict(_fake(vals))["comparisons"][0]["within_std"] == []
    none = _fake(vals)
    none.methods = {"tv": {"role": "method"}}
    assert verdict(none) is None


def test_study_docstring_examples():
    import matrep.study as study
    from matrep.testing import package_doctests

    attempted, failed = package_doctests(study)
    assert attempted >= 10 and failed == 0


def test_texturevae_without_a_model_is_fitted_inside_each_split(plugins, dataset, tmp_path,
                                                                 one_thread):
    """A fresh per-split fit must not ask to resume a checkpoint that does not exist."""
    from study_utils import TINY_VAE

    data = _data(dataset)
    res = Study(data, [MethodSpec("texturevae", dict(TINY_VAE))], tmp_path / "out",
                split="grouped", folds=2, regressors=["linear"]).run()
    assert res.methods["texturevae"]["fitting"] == "fitted inside each split on its training patches"
    assert list(res.methods) == ["texturevae"] and res.verdict is None  # no model: no controls
    assert {f["split"] for f in res.methods["texturevae"]["features"]} == {"fold-0", "fold-1"}
