"""`matrep reconstruct`, `matrep generate`, `matrep traverse`: figures of a trained model that
can decode (``matrep.load_model(--model)``). `matrep fit` lives in :mod:`matrep.cli.fit`.
"""

from __future__ import annotations

from pathlib import Path

import click

from ._common import (handle_errors, images_option, model_option, n_option, out_file, out_option,
                      quiet_option, read_patchset, seed_option, window_options)
from ._scale import report_scale, scale_options, to_options


def _ints(value, name):
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}",
                                 param_hint=name) from None


def _echo(quiet):
    return (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))


def _load_decoder_model(model):
    from .. import load_model

    enc = load_model(model)
    if not getattr(enc, "generative", getattr(enc, "can_decode", False)):
        raise click.ClickException(f"{model}: encoder {enc.name!r} cannot decode")
    return enc


def _pick_spread(ps, n, seed):
    """Up to ``n`` patch indices, round-robin over micrographs (seeded within each)."""
    from ..evaluation import spread_patches

    return spread_patches(ps.micrograph_ids, n, seed)


@click.command("reconstruct")
@model_option()
@images_option()
@window_options
@scale_options
@n_option(8, "Number of patches (spread over micrographs).")
@seed_option("Seed of the patch choice.")
@out_option("Folder for reconstructions.png (the figure) and reconstructions.npz (the arrays). "
            "(Deprecated: a path ending in .png is the figure; the .npz goes beside it.)",
            required=True, file_form=True)
@quiet_option
@handle_errors
def reconstruct_cmd(model, images, stride, crop, crop_bottom, n, seed, out, quiet, scale):
    """Figure of patches and their reconstructions (original | reconstruction pairs).

    A texture-VAE with a noise decoder (the quick preset's) keeps, for each patch, the
    closest in style loss of its reconstruct_draws noise draws (default 8; set at fit time
    with --param reconstruct_draws=K; docs/texturevae.md).

    The images are resampled to the scale the model was trained at (its fit.json), like
    `matrep encode` does; --scale overrides it.
    """
    from ..figures import reconstruction_figure, write_npz

    enc = _load_decoder_model(model)
    P = int(enc.patch_size_)
    opts = to_options(scale, models=[model], quiet=quiet)
    ps = read_patchset(images, P, stride, crop, crop_bottom, False, quiet, scale=opts)
    report_scale(ps, quiet)
    idx = _pick_spread(ps, n, seed)
    X = ps.patches[idx]
    R = enc.reconstruct(X)
    d = enc.style_distance(X, R) if hasattr(enc, "style_distance") else None
    labels = [f"{ps.micrograph_ids[i]} ({ps.coords[i][0]},{ps.coords[i][1]})"
              + (f"\nstyle loss {d[k]:.3g}" if d is not None else "") for k, i in enumerate(idx)]
    out = out_file(out, "reconstructions.png", (".png",))
    out.parent.mkdir(parents=True, exist_ok=True)
    reconstruction_figure(X, R, out, labels=labels,
                          caption=f"Texture-VAE reconstructions (decoded posterior mean; a noise "
                                  "decoder keeps the draw closest in style loss), "
                                  f"model {model}; label: micrograph (y,x) and style loss of "
                                  "the pair.")
    npz = write_npz(out.with_suffix(".npz"), originals=X, reconstructions=R,
                    sources=ps.sources[idx], micrograph_ids=ps.micrograph_ids[idx],
                    coords=ps.coords[idx], **({"style_loss": d} if d is not None else {}))
    click.echo(f"wrote {out} and {npz}")


