"""`matrep compare`: the structure-property study across encoders."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._common import handle_errors, progress, quiet_option
from ._scale import scale_options, to_options
from .encode import parse_crop, patch_options, report_skipped


def _split_pairs(values, option: str, sep: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        if sep not in v:
            raise click.BadParameter(f"expected NAME{sep}..., got {v!r}", param_hint=option)
        a, b = v.split(sep, 1)
        out.append((a.strip(), b.strip()))
    return out


def parse_method_params(pairs, methods) -> dict:
    """``vgg19.layer=pool5`` → ``{"vgg19": {"layer": "pool5"}}`` (values parsed as JSON)."""
    out: dict = {}
    for p in pairs:
        if "=" not in p or "." not in p.split("=", 1)[0]:
            raise click.BadParameter(f"expected METHOD.KEY=VALUE, got {p!r}", param_hint="--param")
        k, v = p.split("=", 1)
        name, key = k.split(".", 1)
        if name not in methods:
            raise click.BadParameter(f"{p!r} names {name!r}, which is not one of the methods "
                                     f"({', '.join(methods)})", param_hint="--param")
        try:
            val = json.loads(v)
        except json.JSONDecodeError:
            val = v
        out.setdefault(name, {})[key.strip()] = val
    return out


@click.command("compare")
@click.argument("methods", nargs=-1, required=True)
@patch_options
@scale_options
@click.option("--labels", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV with a file column and property columns (one row per micrograph).")
@click.option("--file-column", default="file", help="Column of --labels naming the image files.")
@click.option("--target", required=True,
              help="Label column to predict. Numeric: regression; otherwise classification.")
@click.option("--group", default=None,
              help="Label column grouping micrographs for the grouped split (e.g. sample_key); "
                   "default: each micrograph is its own group.")
@click.option("--task", type=click.Choice(["auto", "regression", "classification"]),
              default="auto", help="Force regression or classification.")
@click.option("--model", "models", multiple=True, metavar="METHOD=PATH",
              help="A fitted model for a trainable method (e.g. texturevae=runs/NAME), used as "
                   "is; without it trainable methods are fitted inside each split on its "
                   "training patches. A texture-VAE given this way gets two control rows on "
                   "the same patches and splits (see --controls).")
@click.option("--param", "params", multiple=True, metavar="METHOD.KEY=VALUE",
              help="Encoder parameter (repeatable; JSON values), e.g. vgg19.layer=pool4.")
@click.option("--regressor", "regressors", multiple=True, default=("linear", "svr"),
              metavar="SPEC",
              help="Model(s) on the features (repeatable; replaces the default pair): linear, "
                   "svr, or a scikit-learn class path with optional KEY=VALUE,... after ':', "
                   "e.g. sklearn.ensemble.RandomForestRegressor:n_estimators=200. For "
                   "classification linear = LogisticRegression, svr = SVC.")
@click.option("--split", type=click.Choice(["both", "random", "grouped"]), default="both",
              help="Random 80/20 splits over patches (Table 2), grouped splits (Table 3), or both.")
@click.option("--seeds", default=5, type=click.IntRange(1), help="Seeds of the random splits.")
@click.option("--test-size", default=0.2, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Held-out fraction of the random splits.")
@click.option("--folds", default=None, type=click.IntRange(2),
              help="Grouped split by GroupKFold(FOLDS) instead of leave-one-group-out.")
@click.option("--max-groups", default=None, type=click.IntRange(1),
              help="Leave-one-group-out for only this many groups (seeded random choice).")
@click.option("--inner-folds", default=3, type=click.IntRange(2),
              help="Folds of the inner cross-validation that picks hyperparameters.")
@click.option("--max-images", default=None, type=click.IntRange(1),
              help="Use a seeded random subset of this many labelled micrographs.")
@click.option("--max-patches-per-image", default=None, type=click.IntRange(1),
              help="Keep a seeded random subset of each micrograph's patches.")
@click.option("--n-jobs", default=1, type=int, help="Parallel jobs of the inner grid search.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Report folder (also holds the feature caches and resumable state).")
@click.option("--resume/--restart", default=True,
              help="Continue an interrupted study from its finished results, or start over.")
@click.option("--controls/--no-controls", default=True, show_default=True,
              help="With --model texturevae=PATH, also score 'texturevae (untrained head)' (its "
                   "configuration and seed, no training) and 'vgg19 (style mean/std)' (the "
                   "VGG19 statistics its head reads), and say in a verdict whether the trained "
                   "model beats both and the baseline. The baseline row (training mean or "
                   "majority class) is always reported.")
@quiet_option
@handle_errors
def compare_cmd(methods, images, patch, stride, crop, crop_bottom, skip_bad, labels, file_column,
                target, group, task, models, params, regressors, split, seeds, test_size, folds,
                max_groups, inner_folds, max_images, max_patches_per_image, n_jobs, out, resume,
                scale,
                controls, quiet):
    """Compare encoders (METHOD...) on how well their features predict a property.

    For each method, regressor and split, fits on training patches only and predicts the
    held-out patches: random 80/20 splits over patches (several seeds) and grouped splits
    that hold out whole micrographs (or --group values). A baseline row (the training mean,
    or the majority class) is reported once per study. Writes report.md, report.json,
    predictions.csv and figures to --out. An interrupted study resumes.

    Example: matrep compare twopoint vgg19 --images data/images --labels data/labels.csv
    --target youngs_modulus_gpa --out report/
    """
    from .. import registry
    from ..report import format_summary, write_report
    from ..study import MethodSpec, Study, parse_model_spec, prepare_data

    methods = list(dict.fromkeys(methods))
    for m in methods:  # validate names before reading any image
        registry.encoder_class(m)
    model_of = dict(_split_pairs(models, "--model", "="))
    for name, path in model_of.items():
        if name not in methods:
            raise click.BadParameter(f"--model {name}={path}: {name!r} is not one of the methods "
                                     f"({', '.join(methods)})", param_hint="--model")
        if not Path(path).is_dir():
            raise click.BadParameter(f"{path}: no such model folder", param_hint="--model")
    kw = parse_method_params(params, methods)
    for r in regressors:
        parse_model_spec(r)
    specs = [MethodSpec(m, kw.get(m, {}), model_of.get(m)) for m in methods]

    def warn(msg):
        click.echo(f"warning: {msg}", err=True)

    def log(msg):
        import sys

        from tqdm.auto import tqdm

        tqdm.write(msg, file=sys.stderr)  # keeps progress bars intact

    imgs = list(images) if len(images) > 1 else images[0]
    data = prepare_data(imgs, labels, target, group=group, file_column=file_column, task=task,
                        patch=patch, stride=stride, crop=parse_crop(crop),
                        crop_bottom=crop_bottom, skip_bad=skip_bad, max_images=max_images,
                        max_patches_per_image=max_patches_per_image, warn=warn,
                        scale=to_options(scale, labels=labels, file_column=file_column,
                                         models=list(model_of.values()), quiet=quiet),
                        progress=lambda it: progress(it, desc="read", quiet=quiet))
    report_skipped(data.patchset)
    if not quiet:
        click.echo(f"{len(data.patchset)} patches of {len(data.patchset.files)} micrographs, "
                   f"target {target!r} ({data.task}), {len(set(data.groups.tolist()))} groups "
                   f"by {group or 'micrograph'}", err=True)
    study = Study(data, specs, out, regressors=regressors, split=split, seeds=seeds,
                  test_size=test_size, folds=folds, max_groups=max_groups,
                  inner_folds=inner_folds, resume=resume, n_jobs=n_jobs, controls=controls,
                  log=(lambda s: None) if quiet else log,
                  progress=None if quiet else (lambda **k: progress(quiet=quiet, **k)))
    import shlex
    import sys

    from ..atomic import lock

    # one study writing into --out at a time (OUT/.compare.lock): a second one waits, then
    # resumes from the first one's results
    with lock(Path(out) / "compare", on_wait=warn):
        result = study.run()
        if Path(sys.argv[0]).name in ("matrep", "__main__.py"):  # not when called in-process
            result.settings["command"] = "matrep " + " ".join(shlex.quote(a)
                                                              for a in sys.argv[1:])
        files = write_report(result, out)
    click.echo(format_summary(result))
    click.echo(f"\nreport: {files['markdown']} (also report.json, predictions.csv, "
               f"{len(files['figures'])} figures in {Path(out) / 'figures'})")
