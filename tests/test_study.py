"""The structure-property study: splits, no leakage, classification, resume, bad input, report."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from matrep import registry
from matrep.errors import BadInputError, LabelsError
from matrep.report import format_summary, write_report
from matrep.study import (MethodSpec, Study, detect_task, group_splits, make_model,
                          parse_model_spec, prepare_data, random_splits, regression_metrics)


FAST = {"patch": 32, "stride": 32}


def _data(dataset, target="modulus", **kw):
    return prepare_data(dataset / "images", dataset / "labels.csv", target, **FAST, **kw)


def _spy():
    return sys.modules["spy_plugin"]


# ---------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------
def test_random_splits_partition_and_are_reproducible():
    a = random_splits(50, seeds=3, test_size=0.2)
    b = random_splits(50, seeds=3, test_size=0.2)
    assert [s.id for s in a] == ["random-s0", "random-s1", "random-s2"]
    for s, t in zip(a, b):
        assert len(s.test) == 10 and len(s.train) == 40
        assert not set(s.train) & set(s.test)
        assert sorted(np.concatenate([s.train, s.test])) == list(range(50))
        np.testing.assert_array_equal(s.test, t.test)
    assert not np.array_equal(a[0].test, a[1].test)


def test_leave_one_group_out_holds_out_whole_groups():
    groups = np.repeat(["a", "b", "c", "d"], [3, 1, 4, 2])
    splits = group_splits(groups)
    assert [s.held_out for s in splits] == [["a"], ["b"], ["c"], ["d"]]
    for s in splits:
        assert set(groups[s.test]) == set(s.held_out)
        assert not set(groups[s.train]) & set(s.held_out)
        assert len(s.train) + len(s.test) == len(groups)


def test_group_kfold_and_max_groups():
    groups = np.repeat([f"g{i}" for i in range(10)], 3)
    folds = group_splits(groups, folds=3)
    assert len(folds) == 3
    seen = np.concatenate([s.test for s in folds])
    assert sorted(seen) == list(range(30))  # every patch predicted exactly once
    for s in folds:
        assert not set(groups[s.train]) & set(groups[s.test])
    some = group_splits(groups, max_groups=4, seed=1)
    assert len(some) == 4 and len({s.held_out[0] for s in some}) == 4
    assert [s.held_out for s in some] == [s.held_out for s in group_splits(groups, max_groups=4, seed=1)]
    with pytest.raises(BadInputError, match="--folds"):
        group_splits(groups, folds=11)
    with pytest.raises(LabelsError, match="at least 2 groups"):
        group_splits(np.array(["x", "x"]))


def test_detect_task_and_model_specs():
    assert detect_task(np.array([1.0, 2.0])) == "regression"
    assert detect_task(pd.Series(["ferrite", "pearlite"])) == "classification"
    assert detect_task(pd.Series(["1", "2.5"], dtype=object)) == "regression"
    assert detect_task([1, 2], "classification") == "classification"
    assert parse_model_spec("SVR-RBF") == ("svr", {})
    assert parse_model_spec("sklearn.ensemble.RandomForestRegressor:n_estimators=5,max_depth=3") \
        == ("sklearn.ensemble.RandomForestRegressor", {"n_estimators": 5, "max_depth": 3})
    with pytest.raises(BadInputError, match="unknown regressor 'lasso'"):
        parse_model_spec("lasso")
    with pytest.raises(BadInputError, match="is a classifier"):
        make_model("sklearn.ensemble.RandomForestClassifier", "regression", n_features=3)
    with pytest.raises(BadInputError, match="cannot import"):
        make_model("sklearn.nothing.Here", "regression", n_features=3)
    clf = make_model("linear", "classification", n_features=3)
    assert type(clf.named_steps["model"]).__name__ == "LogisticRegression"


def test_regression_metrics_values():
    m = regression_metrics([100.0, 200.0], [110.0, 180.0])
    assert m["mae"] == pytest.approx(15.0)
    assert m["mape"] == pytest.approx(10.0)
    assert m["r2"] == pytest.approx(1 - (100 + 400) / 5000)


# ---------------------------------------------------------------------------------------
# no leakage
# ---------------------------------------------------------------------------------------
def test_trainable_encoder_is_fitted_on_training_patches_only(plugins, dataset, tmp_path):
    from spy_plugin import fingerprint

    data = _data(dataset)
    _spy().FITTED.clear()
    study = Study(data, [MethodSpec("spy")], tmp_path / "out", seeds=2, regressors=["linear"])
    splits = study.make_splits()
    study.run()
    fitted = _spy().FITTED
    assert len(fitted) == len(splits) == 2 + 6  # once per split, never on all patches
    fp = np.array([fingerprint(p) for p in data.patchset.patches])
    for split, seen in zip(splits, fitted):
        assert set(seen) == set(fp[split.train]), split.id
        assert not set(seen) & set(fp[split.test]), f"{split.id}: test patches were fitted"
    # per-split features are cached with the split id in the path
    assert (tmp_path / "out" / "features" / "spy" / "group-m3.h5").exists()


def test_scalers_and_regressors_never_see_test_rows(plugins, dataset, tmp_path, monkeypatch):
    from sklearn.preprocessing import StandardScaler

    from matrep.store import FeatureStore

    data = _data(dataset)
    calls, current = [], {}
    orig_fit = StandardScaler.fit

    def spy_fit(self, X, y=None, sample_weight=None):
        calls.append((current["split"], np.array(X, dtype=float, copy=True)))
        return orig_fit(self, X, y, sample_weight)

    orig_run = Study._run_one

    def run_one(self, spec, split, reg, X, key):
        current["split"] = split
        return orig_run(self, spec, split, reg, X, key)

    monkeypatch.setattr(StandardScaler, "fit", spy_fit)
    monkeypatch.setattr(Study, "_run_one", run_one)
    out = tmp_path / "out"
    Study(data, [MethodSpec("histogram", {"bins": 6})], out, seeds=2).run()
    X, _ = FeatureStore(out / "features.h5").read("histogram")
    assert calls
    n_target_scalers = 0
    for split, A in calls:
        if A.shape[1] == X.shape[1]:  # feature scaler (outer fit and inner-CV fits)
            test_rows = {tuple(np.round(r, 5)) for r in X[split.test]}
            fitted_rows = {tuple(np.round(r, 5)) for r in A}
            assert not test_rows & fitted_rows, f"{split.id}: a scaler saw test rows"
            assert len(A) <= len(split.train)
        else:  # the SVR's target scaler sees y of training rows only
            n_target_scalers += 1
            if split.kind == "grouped":
                held_y = float(data.y[split.test][0])
                assert not np.isclose(A.ravel(), held_y).any(), f"{split.id}: y of test group"
    assert n_target_scalers > 0


# ---------------------------------------------------------------------------------------
# classification, dotted-path regressors, given models
# ---------------------------------------------------------------------------------------
def test_non_numeric_target_switches_to_classification(plugins, dataset, tmp_path):
    data = _data(dataset, target="phase")
    assert data.task == "classification" and data.classes == ["coarse", "fine"]
    res = Study(data, [MethodSpec("histogram", {"bins": 6})], tmp_path / "out", seeds=2,
                folds=3).run()
    kinds = {(r["regressor"], r["kind"]) for r in res.summary if r["role"] == "method"}
    assert kinds == {("linear", "random"), ("svr", "random"), ("linear", "grouped"),
                     ("svr", "grouped")}
    base = [(r["method"], r["regressor"], r["kind"]) for r in res.summary if r["role"] == "baseline"]
    assert base == [("baseline", "majority", "random"), ("baseline", "majority", "grouped")]
    for row in res.summary:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["f1_macro"] <= 1
        assert "r2" not in row
    # bright fraction separates the classes at random splits
    assert max(r["accuracy"] for r in res.summary if r["kind"] == "random") > 0.8
    files = write_report(res)
    assert "macro-F1" in files["markdown"].read_text()
    assert "macro-F1" in format_summary(res)


def test_dotted_path_regressor_and_given_model(plugins, dataset, tmp_path):
    data = _data(dataset)
    model_dir = tmp_path / "spy-model"
    spy = registry.get_encoder("spy").fit(data.patchset.patches[:5])
    spy.save(model_dir)
    _spy().FITTED.clear()
    res = Study(data, [MethodSpec("spy", model=str(model_dir))], tmp_path / "out",
                regressors=["sklearn.linear_model.Ridge:alpha=0.5"], split="grouped").run()
    assert _spy().FITTED == []  # a given model is used as is, never refitted
    assert res.methods["spy"]["fitting"].startswith("given fitted model")
    assert [r["regressor"] for r in res.summary] == ["sklearn.linear_model.Ridge:alpha=0.5", "mean"]
    assert len(res.records) == 6 + 6  # the spy's, then the baseline's
    md = write_report(res)["markdown"].read_text()
    assert "Ridge(alpha=0.5)" in md and "trained outside the study" in md
    # the same model folder, retrained: nothing stale is reused
    again = Study(data, [MethodSpec("spy", model=str(model_dir))], tmp_path / "out",
                  regressors=["sklearn.linear_model.Ridge:alpha=0.5"], split="grouped").run()
    assert again.settings["resumed_results"] == 6
    registry.get_encoder("spy").fit(data.patchset.patches[5:9]).save(model_dir)
    retrained = Study(data, [MethodSpec("spy", model=str(model_dir))], tmp_path / "out",
                      regressors=["sklearn.linear_model.Ridge:alpha=0.5"], split="grouped").run()
    assert retrained.settings["resumed_results"] == 0


# ---------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------
def test_interrupted_study_resumes_from_finished_results(plugins, dataset, tmp_path, monkeypatch):
    import matrep.study.runner as study_mod  # where Study looks fit_predict up

    data = _data(dataset)
    out = tmp_path / "out"
    methods = [MethodSpec("histogram", {"bins": 6}), MethodSpec("spy")]
    calls = {"n": 0, "fail_at": 9}
    orig = study_mod.fit_predict

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(study_mod, "fit_predict", flaky)
    kw = {"seeds": 2, "regressors": ["linear", "sklearn.linear_model.Ridge"]}
    with pytest.raises(KeyboardInterrupt):
        Study(data, methods, out, **kw).run()
    finished = list((out / ".study" / "results").glob("*.json"))
    assert len(finished) == 8
    _spy().FITTED.clear()
    calls.update(n=100, fail_at=None)
    res = Study(data, methods, out, **kw).run()
    total = 2 * (2 + 6) * 2
    assert calls["n"] - 100 == total - 8  # only the missing results are computed
    assert res.settings["resumed_results"] == 8
    assert len(res.records) == total + (2 + 6)  # and the baseline, once per split
    # the spy's per-split features of finished splits came from the cache
    assert len(_spy().FITTED) == 8
    again = Study(data, methods, out, **kw).run()
    assert calls["n"] - 100 == total - 8 and again.settings["resumed_results"] == total
    fresh = Study(data, methods, tmp_path / "fresh", **kw).run()
    for a, b in zip(res.summary, fresh.summary):
        assert a["mae"] == pytest.approx(b["mae"])
    calls["n"] = 0
    Study(data, methods, out, resume=False, **kw).run()
    assert calls["n"] == total  # --restart recomputes everything


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("target, message", [
    ("nope", "no target column 'nope'"),
    ("empty", "target column 'empty' is empty"),
    ("constant", "target column 'constant' is constant"),
])
def test_bad_target_column_names_it(dataset, target, message):
    with pytest.raises(LabelsError, match=message):
        _data(dataset, target=target)


def test_missing_group_column_and_labels_matching_no_image(dataset, tmp_path):
    with pytest.raises(LabelsError, match="no group column 'batch'"):
        _data(dataset, group="batch")
    other = tmp_path / "other.csv"
    other.write_text("file,modulus\nx1.png,1\nx2.png,2\n")
    with pytest.raises(LabelsError, match="no label row matches any image"):
        prepare_data(dataset / "images", other, "modulus", **FAST)


def test_partial_labels_and_single_member_groups_warn_by_name(dataset, tmp_path):
    lab = pd.read_csv(dataset / "labels.csv")
    lab.loc[1, "modulus"] = np.nan
    lab.loc[len(lab)] = ["images/ghost.png", 1.0, "fine", "s9", 7, np.nan]
    lab.to_csv(tmp_path / "partial.csv", index=False)
    msgs = []
    data = prepare_data(dataset / "images", tmp_path / "partial.csv", "modulus", **FAST,
                        warn=msgs.append)
    assert len(data.patchset.files) == 5
    text = "\n".join(msgs)
    assert "ghost.png" in text and "match no image" in text
    assert "m1.png" in text and "no value in target column 'modulus'" in text
    # a group with one member: one patch per image
    msgs.clear()
    data = prepare_data(dataset / "images", dataset / "labels.csv", "modulus", patch=32,
                        stride=32, max_patches_per_image=1, group="sample", warn=msgs.append)
    assert not msgs  # two images per sample -> two patches per group
    data = prepare_data(dataset / "images", dataset / "labels.csv", "modulus", patch=32,
                        stride=32, max_patches_per_image=1, warn=msgs.append)
    assert any("group(s) with one member" in m and "'micrograph'" in m for m in msgs)
    assert data.notes == msgs


def test_images_without_a_group_value_are_left_out_by_name(dataset, tmp_path):
    lab = pd.read_csv(dataset / "labels.csv")
    lab.loc[4, "sample"] = np.nan
    lab.to_csv(tmp_path / "nogroup.csv", index=False)
    msgs = []
    data = prepare_data(dataset / "images", tmp_path / "nogroup.csv", "modulus", group="sample",
                        **FAST, warn=msgs.append)
    assert "m4" not in set(data.patchset.micrograph_ids)
    assert any("m4.png" in m and "group column 'sample'" in m for m in msgs)


def test_group_column_groups_micrographs(dataset):
    data = _data(dataset, group="sample")
    assert sorted(set(data.groups)) == ["s0", "s1", "s2"]
    splits = group_splits(data.groups)
    for s in splits:
        held = set(data.patchset.micrograph_ids[s.test])
        assert len(held) == 2 and not held & set(data.patchset.micrograph_ids[s.train])


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------
def test_report_files(plugins, dataset, tmp_path):
    data = _data(dataset, group="sample")
    out = tmp_path / "out"
    res = Study(data, [MethodSpec("histogram", {"bins": 6})], out, seeds=2).run()
    files = write_report(res)
    md = (out / "report.md").read_text()
    for text in ("Table 2", "Table 3", "R²", "MAPE (%)", "MAE", "matrep-example-plugin 0.1.0",
                 "`bins=6`", "sample", "Per held-out group", "figures/groups_histogram_svr.png"):
        assert text in md, text
    rep = json.loads((out / "report.json").read_text())
    assert rep["data"]["groups"] == 3 and rep["data"]["task"] == "regression"
    grouped = [r for r in rep["summary"] if r["kind"] == "grouped"]
    assert {g["group"] for g in grouped[0]["groups"]} == {"s0", "s1", "s2"}
    assert all("best_params" in s for s in rep["splits"] if s["regressor"] == "svr")
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == sum(len(r["test"]) for r in res.records)
    assert set(pred["split_kind"]) == {"random", "grouped"}
    g = pred[pred.split_kind == "grouped"]
    assert (g.groupby(["regressor", "patch"]).size() == 1).all()  # each patch predicted once
    for f in files["figures"]:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(files["figures"]) == 3
    assert "grouped splits: unseen sample" in format_summary(res)


# ---------------------------------------------------------------------------------------
# real micrographs (slow)
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_uhcs_anneal_temperature_grouped_by_sample(uhcs_dir, tmp_path):
    """A small real study: two-point statistics (PCA fitted per split) on UHCS micrographs."""
    data = prepare_data(uhcs_dir / "images", uhcs_dir / "metadata.csv", "anneal_temperature_C",
                        group="sample_key", crop_bottom=38, patch=128, stride=128, max_images=16,
                        warn=lambda m: None)
    assert data.task == "regression"
    assert data.patchset.patches.shape[1:] == (128, 128)
    assert data.patchset.coords[:, 0].max() + 128 <= 484  # the data bar is never in a patch
    res = Study(data, [MethodSpec("twopoint", {"n_components": 8})], tmp_path / "out", seeds=2,
                folds=3).run()
    files = write_report(res)
    grouped = [r for r in res.summary if r["kind"] == "grouped"]
    # twopoint with the two regressors, and the predict-the-mean baseline once
    assert sorted((r["method"], r["role"]) for r in grouped) == [
        ("baseline", "baseline"), ("twopoint", "method"), ("twopoint", "method")]
    assert all(np.isfinite(r["mape"]) for r in grouped)
    for s in res.splits:
        if s.kind == "grouped":
            assert not set(data.groups[s.train]) & set(data.groups[s.test])
    assert "Table 3" in files["markdown"].read_text()
