"""Where a micrograph's pixel size comes from: the option, a labels column, the file's metadata.

:func:`resolve_pixel_sizes` applies the rules of :mod:`matrep.scale`; see there.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import BadInputError, LabelsError

#: Relative difference above which a label and the file's metadata "contradict".
CONFLICT_RTOL = 0.01
#: The conventional labels column (micrometres per pixel).
PIXEL_SIZE_COLUMN = "pixel_size_um"
#: The scale-bar pair (UHCS): bar length, bar length in pixels, and optionally its unit.
BAR_COLUMNS = ("micron_bar", "micron_bar_px")
BAR_UNITS_COLUMN = "micron_bar_units"
UNKNOWN = "unknown"

_WHERE_TO_GET_ONE = ("give --pixel-size, a labels column pixel_size_um (or micron_bar and "
                     "micron_bar_px), or a file whose metadata states it (TIFF tags, DM3/DM4/EMD)")


class ScaleWarning(UserWarning):
    """A micrograph left out or a pixel size overridden because of its physical scale."""


@dataclass(frozen=True)
class PixelSize:
    """A micrograph's pixel size and where it came from.

    Attributes
    ----------
    um_per_px : float or None — micrometres per pixel; None when unknown
    source : str — ``option``, ``labels:<column>``, ``file:<where>`` or ``unknown``
    """

    um_per_px: float | None
    source: str

    @property
    def known(self) -> bool:
        return self.um_per_px is not None


# ---------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------
def _number(value, what: str, path) -> float:
    """A finite positive float, or a BadInputError naming ``path`` and ``what``."""
    shown = value.item() if isinstance(value, np.generic) else value
    shown = repr(shown) if isinstance(shown, str) else shown
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BadInputError(path, f"{what} must be a positive number, got {shown}") from None
    if not math.isfinite(v) or v <= 0:
        raise BadInputError(path, f"{what} must be a positive number, got {shown}")
    return v


def parse_scale(value) -> float | str | None:
    """``--scale`` value: a positive number of um/px, ``"auto"``, or None.

    >>> parse_scale("0.5"), parse_scale("auto"), parse_scale(None)
    (0.5, 'auto', None)
    """
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return _number(value, "--scale (micrometres per pixel, or auto)", None)


def scale_bar_pixel_size(length, length_px, unit="um", *, path=None) -> float:
    """Pixel size (um/px) from a scale bar: ``length`` (in ``unit``) over ``length_px`` pixels.

    >>> scale_bar_pixel_size(10, 103)  # doctest: +ELLIPSIS
    0.0970873...
    >>> scale_bar_pixel_size(500, 50, "nm")
    0.01
    """
    from ..formats import unit_to_um

    n = _number(length, f"scale bar length {BAR_COLUMNS[0]}", path)
    px = _number(length_px, f"scale bar length in pixels {BAR_COLUMNS[1]}", path)
    f = 1.0 if unit is None or (isinstance(unit, float) and math.isnan(unit)) else unit_to_um(unit)
    if f is None:
        raise BadInputError(path, f"unknown scale bar unit {BAR_UNITS_COLUMN}={unit!r} "
                                  "(expected um, nm, mm, ...)")
    return n * f / px


def label_column_kind(columns, column: str | None = None) -> tuple[str, ...] | None:
    """Which labels columns give the pixel size: ``(column,)``, the bar pair, or None.

    ``column`` names a column explicitly (``"micron_bar"`` or ``"micron_bar/micron_bar_px"``
    select the pair); otherwise ``pixel_size_um`` if present, else the pair if both present.
    """
    cols = set(map(str, columns))
    if column is not None:
        if column in ("micron_bar", "micron_bar/micron_bar_px") and set(BAR_COLUMNS) <= cols:
            return BAR_COLUMNS
        if column not in cols:
            return ()
        return (column,)
    if PIXEL_SIZE_COLUMN in cols:
        return (PIXEL_SIZE_COLUMN,)
    if set(BAR_COLUMNS) <= cols:
        return BAR_COLUMNS
    return None


def label_pixel_sizes(labels, files, *, column: str | None = None,
                      file_column: str | None = None) -> dict[str, PixelSize]:
    """Pixel sizes of ``files`` from a labels table (only files with a value are returned).

    Parameters
    ----------
    labels : pandas.DataFrame from :func:`matrep.labels.read_labels`, or a CSV path
    files : list of paths
    column : see :func:`label_column_kind`

    Raises
    ------
    LabelsError
        When ``column`` is named but absent.
    BadInputError
        Naming the image when its value is zero, negative or not a number.
    """
    from ..labels import match_labels, read_labels

    if not hasattr(labels, "columns"):
        labels = read_labels(labels, file_column=file_column or "file")
    src = labels.attrs.get("path", "labels")
    kind = label_column_kind(labels.columns, column)
    if kind == ():
        raise LabelsError(f"{src}: no pixel-size column {column!r} (columns are: "
                          f"{', '.join(map(str, labels.columns))}); pass --pixel-size-column "
                          f"{PIXEL_SIZE_COLUMN} or micron_bar")
    if kind is None:
        return {}
    files = [str(f) for f in files]

    class _Files:  # what match_labels needs of a PatchSet
        sources = np.array(files)

    try:
        tab = match_labels(_Files, labels, file_column=file_column, warn=False).table
    except LabelsError:
        return {}  # no row matches any image: no pixel size from these labels
    out = {}
    for i, f in enumerate(files):
        if kind == BAR_COLUMNS:
            a, b = tab[BAR_COLUMNS[0]].iloc[i], tab[BAR_COLUMNS[1]].iloc[i]
            if _missing(a) and _missing(b):
                continue
            unit = tab[BAR_UNITS_COLUMN].iloc[i] if BAR_UNITS_COLUMN in tab.columns else None
            out[f] = PixelSize(scale_bar_pixel_size(a, b, None if _missing(unit) else unit, path=f),
                               "labels:micron_bar/micron_bar_px")
        else:
            v = tab[kind[0]].iloc[i]
            if _missing(v):
                continue
            out[f] = PixelSize(_number(v, f"pixel size {kind[0]} (um/px)", f), f"labels:{kind[0]}")
    return out


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or \
        (isinstance(v, str) and v.strip() == "")


def resolve_pixel_sizes(files, *, pixel_size=None, labels=None, column: str | None = None,
                        file_column: str | None = None, read_metadata: bool = True,
                        warn: Callable[[str], None] | None = None) -> dict[str, PixelSize]:
    """Every file's pixel size (or unknown) by the rules of this module.

    Parameters
    ----------
    files : list of paths
    pixel_size : float, optional — one pixel size (um/px) for every file
    labels : DataFrame or CSV path, optional — the labels holding ``column``
    column : str, optional — see :func:`label_column_kind`
    read_metadata : bool, default True — look into TIFF/DM/EMD files (also to check labels)
    warn : callable(str), optional — receives conflict warnings (default: ``warnings.warn``)

    Returns
    -------
    dict mapping ``str(path)`` to :class:`PixelSize`.
    """
    from ..formats import can_state_pixel_size, read_pixel_size

    warn = warn or (lambda m: warnings.warn(m, ScaleWarning, stacklevel=3))
    files = [str(f) for f in files]
    given = {}
    if pixel_size is not None:
        v = _number(pixel_size, "--pixel-size (um/px)", None)
        given = {f: PixelSize(v, "option") for f in files}
    elif labels is not None:
        given = label_pixel_sizes(labels, files, column=column, file_column=file_column)
    elif column is not None:
        raise LabelsError(f"--pixel-size-column {column!r} needs a labels CSV (--labels or "
                          "--pixel-size-labels)")
    out = {}
    for f in files:
        try:
            found = read_pixel_size(f) if read_metadata and can_state_pixel_size(f) else None
        except BadInputError:  # unreadable: the image reader names the problem (or skips it)
            found = None
        g = given.get(f)
        if g is not None:
            off = found is not None and \
                abs(found.um_per_px - g.um_per_px) > CONFLICT_RTOL * g.um_per_px
            if off:
                warn(f"{f}: pixel size {g.um_per_px:.6g} um/px from {g.source} contradicts "
                     f"{found.um_per_px:.6g} um/px in the file ({found.where}); using "
                     f"{g.um_per_px:.6g} um/px from {g.source}")
            out[f] = g
        elif found is not None:
            out[f] = PixelSize(float(found.um_per_px), f"file:{found.where}")
        else:
            out[f] = PixelSize(None, UNKNOWN)
    return out
