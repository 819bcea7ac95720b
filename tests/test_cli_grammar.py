"""One CLI grammar (docs/cli.md): every command takes --help and --quiet, the deprecated
spellings still work and warn once, and the commands x options table of docs/cli.md is what
the click commands declare."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from matrep.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _commands():
    """(name, click command) of every command that runs: leaves, and groups that run alone."""
    ctx = click.Context(main)

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            if cmd.invoke_without_command and path:
                yield " ".join(path), cmd
            for name in cmd.list_commands(ctx):
                yield from walk(cmd.get_command(ctx, name), [*path, name])
        else:
            yield " ".join(path), cmd

    return dict(walk(main, []))


COMMANDS = _commands()


def _options(cmd) -> set:
    """The visible options of ``cmd`` by their longest primary spelling (``--help`` left out)."""
    return {max(p.opts, key=len) for p in cmd.params
            if isinstance(p, click.Option) and not p.hidden and p.name != "help"}


def _doc_tables() -> dict:
    """command -> options, read from the two tables of docs/cli.md.

    The shared table has one column per command (a non-empty cell: the command takes the
    row's options); the own-options table has one row per command.
    """
    text = DOC.read_text()
    got: dict = {}

    def rows(title):
        part = text.split(title, 1)[1]
        lines = []
        for ln in part.splitlines()[1:]:
            if ln.startswith("|"):
                lines.append([c.strip() for c in ln.strip().strip("|").split("|")])
            elif lines:
                break
        return lines

    def opts(cell):
        return set(re.findall(r"`(--[a-z0-9][a-z0-9-]*)", cell))

    shared = rows("## Options shared by several commands")
    header = [c.strip("`") for c in shared[0][1:]]
    for row in shared[2:]:
        for name, cell in zip(header, row[1:]):
            if cell:
                got.setdefault(name, set()).update(opts(row[0]))
    for row in rows("## Options of one command")[2:]:
        got.setdefault(row[0].strip("`"), set()).update(opts(row[1]))
    return got


def test_doc_table_lists_every_command_and_exactly_its_options():
    doc = _doc_tables()
    assert set(doc) == set(COMMANDS), "commands in docs/cli.md differ from `matrep --help`"
    for name, cmd in COMMANDS.items():
        assert doc[name] == _options(cmd), (
            f"docs/cli.md, {name}: missing {sorted(_options(cmd) - doc[name])}, "
            f"not an option {sorted(doc[name] - _options(cmd))}")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_takes_help_and_quiet(name):
    res = CliRunner().invoke(main, [*name.split(), "--help"])
    assert res.exit_code == 0, res.output
    assert "--quiet" in res.output and "Usage: main " + name in res.output
    assert "--quiet" in _options(COMMANDS[name])


def test_shared_options_have_one_spelling():
    """-n, -j, -q: one spelling each wherever they appear; --out is a folder."""
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.hidden:
                continue
            if p.name == "n":
                assert sorted(p.opts) == ["--n", "-n"], name
            if p.name == "jobs":
                assert sorted(p.opts) == ["--jobs", "-j"], name
            if p.name == "quiet":
                assert sorted(p.opts) == ["--quiet", "-q"], name
            if p.name == "out":
                assert p.metavar.startswith("FOLDER"), name
            if p.name == "resume":
                assert p.opts == ["--resume"] and p.secondary_opts == ["--no-resume"], name
                assert p.default is True, name


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(d / f"m{i}.png")
    (d / "labels.csv").write_text("file,E\nm0.png,1.0\nm1.png,2.0\nm2.png,3.5\n")
    return d


def _warnings(output):
    return [ln for ln in output.splitlines() if ln.startswith("warning: deprecated")]


def test_compare_positional_methods_and_n_jobs_are_deprecated_aliases(images, tmp_path):
    common = ["--images", str(images), "--labels", str(images / "labels.csv"), "--target", "E",
              "--patch", "32", "--stride", "32", "--split", "random", "--seeds", "1",
              "--regressor", "linear", "-q"]
    new = CliRunner().invoke(main, ["compare", "--method", "twopoint", "-j", "1",
                                    "--param", "cutoff=4", "--out", str(tmp_path / "a"), *common])
    assert new.exit_code == 0, new.output
    assert not _warnings(new.output)
    old = CliRunner().invoke(main, ["compare", "twopoint", "--n-jobs", "1",
                                    "--param", "twopoint.cutoff=4", "--out", str(tmp_path / "b"),
                                    *common])
    assert old.exit_code == 0, old.output
    w = _warnings(old.output)
    assert len(w) == 2, old.output
    assert any("use --method twopoint" in ln for ln in w)
    assert any("--n-jobs: use -j/--jobs" in ln for ln in w)
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert a["summary"] == b["summary"]
    assert a["methods"]["twopoint"]["provenance"]["params"]["cutoff"] == 4
    both = CliRunner().invoke(main, ["compare", "twopoint", "--method", "twopoint",
                                     "--out", str(tmp_path / "c"), *common])
    assert both.exit_code == 2 and "not also as positional" in both.output


def test_restart_is_the_deprecated_no_resume(images, tmp_path):
    args = ["encode", "--method", "twopoint", "--images", str(images), "--patch", "32",
            "--stride", "32", "--param", "cutoff=4", "--out", str(tmp_path)]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert (tmp_path / "features.h5").is_file()  # --out is a folder
    res = CliRunner().invoke(main, [*args, "--restart"])
    assert res.exit_code == 0, res.output
    w = _warnings(res.output)
    assert len(w) == 1 and "--restart: use --no-resume" in w[0]
    res = CliRunner().invoke(main, [*args, "--restart", "--resume"])
    assert res.exit_code == 2 and "not both" in res.output
    # the store file itself is a documented form of --out, no warning
    res = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "f.h5")])
    assert res.exit_code == 0 and not _warnings(res.output)
    assert (tmp_path / "f.h5").is_file()


def test_compare_model_path_names_its_method(tmp_path):
    from matrep.cli.compare import models_by_method

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"encoder": "texturevae", "params": {}}))
    assert models_by_method([str(run)], ["texturevae", "vgg19"]) == {"texturevae": str(run)}
    assert models_by_method([f"texturevae={run}"], ["texturevae"]) == {"texturevae": str(run)}
    with pytest.raises(click.BadParameter, match="not one of the methods"):
        models_by_method([str(run)], ["vgg19"])
    with pytest.raises(click.BadParameter, match="no such model folder"):
        models_by_method([f"texturevae={tmp_path / 'none'}"], ["texturevae"])


def test_param_grammar():
    from matrep.cli._common import parse_method_params, parse_params

    assert parse_params(["a=1", "b=x", "c=[1,2]"]) == {"a": 1, "b": "x", "c": [1, 2]}
    assert parse_method_params(["cutoff=3"], ["twopoint"]) == {"twopoint": {"cutoff": 3}}
    with pytest.raises(click.BadParameter, match="METHOD.KEY=VALUE with several methods"):
        parse_method_params(["cutoff=3"], ["twopoint", "vgg19"])
    with pytest.raises(click.BadParameter, match="not one of the methods"):
        parse_method_params(["vgg19.layer=pool4"], ["twopoint"])


# ---------------------------------------------------------------------------------------
# issue 18: reconstruct, traverse and design apply the model's recorded scale
# ---------------------------------------------------------------------------------------
class _Decoder:
    """A decoding model of patch 16 whose reconstruction is the input (no training)."""

    name = "fake"
    can_decode = True
    patch_size_ = 16
    latent_dim = 2

    def reconstruct(self, X):
        return np.asarray(X, dtype=np.float32)

    def transform(self, X):
        X = np.asarray(X, dtype=np.float64)
        return np.stack([X.mean(axis=(1, 2)), X.std(axis=(1, 2))], axis=1)

    def traverse(self, x, dims, values):
        return np.broadcast_to(np.asarray(x, np.float32), (len(dims), len(values), 16, 16)).copy()


@pytest.fixture()
def scaled_run(tmp_path, monkeypatch):
    """A run folder whose fit.json records training at 1 um/px, and the fake decoder."""
    import matrep.cli.model as cm

    run = tmp_path / "run"
    run.mkdir()
    (run / "fit.json").write_text(json.dumps({"method": "fake", "params": {},
                                              "patches": {"scale_um_per_px": 1.0}}))
    monkeypatch.setattr(cm, "_load_decoder_model", lambda m: _Decoder())
    return run


def test_reconstruct_applies_the_models_scale(images, scaled_run, tmp_path):
    # 64x64 micrographs of 0.5 um/px become 32x32 at the model's 1 um/px: patches at 0 and 16
    args = ["reconstruct", "--model", str(scaled_run), "--images", str(images), "-n", "50",
            "--stride", "16", "--pixel-size", "0.5"]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    assert "resampling to 1 um/px" in res.output
    with np.load(tmp_path / "figs" / "reconstructions.npz") as z:
        assert len(z["coords"]) == 3 * 4 and z["coords"].max() == 16
    # --scale overrides it; the old file form of --out still works, with one warning
    res = CliRunner().invoke(main, [*args, "--scale", "0.5", "--out", str(tmp_path / "r.png"),
                                    "-q"])
    assert res.exit_code == 0, res.output
    assert len(_warnings(res.output)) == 1 and "--out FOLDER" in res.output
    with np.load(tmp_path / "r.npz") as z:
        assert len(z["coords"]) == 3 * 16 and z["coords"].max() == 48


def test_traverse_applies_the_models_scale(images, scaled_run, tmp_path):
    from matrep.io import read_micrograph
    from matrep.scale import resample

    res = CliRunner().invoke(main, ["traverse", "--model", str(scaled_run), "--image",
                                    str(images / "m0.png"), "--pixel-size", "0.5", "--dims", "0",
                                    "--steps", "2", "--out", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    img = resample(read_micrograph(images / "m0.png"), 0.5)  # 32x32; the centre patch at 8,8
    with np.load(tmp_path / "traversal.npz") as z:
        np.testing.assert_array_equal(z["original"], img[8:24, 8:24])
    # a model trained at a scale needs the image's pixel size: one clear line
    res = CliRunner().invoke(main, ["traverse", "--model", str(scaled_run), "--image",
                                    str(images / "m0.png"), "--dims", "0", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "m0.png: no pixel size" in res.output


def test_design_takes_the_scale_options_and_the_models_scale(images, scaled_run, tmp_path,
                                                             monkeypatch):
    import matrep.design as md

    seen = {}

    def fake_design(model, imgs, labels, targets, **kw):
        seen.update(kw)
        raise md.DesignError("stop here")

    monkeypatch.setattr(md, "design", fake_design)
    res = CliRunner().invoke(main, ["design", "--model", str(scaled_run), "--images", str(images),
                                    "--labels", str(images / "labels.csv"), "--target", "E=2",
                                    "--min-pixel-size", "0.1", "--pixel-size", "0.5",
                                    "--out", str(tmp_path), "-q"])
    assert res.exit_code == 1 and "stop here" in res.output
    opts = seen["scale"]
    assert (opts.model_scale, opts.pixel_size, opts.min_pixel_size) == (1.0, 0.5, 0.1)


def test_design_training_data_is_resampled_with_its_masks(images, tmp_path):
    from matrep.design.training import load_training_data
    from matrep.scale import ScaleOptions

    data = load_training_data(_Decoder(), images, images / "labels.csv", ["E"], stride=16,
                              scale=ScaleOptions(pixel_size=0.5, model_scale=1.0))
    assert data.patchset.scale.target_um_per_px == 1.0
    assert len(data.latents) == 3 * 4  # 32x32 after resampling: 4 patches of 16 each
    assert any("resampled to 1 um/px" in n for n in data.notes)


def test_design_masks_follow_their_images_scale(images, tmp_path):
    import pandas as pd
    from PIL import Image

    from matrep.design.training import _mask_patches
    from matrep.io import load_patches, read_micrograph
    from matrep.scale import ScaleOptions, resample

    rng = np.random.default_rng(1)
    (tmp_path / "masks").mkdir()
    for i in range(3):
        m = (rng.random((8, 8)) > 0.5).repeat(8, 0).repeat(8, 1)  # 64x64 blocks of 8
        Image.fromarray((m * 255).astype(np.uint8)).save(tmp_path / "masks" / f"m{i}.png")
    df = pd.DataFrame({"file": [f"m{i}.png" for i in range(3)],
                       "mask_file": [f"m{i}.png" for i in range(3)]})
    ps = load_patches(images, patch=16, stride=16, scale=ScaleOptions(scale=1.0, pixel_size=0.5))
    got = _mask_patches(ps, df, tmp_path / "labels.csv", "mask_file", tmp_path / "masks", "file")
    assert got.shape == (3 * 4, 16, 16)
    for k in (0, 5, 11):
        name = Path(ps.sources[k]).name
        m = resample(read_micrograph(tmp_path / "masks" / name), 0.5) > 0.5
        y, x = ps.coords[k]
        np.testing.assert_array_equal(got[k], m[y:y + 16, x:x + 16])


def test_fit_resumes_by_default_and_no_resume_starts_over(images, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "run"
    tiny = ["--method", "texturevae", "--images", str(images), "--patch", "32", "--stride", "32",
            "--weights", "random", "--device", "cpu", "--epochs", "1", "--batch-size", "4",
            "--latent-dim", "4", "--param", "decoder_channels=[8,8,8,8,8]"]
    args = ["fit", *tiny, "--out", str(out)]
    res = CliRunner().invoke(main, [*args, "-q"])
    assert res.exit_code == 0, res.output
    assert (out / "checkpoint").is_dir()
    res = CliRunner().invoke(main, args)  # the default: continue the run
    assert res.exit_code == 0, res.output
    assert f"continuing the run in {out} from its checkpoint" in res.output
    ck = (out / "checkpoint").stat().st_ino
    res = CliRunner().invoke(main, [*args, "--no-resume", "-q"])
    assert res.exit_code == 0, res.output
    assert "--no-resume: deleted the checkpoint" in res.output
    assert (out / "checkpoint").is_dir() and (out / "checkpoint").stat().st_ino != ck
    # an explicit --resume needs a checkpoint; without one the default just starts
    res = CliRunner().invoke(main, ["fit", *tiny, "--out", str(tmp_path / "new"), "--resume"])
    assert res.exit_code != 0 and "no checkpoint to resume from" in res.output, res.output


def test_encode_method_defaults_to_the_models(images, tmp_path):
    run = tmp_path / "run"
    common = ["--images", str(images), "--patch", "32", "--stride", "32", "-q"]
    res = CliRunner().invoke(main, ["fit", "--method", "twopoint", "--param", "cutoff=4",
                                    "--out", str(run), *common])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["encode", "--model", str(run), "--out", str(tmp_path),
                                    *common])
    assert res.exit_code == 0, res.output
    assert "features/twopoint-" in res.output
    res = CliRunner().invoke(main, ["encode", "--out", str(tmp_path), *common])
    assert res.exit_code == 2 and "Missing option '--method'" in res.output
