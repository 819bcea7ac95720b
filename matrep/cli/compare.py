"""`matrep compare`: the structure-property study across encoders."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import (deprecated_option, file_column_option, handle_errors, jobs_option,
                      labels_option, out_option, param_option, parse_crop, parse_method_params,
                      patch_options, progress, quiet_option, report_skipped, resume_option,
                      warn_deprecated)
from ._scale import scale_options, to_options


class _Command(click.Command):
    """``matrep compare``: the deprecated positional METHOD arguments stay out of the usage."""

    def collect_usage_pieces(self, ctx):
        return [self.options_metavar]


def _legacy_methods(ctx, param, value):
    if value:
        warn_deprecated("positional METHOD arguments (`matrep compare " + " ".join(value) + "`)",
                        "--method " + " --method ".join(value))
        ctx.meta["matrep.compare.methods"] = tuple(value)


def models_by_method(values, methods) -> dict:
    """``--model`` values → ``{method: path}``.

    ``METHOD=PATH`` names the method; a plain ``PATH`` is the model of the method its folder
    records (``config.json``).
    """
    from ..encoder import read_config

    out = {}
    for v in values:
        name, path = (v.split("=", 1) if "=" in v and not Path(v).is_dir() else (None, v))
        path = path.strip()
        if name is None:
            if not Path(path).is_dir():
                raise click.BadParameter(f"{path}: no such model folder", param_hint="--model")
            name = read_config(path)["encoder"]
        name = name.strip()
        if name not in methods:
            raise click.BadParameter(f"--model {v}: {name!r} is not one of the methods "
                                     f"({', '.join(methods)})", param_hint="--model")
        if not Path(path).is_dir():
            raise click.BadParameter(f"{path}: no such model folder", param_hint="--model")
        out[name] = path
    return out


@click.command("compare", cls=_Command)
@click.option("--method", "methods", multiple=True, metavar="NAME",
              help="Encoder to compare (repeatable, at least one; see `matrep encoders`).")
@click.argument("legacy_methods", nargs=-1, expose_value=False, callback=_legacy_methods)
@patch_options
@scale_options
@labels_option("CSV with a file column and property columns (one row per micrograph).",
               required=True)
@file_column_option
@click.option("--target", required=True,
              help="Label column to predict. Numeric: regression; otherwise classification.")
@click.option("--group", default=None,
              help="Label column grouping micrographs for the grouped split (e.g. sample_key); "
                   "default: each micrograph is its own group.")
@click.option("--task", type=click.Choice(["auto", "regression", "classification"]),
              default="auto", help="Force regression or classification.")
@click.option("--model", "models", multiple=True, metavar="[METHOD=]PATH",
              help="A fitted model folder for a trainable method (repeatable; PATH alone is "
                   "the model of the method its folder records, METHOD=PATH names it, e.g. "
                   "texturevae=runs/NAME), used as is; without it trainable methods are fitted "
                   "inside each split on its training patches. A texture-VAE given this way "
                   "gets two control rows on the same patches and splits (see --controls).")
@param_option(per_method=True)
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
@jobs_option("Parallel jobs of the inner grid search.")
@deprecated_option("--n-jobs", dest="jobs", new="-j/--jobs", type=int)
@out_option("Report folder (also holds the feature caches and resumable state).",
            required=True)
@resume_option("Continue an interrupted study from its finished results.")
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
                max_groups, inner_folds, max_images, max_patches_per_image, jobs, out, resume,
                scale, controls, quiet):
    """Compare encoders (--method, repeated) on how well their features predict a property.

    For each method, regressor and split, fits on training patches only and predicts the
    held-out patches: random 80/20 splits over patches (several seeds) and grouped splits
    that hold out whole micrographs (or --group values). A baseline row (the training mean,
    or the majority class) is reported once per study. Writes report.md, report.json,
    predictions.csv and figures to --out. An interrupted study resumes.

    Example: matrep compare --method twopoint --method vgg19 --images data/images
    --labels data/labels.csv --target youngs_modulus_gpa --out report/

    (Deprecated: the methods as positional arguments, `matrep compare twopoint vgg19 ...`.)
    """
    from .. import registry
    from ..report import format_summary, write_report
    from ..study import MethodSpec, Study, parse_model_spec, prepare_data

    legacy = click.get_current_context().meta.get("matrep.compare.methods", ())
    if legacy and methods:
        raise click.UsageError("give the methods with --method, not also as positional "
                               "arguments (deprecated)")
    methods = list(dict.fromkeys(methods or legacy))
    if not methods:
        raise click.UsageError("Missing option '--method' (at least one encoder to compare).")
    for m in methods:  # validate names before reading any image
        registry.encoder_class(m)
    model_of = models_by_method(models, methods)
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
                  inner_folds=inner_folds, resume=resume, n_jobs=jobs, controls=controls,
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
