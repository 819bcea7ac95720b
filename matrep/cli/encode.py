"""`matrep encoders` and `matrep encode`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._common import handle_errors, progress, quiet_option
from ._scale import report_scale, scale_options, to_options


def parse_params(pairs) -> dict:
    """``key=value`` strings → dict; values parsed as JSON when possible (``3``, ``true``, ``[1,2]``)."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint="--param")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def parse_crop(value):
    if value is None:
        return None
    parts = value.replace(" ", "").split(",")
    if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
        raise click.BadParameter(f"expected TOP,LEFT,HEIGHT,WIDTH (4 integers), got {value!r}",
                                 param_hint="--crop")
    return tuple(int(p) for p in parts)


def window_options(func=None, *, stride: int = 50):
    """--stride, --crop and --crop-bottom (for commands whose patch size comes from a model);
    ``@window_options`` or ``@window_options(stride=128)`` for another default stride."""
    if func is None:
        return lambda f: window_options(f, stride=stride)
    opts = [
        click.option("--stride", default=stride, type=click.IntRange(1), show_default=True,
                     help="Sliding-window stride."),
        click.option("--crop", default=None, metavar="TOP,LEFT,HEIGHT,WIDTH",
                     help="Crop box applied to every image before patching (default: none)."),
        click.option("--crop-bottom", default=0, type=click.IntRange(0),
                     help="Rows removed at the bottom first (UHCS data bar: 38)."),
    ]
    for o in reversed(opts):
        func = o(func)
    return func


def patch_options(func=None, *, images_required: bool = True, images_help: str = ""):
    """The patching options shared by commands that read micrographs.

    ``@patch_options`` or ``@patch_options(images_required=False, images_help="...")`` (the
    command then checks that it has images).
    """
    if func is None:
        return lambda f: patch_options(f, images_required=images_required,
                                       images_help=images_help)
    func = click.option("--skip-bad", is_flag=True,
                        help="Skip unreadable or too-small images and list them at the end.")(func)
    func = window_options(func)
    func = click.option("--patch", default=128, type=click.IntRange(8),
                        help="Patch size in pixels.")(func)
    return click.option("--images", "images", required=images_required, multiple=True,
                        help="Folder, glob pattern or file of micrographs (repeatable)."
                             + (f" {images_help}" if images_help else ""))(func)


def read_patchset(images, patch, stride, crop, crop_bottom, skip_bad, quiet, lazy=False, **kw):
    from ..io import load_patches

    imgs = list(images) if len(images) > 1 else images[0]
    if lazy:  # patch records now, pixels when encoded (matrep.patchsource)
        from ..patchsource import lazy_patches

        load_patches = lazy_patches
    return load_patches(imgs, patch=patch, stride=stride, crop=parse_crop(crop),
                        crop_bottom=crop_bottom, skip_bad=skip_bad,
                        progress=lambda it: progress(it, desc="read", quiet=quiet), **kw)


def report_skipped(ps):
    for path, problem in ps.skipped:
        click.echo(f"skipped {path}: {problem}", err=True)


@click.command("encoders")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def encoders_cmd(as_json):
    """List the installed encoders (built-in and plugins).

    Encoders register in the `matrep.encoders` entry-point group; a plugin that fails to load
    is reported as a warning and skipped.
    """
    import warnings

    from ..registry import list_encoders

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        infos = list_encoders()
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    rows = [{"name": i.name, "distribution": i.distribution, "version": i.version,
             "trainable": i.trainable, "can_decode": i.can_decode, "description": i.description}
            for i in infos]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    head = ("name", "distribution", "version", "trainable", "decodes", "description")
    table = [(r["name"], r["distribution"], r["version"], "yes" if r["trainable"] else "no",
              "yes" if r["can_decode"] else "no", r["description"]) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    for row in (head, *table):
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row[:-1], widths[:-1])) + "  " + row[-1])


@click.command("encode")
@click.option("--method", required=True, help="Encoder name (see `matrep encoders`).")
@click.option("--model", "model", default=None, type=click.Path(exists=True, file_okay=False),
              help="A saved/trained model folder (e.g. runs/NAME); default: a fresh encoder "
                   "(trainable ones are fitted on the encoded patches).")
