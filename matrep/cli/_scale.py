"""The physical-scale options, defined once and shared by every command that reads micrographs.

``@scale_options`` adds ``--scale``, ``--pixel-size``, ``--pixel-size-column``,
``--pixel-size-labels``, ``--min-pixel-size`` and ``--max-pixel-size`` to a command and hands
the command one ``scale`` argument (a :class:`ScaleArgs`); :func:`to_options` turns it into the
library's :class:`matrep.scale.ScaleOptions`. The rules are in :mod:`matrep.scale` and
``docs/scale.md``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class ScaleArgs:
    """The scale options as given on the command line."""

    scale: object = None
    pixel_size: float | None = None
    pixel_size_column: str | None = None
    pixel_size_labels: str | None = None
    min_pixel_size: float | None = None
    max_pixel_size: float | None = None


def _parse_scale(ctx, param, value):
    from ..errors import BadInputError
    from ..scale import parse_scale

    try:
        return parse_scale(value)
    except BadInputError:
        raise click.BadParameter(f"expected a pixel size in micrometres per pixel (a positive "
                                 f"number) or 'auto', got {value!r}") from None


_POSITIVE = click.FloatRange(0, min_open=True)

_OPTIONS = [
    click.option("--scale", "scale_value", default=None, metavar="UM_PER_PX|auto",
                 callback=_parse_scale,
                 help="Resample every micrograph to this pixel size (micrometres per pixel) "
                      "before patching, so every patch covers the same area; 'auto' picks the "
                      "coarsest pixel size of the finest 90% of the micrographs. Upsampling "
                      "beyond 2x is refused for that micrograph (left out with a warning). "
                      "Default: a model's recorded scale, else no resampling. See docs/scale.md."),
    click.option("--pixel-size", default=None, type=_POSITIVE, metavar="UM_PER_PX",
                 help="Pixel size of every micrograph (micrometres per pixel); overrides labels "
                      "and file metadata."),
    click.option("--pixel-size-column", default=None, metavar="COLUMN",
                 help="Labels column with each micrograph's pixel size in um/px (default: "
                      "pixel_size_um if present, else the scale-bar pair micron_bar / "
                      "micron_bar_px); 'micron_bar' selects the pair."),
    click.option("--pixel-size-labels", default=None,
                 type=click.Path(exists=True, dir_okay=False),
                 help="CSV holding the pixel-size column (default: --labels, where the command "
                      "has one)."),
    click.option("--min-pixel-size", default=None, type=_POSITIVE, metavar="UM_PER_PX",
                 help="Use only micrographs with at least this pixel size."),
    click.option("--max-pixel-size", default=None, type=_POSITIVE, metavar="UM_PER_PX",
                 help="Use only micrographs with at most this pixel size."),
]


def scale_options(func):
    """Add the scale options to a click command; it receives them as ``scale=ScaleArgs``."""

    @functools.wraps(func)
    def wrapper(*args, **kw):
        kw["scale"] = ScaleArgs(kw.pop("scale_value"), kw.pop("pixel_size"),
                                kw.pop("pixel_size_column"), kw.pop("pixel_size_labels"),
                                kw.pop("min_pixel_size"), kw.pop("max_pixel_size"))
        return func(*args, **kw)

    for o in reversed(_OPTIONS):
        wrapper = o(wrapper)
    return wrapper


def to_options(args: ScaleArgs | None, *, labels=None, file_column: str = "file", models=(),
               quiet: bool = False):
    """:class:`matrep.scale.ScaleOptions` for a command.

    Parameters
    ----------
    args : ScaleArgs from :func:`scale_options` (None: defaults)
    labels : the command's labels CSV, used when ``--pixel-size-labels`` is not given
    models : model folders whose recorded training scale applies when ``--scale`` is not given
    """
    from ..scale import ScaleOptions, model_scale, unscaled_model_warnings

    args = args or ScaleArgs()

    def warn(msg):
        click.echo(f"warning: {msg}", err=True)

    recorded = [(m, s) for m in models if m and (s := model_scale(m)) is not None]
    ms = recorded[0][1] if recorded else None
    if len({s for _, s in recorded}) > 1:
        warn("the models were trained at different scales ("
             + ", ".join(f"{m}: {s:g} um/px" for m, s in recorded)
             + f"); using {ms:g} um/px")
    target = args.scale if args.scale is not None else ms
    for line in unscaled_model_warnings(models, target):  # features would mix scales
        warn(line)
    if ms is not None and args.scale is None and not quiet:
        click.echo(f"resampling to {ms:g} um/px, the scale {recorded[0][0]} was trained at",
                   err=True)
    return ScaleOptions(scale=args.scale, pixel_size=args.pixel_size,
                        pixel_size_column=args.pixel_size_column,
                        labels=args.pixel_size_labels or labels, file_column=file_column,
                        min_pixel_size=args.min_pixel_size, max_pixel_size=args.max_pixel_size,
                        model_scale=ms, warn=warn)


def report_scale(ps, quiet: bool = False) -> None:
    """Print the scale lines of a patch set (distribution, target, left out)."""
    plan = getattr(ps, "scale", None)
    if plan is None or quiet:
        return
    for line in plan.describe():
        click.echo(line, err=True)
