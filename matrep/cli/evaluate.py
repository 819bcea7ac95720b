"""``matrep evaluate`` and ``matrep interpret``: thin wrappers over :mod:`matrep.evaluation`."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import (file_column_option, handle_errors, held_out_option, images_option,
                      labels_option,
                      model_option, n_option, out_option, parse_crop, quiet_option, seed_option,
                      window_options)
from ._scale import scale_options, to_options


def _images_arg(images):
    return images[0] if len(images) == 1 else list(images)


def _log(quiet):
    return (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))


@click.command("evaluate")
@model_option("A trained run folder (matrep fit --out); repeat to compare models.",
              multiple=True)
@images_option("Held-out micrographs, or the training ones with --held-out: folder, glob "
               "pattern or file (repeatable).")
@click.option("--other-images", "other_images", default=None, multiple=True,
              help="Micrographs of another material for the floor baseline (default: a "
                   "different micrograph of --images).")
@n_option(100, "Patches per model (the paper used 100).")
@held_out_option
@window_options
@scale_options
@click.option("--metrics", default="stsim2,stsim2_global,dists",
              help="Comma-separated texture metrics: stsim2 (7x7 window), stsim2_global, dists; "
                   "'none' for none (descriptor fidelity and specificity are always reported).")
@seed_option("Seed of the patch choice and baselines.")
@click.option("--device", default="auto", help="Device of the metrics: auto, cpu, cuda, ...")
@click.option("--vgg16-weights", default=None, type=click.Path(dir_okay=False),
              help="DISTS: ImageNet VGG16 weights (default $MATREP_VGG16_WEIGHTS or the "
                   "torch hub cache).")
@click.option("--dists-weights", default=None, type=click.Path(dir_okay=False),
              help="DISTS: the published alpha/beta weights.pt (default $MATREP_DISTS_WEIGHTS "
                   "or an installed dists-pytorch).")
@out_option("Folder for evaluation.json, evaluation.csv and evaluation.md.",
            default="evaluation")
@quiet_option
@handle_errors
def evaluate_cmd(models, images, other_images, n, held_out, stride, crop, crop_bottom, metrics,
                 seed, device, vgg16_weights, dists_weights, out, quiet, scale):
    """Texture similarity and descriptor fidelity of reconstructions of held-out patches.

    For every model: mean and spread of STSIM-2 and DISTS between N patches and their
    reconstructions (the texture-VAE paper's Table 1), plus two baselines on the same
    patches: another patch of the same micrograph (ceiling) and a patch of another material
    (floor). DISTS shows "n/a (missing: ...)" when its weights are absent.

    Descriptor fidelity: input and reconstruction are segmented the same way (graphite =
    pixels at or below the patch's Otsu threshold) and the Spearman rho across patches is
    reported for area fraction, particle density, mean diameter and nodularity ("undefined"
    with a note when one side is constant). What the latent code carries: the same rho
    between each input descriptor and its out-of-fold ridge prediction from the posterior
    means, so a shortfall can be put on the encoder or the decoder. Specificity: share of
    patches whose own reconstruction is closer in style loss than another micrograph's. See
    docs/metrics.md.
    """
    from ..evaluation import evaluate_models

    rep = evaluate_models(list(models), _images_arg(images), n=n,
                          other_images=_images_arg(other_images) if other_images else None,
                          stride=stride, crop=parse_crop(crop), crop_bottom=crop_bottom,
                          seed=seed, metrics=[m.strip() for m in metrics.split(",")
                                              if m.strip() and m.strip() != "none"],
                          held_out=held_out,
                          device=device, vgg16_weights=vgg16_weights,
                          dists_weights=dists_weights, log=_log(quiet),
                          scale=to_options(scale, models=list(models), quiet=quiet))
    paths = rep.write(out)
    click.echo(rep.to_markdown())
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


@click.command("interpret")
@model_option()
@images_option()
@labels_option("Labels CSV: its numeric columns are the factors (default: descriptors "
               "measured from the images).")
@file_column_option
@click.option("--factors", default=None, metavar="COL1,COL2,...",
              help="Label columns to use as factors (default: every numeric column but "
                   "bookkeeping such as seed); MIG/SAP use the same list.")
@n_option(500, "Random subset of patches to encode.")
@held_out_option
@window_options
@scale_options
@click.option("--top-k", default=5, type=click.IntRange(1), help="Dimensions listed per factor.")
@click.option("--traversal-bases", default=None, type=click.IntRange(0),
              help="Patches (spread over the micrographs) whose latents are traversed from -3 "
                   "to 3, dimension by dimension, to rank the dimensions by what they do to "
                   "each descriptor of the decoded image (0: no ranking). Default: 32 "
                   "(matrep.evaluation.traversal.TRAVERSAL_BASES).")
@click.option("--traversal-dims", default=6, type=click.IntRange(0),
              help="Dimensions in the traversal figure (0: no figure).")
@seed_option("Seed of the patch subset.")
@out_option("Folder for interpret.json/.md, interpret_spearman.csv, interpret_traversal.csv "
            "and traversal.png.", default="interpret")
@quiet_option
@handle_errors
def interpret_cmd(model, images, labels, file_column, factors, n, held_out, stride, crop,
                  crop_bottom, top_k, traversal_bases, traversal_dims, seed, out, quiet, scale):
    """What each latent dimension tracks, and what its traversal does to the image.

    Spearman correlation of each latent dimension with each factor (label columns, or graphite
    fraction, particle density, particle size and nodularity measured on each patch), the
    dimensions ranked per factor, and the disentanglement scores MIG and SAP so that models
    compare by a number.

    Traversal ranking: each dimension of the latents of --traversal-bases patches is set to
    -3..3 (7 steps); the decoded images are segmented like the data and for each (dimension,
    descriptor) the Spearman rho of step vs descriptor (monotonicity) and the range moved
    relative to the descriptor's inter-quartile range over the patches are reported, with
    whether a dimension moves area fraction, mean diameter and nodularity monotonically
    (|rho| >= 0.9) over at least half the IQR, and in what share of 200 resamples of the bases
    it is. The traversal figure shows the top dimension of each descriptor, labelled by what
    it moves. See docs/metrics.md.
    """
    from ..evaluation import interpret_model

    rep = interpret_model(model, _images_arg(images), labels=labels, file_column=file_column,
                          factors=[f.strip() for f in factors.split(",")] if factors else None,
                          n=n, stride=stride, crop=parse_crop(crop), crop_bottom=crop_bottom,
                          seed=seed, top_k=top_k, n_traversal_dims=traversal_dims,
                          traversal_bases=traversal_bases, held_out=held_out,
                          out_dir=Path(out), log=_log(quiet),
                          scale=to_options(scale, labels=labels, file_column=file_column,
                                           models=[model], quiet=quiet))
    click.echo(rep.to_markdown())
    click.echo(f"wrote {out}/interpret.json, interpret.md, interpret_spearman.csv"
               + (", interpret_traversal.csv" if rep.traversal is not None else "")
               + (", traversal.png" if rep.figures else ""))
