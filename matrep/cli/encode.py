"""`matrep encoders` and `matrep encode`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._common import (file_column_option, handle_errors, labels_option, model_option, out_file,
                      out_option, param_option, parse_params, patch_options, progress,
                      quiet_option, read_patchset, report_skipped, resume_option)
from ._scale import report_scale, scale_options, to_options

STORE = "features.h5"


@click.command("encoders")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@quiet_option
@handle_errors
def encoders_cmd(as_json, quiet):
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
             "trainable": i.trainable, "generative": i.generative,
             "can_decode": i.generative,  # the flag's old name, kept for scripts that read it
             "description": i.description}
            for i in infos]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    head = ("name", "distribution", "version", "trainable", "generative", "description")
    table = [(r["name"], r["distribution"], r["version"], "yes" if r["trainable"] else "no",
              "yes" if r["generative"] else "no", r["description"]) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    for row in (head, *table):
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row[:-1], widths[:-1])) + "  " + row[-1])


@click.command("encode")
@click.option("--method", default=None,
              help="Encoder name (see `matrep encoders`). Required without --model; with "
                   "--model it defaults to the model's encoder.")
@model_option("A saved/trained model folder (e.g. runs/NAME); default: a fresh encoder "
              "(trainable ones are fitted on the encoded patches).", required=False)
@patch_options
@scale_options
@out_option(f"Folder of the HDF5 feature store: creates or extends FOLDER/{STORE}. A path "
            "ending in .h5/.hdf5 (or an existing file) names the store itself.", required=True,
            file_form=True, metavar="FOLDER|STORE.h5")
@labels_option("CSV of labels (a file column + property columns), stored with the features.")
@file_column_option
@param_option()
@click.option("--chunk", default=256, type=click.IntRange(1),
              help="Patches per checkpointed chunk.")
@resume_option("Continue an interrupted encode from its finished chunks.")
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
    the features with their provenance to OUT/features.h5 (or to --out itself when it names
    a .h5 file). Re-running with the same images,
    encoder and parameters reuses the stored features; an interrupted run resumes. Encodes into
    one store take turns (a lock beside it, .features.h5.lock), so all their features land.

    Under `torchrun --nproc-per-node N -m matrep encode ...` the N processes share the chunks
    and rank 0 writes the one store, identical to a single-process run.
    """
    from .. import distributed

    if method is None and model is None:
        raise click.UsageError("Missing option '--method' (or give --model).")
    out = out_file(out, STORE, (".h5", ".hdf5"), deprecated=False)
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
    if method is not None:
        registry.encoder_class(method)
    kw = parse_params(params)
    if model:
        encoder = registry.load_model(model)
        if method is not None and encoder.name != method:
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
