"""``matrep evaluate`` and ``matrep interpret``: thin wrappers over :mod:`matrep.evaluation`."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import handle_errors, quiet_option
from ._scale import scale_options, to_options
from .encode import parse_crop, window_options


def _images_arg(images):
    return images[0] if len(images) == 1 else list(images)


def _log(quiet):
    return (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))


@click.command("evaluate")
@click.option("--model", "models", required=True, multiple=True,
              type=click.Path(exists=True, file_okay=False),
              help="A trained run folder (matrep fit --out); repeat to compare models.")
@click.option("--images", "images", required=True, multiple=True,
              help="Held-out micrographs: folder, glob pattern or file (repeatable).")
@click.option("--other-images", "other_images", default=None, multiple=True,
              help="Micrographs of another material for the floor baseline (default: a "
                   "different micrograph of --images).")
@click.option("-n", "--n", "n", default=100, type=click.IntRange(1),
              help="Patches per model (the paper used 100).")
@window_options
@scale_options
@click.option("--metrics", default="stsim2,stsim2_global,dists",
              help="Comma-separated metrics: stsim2 (7x7 window), stsim2_global, dists.")
@click.option("--seed", default=0, type=int, help="Seed of the patch choice and baselines.")
@click.option("--device", default="auto", help="Device of the metrics: auto, cpu, cuda, ...")
@click.option("--vgg16-weights", default=None, type=click.Path(dir_okay=False),
              help="DISTS: ImageNet VGG16 weights (default $MATREP_VGG16_WEIGHTS or the "
                   "torch hub cache).")
@click.option("--dists-weights", default=None, type=click.Path(dir_okay=False),
              help="DISTS: the published alpha/beta weights.pt (default $MATREP_DISTS_WEIGHTS "
                   "or an installed dists-pytorch).")
@click.option("--out", default="evaluation", type=click.Path(file_okay=False),
              help="Folder for evaluation.json, evaluation.csv and evaluation.md.")
@quiet_option
@handle_errors
def evaluate_cmd(models, images, other_images, n, stride, crop, crop_bottom, metrics, seed,
                 device, vgg16_weights, dists_weights, out, quiet, scale):
    """Texture similarity between held-out patches and their reconstructions.

    For every model: mean and spread of STSIM-2 and DISTS between N patches and their
    reconstructions (the texture-VAE paper's Table 1), plus two baselines on the same
    patches: another patch of the same micrograph (ceiling) and a patch of another material
    (floor). DISTS shows "n/a (missing: ...)" when its weights are absent.
    """
    from ..evaluation import evaluate_models

    rep = evaluate_models(list(models), _images_arg(images), n=n,
                          other_images=_images_arg(other_images) if other_images else None,
                          stride=stride, crop=parse_crop(crop), crop_bottom=crop_bottom,
                          seed=seed, metrics=[m.strip() for m in metrics.split(",") if m.strip()],
                          device=device, vgg16_weights=vgg16_weights,
                          dists_weights=dists_weights, log=_log(quiet),
                          scale=to_options(scale, models=list(models), quiet=quiet))
    paths = rep.write(out)
    click.echo(rep.to_markdown())
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


@click.command("interpret")
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False),
              help="A trained run folder (matrep fit --out).")
@click.option("--images", "images", required=True, multiple=True,
              help="Micrographs: folder, glob pattern or file (repeatable).")
@click.option("--labels", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Labels CSV: its numeric columns are the factors (default: descriptors "
                   "measured from the images).")
@click.option("--file-column", default="file", help="Labels column naming the image files.")
@click.option("--factors", default=None, metavar="COL1,COL2,...",
              help="Label columns to use as factors (default: every numeric column but "
                   "bookkeeping such as seed); MIG/SAP use the same list.")
@click.option("-n", "--n", "n", default=500, type=click.IntRange(1),
              help="Random subset of patches to encode.")
@window_options
@scale_options
@click.option("--top-k", default=5, type=click.IntRange(1), help="Dimensions listed per factor.")
@click.option("--traversal-dims", default=6, type=click.IntRange(0),
              help="Dimensions in the traversal figure (0: no figure).")
@click.option("--seed", default=0, type=int, help="Seed of the patch subset.")
@click.option("--out", default="interpret", type=click.Path(file_okay=False),
              help="Folder for interpret.json/.md, interpret_spearman.csv and traversal.png.")
@quiet_option
@handle_errors
def interpret_cmd(model, images, labels, file_column, factors, n, stride, crop, crop_bottom,
                  top_k, traversal_dims, seed, out, quiet, scale):
    """Correlate every latent dimension with known factors or measured descriptors.

    Spearman correlation of each latent dimension with each factor (label columns, or graphite
    fraction, particle density, particle size and nodularity measured on each patch), the
    dimensions ranked per factor, a traversal figure of the top ones, and the disentanglement
    scores MIG and SAP so that models compare by a number.
    """
    from ..evaluation import interpret_model

    rep = interpret_model(model, _images_arg(images), labels=labels, file_column=file_column,
                          factors=[f.strip() for f in factors.split(",")] if factors else None,
                          n=n, stride=stride, crop=parse_crop(crop), crop_bottom=crop_bottom,
                          seed=seed, top_k=top_k, n_traversal_dims=traversal_dims,
                          out_dir=Path(out), log=_log(quiet),
                          scale=to_options(scale, labels=labels, file_column=file_column,
                                           models=[model], quiet=quiet))
    click.echo(rep.to_markdown())
    click.echo(f"wrote {out}/interpret.json, interpret.md, interpret_spearman.csv"
               + (", traversal.png" if rep.figures else ""))