@click.command("generate")
@model_option()
@n_option(16, "Number of samples.")
@seed_option("Seed of z ~ N(0, I).")
@out_option("Folder for samples.png (grid), sample_NNN.png and samples.npz.", required=True)
@quiet_option
@handle_errors
def generate_cmd(model, n, seed, out, quiet):
    """Sample new microstructure patches from the prior z ~ N(0, I)."""
    from ..figures import grid_figure, write_npz, write_png

    enc = _load_decoder_model(model)
    S = enc.sample(n, seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(S):
        write_png(s, out / f"sample_{i:03d}.png")
    write_npz(out / "samples.npz", samples=S)
    grid = grid_figure(S, out / "samples.png",
                       title=f"{n} samples from the prior z ~ N(0, I), seed {seed}",
                       caption=f"model {model}")
    click.echo(f"wrote {grid}, {n} sample_NNN.png and samples.npz in {out}")


@click.command("traverse")
@model_option()
@click.option("--image", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Micrograph to take the patch from.")
@scale_options
@click.option("--at", default=None, metavar="Y,X",
              help="Top-left corner of the patch in the image, after resampling to the model's "
                   "scale (default: the centre patch).")
@click.option("--dims", required=True, metavar="D1,D2,...|auto",
              help="Latent dimensions, one row each; or 'auto': for each descriptor (area "
                   "fraction, particle density, mean diameter, nodularity) the top-ranked "
                   "dimension: those whose traversal changes it monotonically in the decoded "
                   "image first, by how far; each row labelled by what it moves (ranked as "
                   "`matrep interpret` does, on --auto-bases patches of --image).")
@click.option("--auto-bases", default=8, type=click.IntRange(1), show_default=True,
              help="With --dims auto: patches of the image (the shown one first, on a "
                   "non-overlapping grid) whose latents are traversed from -3 to 3 to rank the "
                   "dimensions; the grid's descriptor IQR scales the ranges.")
@click.option("--range", "vrange", nargs=2, type=float, default=(-4.0, 4.0), show_default=True,
              help="Values of the varied dimension in the figure: from LO to HI.")
@click.option("--steps", default=10, type=click.IntRange(2), help="Number of values.")
@out_option("Folder for traversal.png (the figure) and traversal.npz (the arrays). "
            "(Deprecated: a path ending in .png is the figure; the .npz goes beside it.)",
            required=True, file_form=True)
@quiet_option
@handle_errors
def traverse_cmd(model, image, at, dims, auto_bases, vrange, steps, out, quiet, scale):
    """Latent traversal: one row per dimension, the original patch first (paper Fig. 6).

    `--dims auto` picks the dimensions by what their traversal does to the measured graphite
    descriptors of the decoded image (docs/metrics.md) and labels each row, e.g.
    "dim 17: area fraction ↑". The image is resampled to the scale the model was trained at
    (its fit.json), like `matrep encode` does; --scale overrides it.
    """
    import numpy as np

    from matrep.io import read_micrograph
    from ..figures import traversal_figure, write_npz

    from ..errors import BadInputError

    from ..scale import as_plan

    enc = _load_decoder_model(model)
    P = int(enc.patch_size_)
    plan = as_plan(to_options(scale, models=[model], quiet=quiet), [image])
    img = plan.resample(image, read_micrograph(image))
    H, W = img.shape
    if H < P or W < P:
        raise BadInputError(image, f"image {H}x{W} is smaller than the model's patch {P}x{P}")
    if at is None:
        y, x = (H - P) // 2, (W - P) // 2
    else:
        y, x = _ints(at, "--at")[:2]
        if not (0 <= y <= H - P and 0 <= x <= W - P):
            raise BadInputError(image, f"--at {y},{x} puts the {P}x{P} patch outside the "
                                       f"{H}x{W} image")
    patch = img[y:y + P, x:x + P]
    labels, how = None, ""
    if dims.strip().lower() == "auto":
        from ..evaluation import traversal_effects

        grid = [(gy, gx) for gy in range(0, H - P + 1, P) for gx in range(0, W - P + 1, P)]
        ref = np.stack([patch] + [img[gy:gy + P, gx:gx + P] for gy, gx in grid])
        pick = np.random.default_rng(0).permutation(np.arange(1, len(ref)))[:auto_bases - 1]
        ranking = traversal_effects(enc, ref[np.r_[0, pick]], reference=ref,
                                    log=_echo(quiet))
        dd, labels = ranking.auto_dims()
        if not dd:
            raise click.ClickException(f"{model}: no latent dimension changes a measured "
                                       f"descriptor of the decoded image of {Path(image).name}; "
                                       "pick them with --dims D1,D2,...")
        how = (f" Rows: for each descriptor the top-ranked dimension (traversal -3..3, "
               f"{ranking.n_bases} patches of the image; monotone ones first, by how far they "
               f"move it).")
        for lab in labels:
            _echo(quiet)(lab)
    else:
        dd = _ints(dims, "--dims")
    values = np.linspace(vrange[0], vrange[1], steps)
    rows = enc.traverse(patch, dd, values)
    out = out_file(out, "traversal.png", (".png",))
    out.parent.mkdir(parents=True, exist_ok=True)
    traversal_figure(patch, rows, dd, values, out, labels=labels,
                     caption=f"Latent traversal of {Path(image).name} at (y, x) = ({y}, {x}): each "
                             f"row sets one dimension of z = Enc(x) to the values above, the others "
                             f"unchanged; model {model}.{how}")
    npz = write_npz(out.with_suffix(".npz"), original=patch, rows=rows, dims=np.array(dd),
                    values=values, **({"labels": np.array(labels)} if labels else {}))
    click.echo(f"wrote {out} and {npz}")
