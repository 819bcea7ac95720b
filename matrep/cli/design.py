"""``matrep design``: target properties -> microstructures, checked by physics.

A thin wrapper over :mod:`matrep.design` (see docs/design.md).
"""

from __future__ import annotations

from pathlib import Path

import click

from ._common import (file_column_option, handle_errors, images_option, jobs_option,
                      labels_option, model_option, n_option, out_option, parse_crop, progress,
                      quiet_option, seed_option, window_options)
from ._scale import scale_options, to_options


def _parse_targets(values, study):
    out = {}
    for v in values:
        if "=" not in v:
            if study:
                out[v.strip()] = None
                continue
            raise click.BadParameter(f"expected COLUMN=VALUE, got {v!r}", param_hint="--target")
        k, x = v.split("=", 1)
        try:
            out[k.strip()] = float(x)
        except ValueError:
            raise click.BadParameter(f"expected a number after '=', got {v!r}",
                                     param_hint="--target") from None
    return out


def _threshold(value):
    if value == "otsu":
        return value
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"expected 'otsu' or a grey level in [0, 1], got {value!r}",
                                 param_hint="--threshold") from None


@click.command("design")
@model_option("A trained run folder that decodes (matrep fit --out), e.g. runs/quick.")
@images_option("Training micrographs: folder, glob pattern or file (repeatable).")
@labels_option("Labels CSV of the training micrographs (file column + property columns).",
               required=True)
@click.option("--target", "targets", required=True, multiple=True, metavar="COLUMN=VALUE",
              help="Target property value (repeatable, all met together), e.g. "
                   "youngs_modulus_gpa=150. With --study: just COLUMN.")
@n_option(8, "Designs per target.")
@out_option("Folder for designs.json, designs.png, target_vs_achieved_*.png, designs.md and "
            "the design images.", default="designs")
@click.option("--budget", default=48, type=click.IntRange(1),
              help="Solver calls per target (physics in the loop); the baseline gets the same.")
@click.option("--batch", default=6, type=click.IntRange(1), help="Candidates checked per round.")
@click.option("--refine", default=6, type=click.IntRange(0),
              help="Solver calls at the end of the budget spent on secant steps between checked "
                   "candidates on both sides of the target (one target property); 0: none.")
@click.option("--size", default=512, type=click.IntRange(0),
              help="Side of the large designs (decoded whole by a stationary decoder, else "
                   "tiled with blended seams; checked by physics); 0: none.")
@click.option("--draws", default=8, show_default=True, type=click.IntRange(0),
              help="Other noise draws of each design's latent, decoded at the patch size and "
                   "checked by physics after the choice (outside --budget): the mean and spread "
                   "of the latent's property from patch to patch; 0: none.")
@click.option("--material", default="castiron",
              help="Registered physics solver (matrep.design.physics; built-in: castiron).")
@click.option("--physics/--no-physics", default=None,
              help="Check designs by physics. Default: when the material's solver computes "
                   "every target; --physics makes a missing solver an error.")
@click.option("--baseline/--no-baseline", default=True,
              help="Also run the random-prior baseline at the same solver budget.")
@click.option("--allow-extrapolation", is_flag=True,
              help="Accept targets outside the data's patch-level range (flagged in the output).")
@click.option("--tolerance", default=0.02, type=click.FloatRange(0, min_open=True),
              help="Relative error that scales the search objective.")
@click.option("--region", default="data", show_default=True, type=click.Choice(["data", "prior"]),
              help="Where the search looks: inside the high-density ellipsoid of a Gaussian "
                   "fitted to the training patches' latents (data: where the decoder met real "
                   "patches), or inside the prior N(0, I)'s ball (prior).")
@click.option("--quantile", default=0.99, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Mass of the --region Gaussian inside the ball the search stays in "
                   "(chi-squared quantile).")
@click.option("--max-quantile", default=None,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="While fewer than -n checked designs are within --tolerance and the best "
                   "sits on the ball's rim, the ball widens one step a round (mass "
                   "0.999, 0.9999, ...) up to this; equal to --quantile: never.  [default: "
                   "0.9999, or --quantile when that is higher]")
@click.option("--distinct/--no-distinct", default=True,
              help="Pick designs pairwise apart by VGG19 style distance (at least the median "
                   "distance between two patches of one micrograph): as many as can be, and of "
                   "those sets the one with the smallest worst error; a design more than 2.5 x "
                   "--tolerance off (or twice the best error, if none is that close) is never "
                   "taken for being distinct. --no-distinct skips the style distances.")
@click.option("--threshold", default="otsu",
              help="Segmentation of designed images: 'otsu' (per image) or a grey level.")
