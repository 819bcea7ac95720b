"""`matrep compare` end to end with a third-party encoder, and its error messages."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from matrep import registry
from matrep.cli import main

from study_utils import train_tiny_vae


def _args(dataset, out, *extra):
    """compare's arguments; the leading names of ``extra`` are the --method values."""
    extra = list(extra)
    methods = []
    while extra and not extra[0].startswith("-"):
        methods += ["--method", extra.pop(0)]
    return ["compare", *methods, *extra, "--images", str(dataset / "images"), "--labels",
            str(dataset / "labels.csv"), "--patch", "32", "--stride", "32", "--out", str(out),
            "--quiet"]


def test_compare_runs_a_plugin_encoder_and_writes_the_report(plugins, dataset, tmp_path):
    out = tmp_path / "report"
    args = _args(dataset, out, "histogram", "spy", "--target", "modulus", "--group", "sample",
                 "--seeds", "2", "--param", "histogram.bins=6", "--regressor", "linear",
                 "--regressor", "sklearn.linear_model.Ridge:alpha=1.0")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "random 80/20 splits" in res.output and "grouped splits: unseen sample" in res.output
    assert "histogram  linear" in res.output and "Ridge(alpha=1.0)" in res.output
    assert f"report: {out / 'report.md'}" in res.output
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["methods"]) == {"histogram", "spy"}
    assert rep["methods"]["histogram"]["provenance"]["params"] == {"bins": 6}
    assert rep["methods"]["spy"]["fitting"] == "fitted inside each split on its training patches"
    assert len(rep["summary"]) == 2 * 2 * 2 + 2  # and the baseline, once per split kind
    assert [r["method"] for r in rep["summary"]].count("baseline") == 2
    # a second run resumes everything
    res2 = CliRunner().invoke(main, args)
    assert res2.exit_code == 0, res2.output
    rep2 = json.loads((out / "report.json").read_text())
    assert rep2["settings"]["resumed_results"] == 20 and rep2["settings"]["computed_results"] == 0
    assert rep2["summary"] == rep["summary"]


def test_compare_given_texturevae_gets_controls_and_a_verdict(plugins, dataset, tmp_path):
    torch = pytest.importorskip("torch")
    from matrep.study import prepare_data

    data = prepare_data(dataset / "images", dataset / "labels.csv", "modulus", patch=32,
                        stride=32)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_tiny_vae(data.patchset, tmp_path / "vae")
        out = tmp_path / "r"
        base = _args(dataset, out, "texturevae", "--target", "modulus", "--model",
                     f"texturevae={model}", "--split", "grouped", "--folds", "2",
                     "--regressor", "linear")
        res = CliRunner().invoke(main, base)
        assert res.exit_code == 0, res.output
        assert "texturevae (untrained head)  linear" in res.output
        assert "vgg19 (style mean/std)" in res.output and "baseline" in res.output
        assert "verdict: On unseen micrographs" in res.output
        rep = json.loads((out / "report.json").read_text())
        assert rep["verdict"]["comparisons"][0]["regressor"] == "linear"
        assert rep["methods"]["vgg19 (style mean/std)"]["control_of"] == "texturevae"
        md = (out / "report.md").read_text()
        assert "## Verdict" in md and rep["verdict"]["text"] in md
        assert md.index("## Verdict") < md.index("## Data")  # read first
        for row in ("| texturevae | linear |", "| texturevae (untrained head) | linear |",
                    "| vgg19 (style mean/std) | linear |", "| baseline | training mean |"):
            assert row in md, row
        assert "Control for texturevae: its configuration (seed 0) with epochs=0" in md
    finally:
        torch.set_num_threads(n)


def test_compare_classification_target(plugins, dataset, tmp_path):
    res = CliRunner().invoke(main, _args(dataset, tmp_path / "r", "histogram", "--target",
                                         "phase", "--split", "grouped", "--folds", "3"))
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output and "macro-F1" in res.output
    assert "random 80/20" not in res.output


@pytest.mark.parametrize("extra, message", [
    (["nosuch", "--target", "modulus"], "unknown encoder 'nosuch'"),
    (["histogram", "--target", "nope"], "no target column 'nope'"),
    (["histogram", "--target", "constant"], "target column 'constant' is constant"),
    (["histogram", "--target", "empty"], "target column 'empty' is empty"),
    (["histogram", "--target", "modulus", "--group", "batch"], "no group column 'batch'"),
    (["histogram", "spy", "--target", "modulus", "--param", "bins=3"], "METHOD.KEY=VALUE"),
    (["histogram", "--target", "modulus", "--param", "vgg19.layer=pool4"], "not one of the methods"),
    (["histogram", "--target", "modulus", "--model", "spy=runs/x"], "not one of the methods"),
    (["histogram", "--target", "modulus", "--regressor", "lasso"], "unknown regressor 'lasso'"),
    (["histogram", "--target", "phase", "--regressor", "sklearn.linear_model.Ridge"],
     "is a regressor, but the target is categorical"),
])
def test_compare_bad_input_gives_one_clear_error(plugins, dataset, tmp_path, extra, message):
    res = CliRunner().invoke(main, _args(dataset, tmp_path / "r", *extra))
    assert res.exit_code != 0
    assert message in res.output, res.output
    assert "Traceback" not in res.output


def test_compare_labels_matching_no_image(plugins, dataset, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,modulus\nother1.png,1\nother2.png,2\n")
    args = _args(dataset, tmp_path / "r", "histogram", "--target", "modulus")
    args[args.index("--labels") + 1] = str(bad)
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and "no label row matches any image" in res.output
    assert str(bad) in res.output


def test_compare_help_lists_the_options():
    res = CliRunner().invoke(main, ["compare", "--help"])
    assert res.exit_code == 0
    for opt in ("--target", "--group", "--model", "--param", "--regressor", "--seeds", "--folds",
                "--max-groups", "--resume / --no-resume", "--crop-bottom",
                "--controls / --no-controls"):
        assert opt in res.output, opt
