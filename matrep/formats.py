"""Pixel size (and pixels) from microscope files.

:func:`read_pixel_size` returns the pixel size a file states about itself, in micrometres per
pixel, and where in the file it was found, or ``None`` when the file states none. Rules, in
order (the first that gives a value wins):

TIFF (read with ``tifffile``, tags only, no pixel data)

1. **FEI / Thermo Fisher** ``FEI_HELIOS`` (tag 34682) or ``FEI_SFEG`` (34680) metadata:
   ``[Scan] PixelWidth`` (metres; ``[EScan] PixelWidth`` as a fallback).
2. **Zeiss** ``CZ_SEM`` (34118): ``AP_IMAGE_PIXEL_SIZE`` (value with its unit, e.g. ``2.5 nm``;
   ``AP_PIXEL_SIZE`` as a fallback).
3. **Olympus** SIS (``OlympusSIS``, 33560): ``pixelsizex`` (metres, as tifffile decodes it).
4. **ImageJ** hyperstack metadata ``unit=micron`` (or nm, mm, ...) with the resolution tags
   read as pixels per that unit.
5. **Resolution tags** ``XResolution`` / ``ResolutionUnit`` in centimetres, millimetres or
   micrometres, or in inches unless the value is one of the printing/screen densities that
   image software writes by default (72, 96, 150, 300, 600 ... dpi, listed in
   :data:`PRINT_DPI`): those say how to print the picture, not how large a pixel was on the
   sample. ``ResolutionUnit`` NONE (without ImageJ's unit) gives nothing.

DM3 / DM4 / EMD (read with ``rosettasciio``, the HyperSpy project's reader; install it with
``pip install "matrep[formats]"``): the calibrated scale and units of the image's last
(x) signal axis.

PNG, JPEG and BMP are read as stating no pixel size: their density fields (pHYs, JFIF) are
printing densities in practice.

:func:`read_pixels` reads the image data of DM3/DM4/EMD files for :mod:`matrep.io`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInputError

#: Files whose pixel data is read through rosettasciio.
MICROSCOPE_EXTENSIONS = (".dm3", ".dm4", ".emd")
TIFF_EXTENSIONS = (".tif", ".tiff")

#: Dots per inch that image software writes when nobody measured anything.
PRINT_DPI = frozenset({72, 96, 100, 120, 150, 200, 240, 300, 350, 400, 600, 720, 1200, 2400})

#: Length units (as microscopes and readers spell them) in micrometres.
UNITS_UM = {
    "m": 1e6, "meter": 1e6, "metre": 1e6,
    "cm": 1e4, "mm": 1e3,
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "\\u00b5m": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "a": 1e-4, "å": 1e-4, "angstrom": 1e-4,
    "pm": 1e-6,
}

_FORMATS_HINT = 'install the reader with: pip install "matrep[formats]" (rosettasciio)'


@dataclass(frozen=True)
class FilePixelSize:
    """A pixel size found in a file: ``um_per_px`` and where (e.g. ``"tiff:FEI_HELIOS"``)."""

    um_per_px: float
    where: str


def unit_to_um(unit) -> float | None:
    """Micrometres per ``unit`` (``"nm"`` → 0.001), or None for an unknown unit.

    >>> unit_to_um("nm"), unit_to_um("µm"), unit_to_um("px")
    (0.001, 1.0, None)
    """
    if unit is None:
        return None
    u = str(unit).strip()
    return UNITS_UM.get(u, UNITS_UM.get(u.lower()))


def _positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


# ---------------------------------------------------------------------------------------
# TIFF
# ---------------------------------------------------------------------------------------
def _fei(tif) -> FilePixelSize | None:
    md = tif.fei_metadata
    if not md:
        return None
    tag = "FEI_HELIOS" if 34682 in tif.pages.first.tags else "FEI_SFEG"
    for section in ("Scan", "EScan"):
        v = _positive((md.get(section) or {}).get("PixelWidth"))
        if v is not None:
            return FilePixelSize(v * 1e6, f"tiff:{tag}[{section}]PixelWidth")
    return None


def _zeiss(tif) -> FilePixelSize | None:
    md = tif.sem_metadata
    if not md:
        return None
    for key in ("ap_image_pixel_size", "ap_pixel_size"):
        entry = md.get(key)
        if isinstance(entry, tuple) and len(entry) >= 3:
            v, f = _positive(entry[1]), unit_to_um(entry[2])
            if v is not None and f is not None:
                return FilePixelSize(v * f, f"tiff:CZ_SEM:{key.upper()}")
    return None


def _olympus(tif) -> FilePixelSize | None:
    try:
        md = tif.sis_metadata
    except Exception:  # noqa: BLE001 - a damaged vendor block is just absent metadata
        return None
    v = _positive((md or {}).get("pixelsizex"))
    return FilePixelSize(v * 1e6, "tiff:OlympusSIS:pixelsizex") if v is not None else None


def _imagej(tif) -> FilePixelSize | None:
    md = tif.imagej_metadata
    if not md or "unit" not in md:
        return None
    f = unit_to_um(md["unit"])
    xres = _positive(tif.pages.first.get_resolution()[0])
    if f is None or xres is None or xres == 1.0:
        return None
    return FilePixelSize(f / xres, f"tiff:ImageJ(unit={md['unit']})")


def _resolution_tags(page) -> FilePixelSize | None:
    if 282 not in page.tags:
        return None
    unit = int(page.resolutionunit)
    xres = _positive(page.get_resolution()[0])
    if xres is None:
        return None
    per_unit_um = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}.get(unit)
    if per_unit_um is None:  # NONE: no absolute unit
        return None
    if unit == 2 and round(xres, 6) in PRINT_DPI:
        return None
    name = {2: "inch", 3: "cm", 4: "mm", 5: "um"}[unit]
    return FilePixelSize(per_unit_um / xres, f"tiff:XResolution(per {name})")


def _tiff_pixel_size(path: Path) -> FilePixelSize | None:
    import tifffile

    from .io import LibraryLog

    try:
        with LibraryLog("tifffile"), tifffile.TiffFile(str(path)) as tif:
            for rule in (_fei, _zeiss, _olympus, _imagej):
                found = rule(tif)
                if found is not None:
                    return found
            return _resolution_tags(tif.pages.first)
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
        raise BadInputError(path, f"not a readable TIFF ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------------------
# DM3 / DM4 / EMD through rosettasciio
# ---------------------------------------------------------------------------------------
def _rsciio_reader(path: Path):
    suffix = path.suffix.lower()
    try:
        if suffix in (".dm3", ".dm4"):
            from rsciio.digitalmicrograph import file_reader
        else:
            from rsciio.emd import file_reader
    except ImportError:
        raise BadInputError(path, f"reading {suffix} files needs rosettasciio; "
                                  f"{_FORMATS_HINT}") from None
    return file_reader


def _image_signal(path: Path) -> dict:
    """The first signal of the file with two signal (not navigation) axes."""
    reader = _rsciio_reader(path)
    try:
        signals = reader(str(path), lazy=False)
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
        raise BadInputError(path, f"not a readable {path.suffix.lower()} file "
                                  f"({type(exc).__name__}: {exc})") from None
    for s in signals:
        axes = [a for a in s.get("axes", []) if not a.get("navigate", False)]
        if len(axes) == 2 and np.ndim(s.get("data")) >= 2:
            return s
    raise BadInputError(path, "holds no 2-D image signal (found "
                              + ", ".join(f"shape {np.shape(s.get('data'))}" for s in signals)
                              + ")")


def _signal_pixel_size(path: Path, s: dict) -> FilePixelSize | None:
    axes = [a for a in s.get("axes", []) if not a.get("navigate", False)]
    x = axes[-1]
    f, v = unit_to_um(x.get("units")), _positive(x.get("scale"))
    if f is None or v is None:
        return None
    return FilePixelSize(v * f, f"{path.suffix.lower().lstrip('.')}:axis[{x.get('name', 'x')}]"
                                f"(scale {x.get('scale')} {x.get('units')})")


def read_pixels(path) -> np.ndarray:
    """The image of a DM3/DM4/EMD file as a 2-D array (its own dtype).

    Raises
    ------
    BadInputError
        When rosettasciio is missing, the file is unreadable, or it holds no 2-D image.
    """
    path = Path(path)
    data = np.asarray(_image_signal(path)["data"])
    while data.ndim > 2:  # a stack: its first image
        data = data[0]
    return data


# ---------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------
def read_pixel_size(path) -> FilePixelSize | None:
    """The pixel size a file states about itself (see the module docstring), or None.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    FilePixelSize or None
        ``um_per_px`` in micrometres per pixel and ``where`` it was found.

    Raises
    ------
    BadInputError
        For a TIFF/DM/EMD file that cannot be read, or a DM/EMD file without rosettasciio.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_EXTENSIONS:
        return _tiff_pixel_size(path)
    if suffix in MICROSCOPE_EXTENSIONS:
        return _signal_pixel_size(path, _image_signal(path))
    return None


def can_state_pixel_size(path) -> bool:
    """Whether matrep looks for a pixel size inside files like ``path`` (by extension)."""
    return Path(path).suffix.lower() in TIFF_EXTENSIONS + MICROSCOPE_EXTENSIONS


__all__ = ["FilePixelSize", "MICROSCOPE_EXTENSIONS", "PRINT_DPI", "UNITS_UM",
           "can_state_pixel_size",
           "read_pixel_size", "read_pixels", "unit_to_um"]