@click.option("--masks", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder of phase masks of the training images (default: the labels' "
                   "mask_file column; else Otsu segmentation of the images).")
@file_column_option
@window_options(stride=128)
@scale_options
@click.option("--max-patches", default=None, type=click.IntRange(3),
              help="Use a seeded random subset of at most N training patches.")
@click.option("--study", "study", default=None, type=click.IntRange(1), metavar="K",
              help="Run the study instead: K targets spread over the 5th-95th percentile of "
                   "the patch-level values of the --target column, -n designs each.")
@jobs_option("Worker processes for homogenising the training patches.")
@click.option("--cache/--no-cache", default=True,
              help="Reuse the solver's values of the training mask patches from matrep's cache "
                   "(keyed by the masks and the solver).")
@seed_option("Seed of the search, the baseline and the tiles.")
@quiet_option
@handle_errors
def design_cmd(model, images, labels, targets, n, out, budget, batch, refine, size, draws, material,
               physics, baseline, allow_extrapolation, tolerance, region, quantile, max_quantile,
               distinct, threshold, masks, file_column, stride, crop, crop_bottom, max_patches,
               study, jobs, cache, seed, quiet, scale):
    """Design microstructures with target properties, verified by physics.

    Searches the model's latent space with a Gaussian-process surrogate trained on patch-level
    properties (for the built-in cast iron: each training patch's own mask, homogenised),
    decodes the candidates, segments them and checks them with the material's solver, and
    returns N distinct designs per target with predicted value +- std, physics value, error and
    solver residual, plus a large design of each (decoded whole by a stationary decoder, else
    tiled) and the physics of --draws other noise draws of each design's latent. Example:

    \b
        matrep design --model runs/quick --images DIR/images --labels DIR/labels.csv \\
            --target youngs_modulus_gpa=150 -n 8 --out designs/

    A target outside the data's range, an unknown column, or --physics for a property without
    a solver is refused with one line.
    """
    import json
    import time

    from ..atomic import atomic_write_text
    from ..design import DesignSettings, design, make_designer, write_design

    t0 = time.perf_counter()
    log = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    tg = _parse_targets(targets, study)
    settings = DesignSettings(n=n, budget=budget, batch=batch, refine=refine, tolerance=tolerance,
                              region=region, quantile=quantile,
                              max_quantile=(max(quantile, 0.9999) if max_quantile is None
                                            else max_quantile),
                              threshold=_threshold(threshold), size=size, draws=draws,
                              allow_extrapolation=allow_extrapolation, distinct=distinct,
                              seed=seed)
    imgs = images[0] if len(images) == 1 else list(images)
    kw = dict(material=material, physics=physics, settings=settings, masks=masks,
              file_column=file_column, stride=stride, crop=parse_crop(crop),
              crop_bottom=crop_bottom, max_patches=max_patches, n_jobs=jobs, cache=cache, log=log,
              progress=lambda it: progress(it, desc="patches", quiet=quiet),
              # the model's recorded training scale applies, as in `matrep encode`
              scale=to_options(scale, labels=labels, file_column=file_column, models=[model],
                               quiet=quiet))
    if study:
        from ..design.study import run_study, summary_markdown

        if len(tg) != 1:
            raise click.BadParameter("--study takes exactly one --target COLUMN",
                                     param_hint="--target")
        prop = next(iter(tg))
        des = make_designer(model, imgs, labels, [prop], **kw)
        if des.solver is None:
            raise click.ClickException(f"--study judges designs by physics, and material "
                                       f"{material!r} has no solver for {prop!r}")
        res, summary = run_study(des, prop, n_targets=study, n_designs=n, baseline=baseline,
                                 log=log)
        summary["seconds_total"] = time.perf_counter() - t0
        summary["seconds_surrogate_fit"] = des.fit_seconds
        res.info = {"model": str(model), "images": [str(i) for i in images],
                    "labels": str(labels), "reference_style_distance": des.reference_distance,
                    "active_dims": [int(i) for i in des.active], "latent_dim": des.latent_dim,
                    "n_training_patches": len(des.data.latents),
                    "training_ranges": {prop: des.data.range(prop)}}
        md = summary_markdown(summary) + f"\n\nWall time {summary['seconds_total']:.0f} s " \
                                         f"(surrogate training included)."
        paths = write_design(res, out, extra={"study": summary}, markdown_extra=md)
        atomic_write_text(Path(out) / "study.json", json.dumps(summary, indent=1))
        click.echo(md)
    else:
        if any(v is None for v in tg.values()):
            raise click.BadParameter("expected COLUMN=VALUE", param_hint="--target")
        res = design(model, imgs, labels, tg, baseline=baseline, **kw)
        paths = write_design(res, out)
        from ..design.report import to_markdown

        click.echo(to_markdown(res))
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())} and the design images in {out}")