@patch_options
@scale_options
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="HDF5 feature store to create or extend.")
@click.option("--labels", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CSV of labels (a file column + property columns), stored with the features.")
@click.option("--file-column", default="file", help="Column of --labels naming the image files.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Encoder parameter (repeatable; values parsed as JSON), e.g. n_components=8.")
@click.option("--chunk", default=256, type=click.IntRange(1),
              help="Patches per checkpointed chunk.")
@click.option("--resume/--restart", default=True,
              help="Continue an interrupted encode from its finished chunks, or start over.")
@click.option("--lazy/--in-memory", default=None,
              help="Read each patch from its micrograph when it is encoded (bounded memory, see "
                   "docs/distributed.md) instead of all patches up front. Default: lazy under "
                   "torchrun, in memory otherwise.")
@quiet_option
@handle_errors
def encode_cmd(method, model, images, patch, stride, crop, crop_bottom, skip_bad, out, labels,
               file_column, params, chunk, resume, lazy, quiet, scale):
    """Encode micrographs into an HDF5 feature store.

    Reads the images, cuts patches (size --patch, step --stride), runs the encoder, and writes
    the features with their provenance to --out. Re-running with the same images, encoder and
    parameters reuses the stored features; an interrupted run resumes. Encodes into one --out
    take turns (a lock beside it, .OUT.lock), so all their features land.

    Under `torchrun --nproc-per-node N -m matrep encode ...` the N processes share the chunks
    and rank 0 writes the one store, identical to a single-process run.
    """
    from .. import distributed

    if not distributed.in_torchrun():
        return _encode(method, model, images, patch, stride, crop, crop_bottom, skip_bad, out,
                       labels, file_column, params, chunk, resume, bool(lazy), quiet, None,
                       scale=scale)
    dist = distributed.init()
    try:
        return _encode(method, model, images, patch, stride, crop, crop_bottom, skip_bad, out,
                       labels, file_column, params, chunk, resume, lazy is not False,
                       quiet or not dist.is_main, dist, scale=scale)
    finally:
        distributed.destroy(dist)


def _encode(method, model, images, patch, stride, crop, crop_bottom, skip_bad, out, labels,
            file_column, params, chunk, resume, lazy, quiet, dist, scale=None):
    from .. import registry
    from ..errors import EncoderContractError
    from ..labels import match_labels
    from ..pipeline import encode_patchset

    # validate the method first: a typo must not cost a full image read
    registry.encoder_class(method)
    kw = parse_params(params)
    if model:
        encoder = registry.load_model(model)
        if encoder.name != method:
            raise EncoderContractError(f"{model}: holds a {encoder.name!r} model, but --method "
                                       f"is {method!r}")
        if kw:
            encoder.set_params(**kw)
    else:
        encoder = registry.get_encoder(method, **kw)
    main = dist is None or dist.is_main
    opts = to_options(scale, labels=labels, file_column=file_column, models=[model],
                      quiet=quiet or not main)
    ps = read_patchset(images, patch, stride, crop, crop_bottom, skip_bad, quiet, lazy=lazy,
                       scale=opts, **({"dist": dist} if lazy and dist is not None else {}))
    table = None
    if labels:
        m = match_labels(ps, labels, file_column=file_column, warn=False)
        for line in (m.describe() if main else []):
            click.echo(f"warning: {line}", err=True)
        table = m.table
    if dist is not None and dist.is_distributed and main:
        click.echo(f"encoding on {dist.world_size} processes ({dist.backend})", err=True)
    res = encode_patchset(encoder, ps, out, labels=table, labels_source=str(labels or ""),
                          chunk=chunk, resume=resume,
                          progress=None if quiet else (lambda **k: progress(quiet=quiet, **k)),
                          log=lambda s: None if quiet else click.echo(s, err=True), dist=dist)
    if not main:
        return
    report_skipped(ps)
    report_scale(ps, quiet)
    what = "reused stored" if res.reused else "wrote"
    if res.resumed_chunks:
        what += f" (resumed {res.resumed_chunks} finished chunks)"
    click.echo(f"{what} {res.n_patches} x {res.n_features} features of {len(ps.files)} "
               f"micrograph(s) as features/{res.key} in {Path(out)}")
