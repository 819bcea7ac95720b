"""Micrographs in, patches out.

Reading rules (documented in ``docs/io.md``):

* Formats: PNG, JPEG, TIFF (8-bit, 16-bit, 32-bit integer, float), BMP.
* Colour: RGB(A) is converted to grey by ITU-R BT.601 luma, ``0.299 R + 0.587 G + 0.114 B``
  (what PIL's ``"L"`` mode does); an alpha channel is dropped (micrographs carry no
  transparency; a non-opaque alpha gives a warning). Palette images are expanded first.
* Intensity scaling to [0, 1], by dtype: ``bool`` → {0, 1}; unsigned integers divide by the
  dtype's maximum (``uint8``/255, ``uint16``/65535, ...); signed integers map
  [min, max] of the dtype to [0, 1]; floats already in [0, 1] are kept, other finite floats
  are min-max scaled per image (a constant image becomes 0). NaN or inf in a float image is
  an error.
* Size limit: an image whose header claims more than :func:`max_image_pixels` pixels
  (default 178,956,970, PIL's own decompression-bomb limit) is refused before its pixels are
  decoded; set ``MATREP_MAX_IMAGE_PIXELS`` (a number, or ``0`` for no limit) to read bigger ones.
* Crop (before patching): ``crop=(top, left, height, width)`` and/or ``crop_bottom=N`` rows
  (the UHCS data bar is the bottom 38 rows).
* Patches: a sliding window of ``patch`` x ``patch`` with ``stride`` (paper: 128, 50); rows and
  columns that do not fill a last window are not used. Each patch records its source file,
  micrograph id (the file's path relative to the folder, without extension), and top-left
  ``y, x`` in the cropped image.
"""

from __future__ import annotations

import glob as _glob
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BadInputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp",
                    ".dm3", ".dm4", ".emd")  # the last three via matrep.formats (rosettasciio)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
ENV_MAX_PIXELS = "MATREP_MAX_IMAGE_PIXELS"
#: PIL's own hard limit (twice ``PIL.Image.MAX_IMAGE_PIXELS``): about 13,400 x 13,400 pixels.
DEFAULT_MAX_PIXELS = 178_956_970
_PIL_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
def list_images(source, *, recursive: bool = False) -> list[Path]:
    """Image files of a folder, a glob pattern, a single file, or a list of those.

    Parameters
    ----------
    source : str, Path or list of them
        A folder (its files with extensions in :data:`IMAGE_EXTENSIONS`), a glob pattern
        (``"data/*.png"``), or a file.
    recursive : bool, default False
        Look into sub-folders of a folder.

    Returns
    -------
    list of Path, sorted by name.

    Raises
    ------
    BadInputError
        If nothing is found.
    """
    if isinstance(source, (list, tuple)):
        out: list[Path] = []
        for s in source:
            out.extend(list_images(s, recursive=recursive))
        return out
    src = Path(source)
    if src.is_dir():
        it = src.rglob("*") if recursive else src.iterdir()
        files = sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not p.name.startswith("."))
        if not files:
            raise BadInputError(src, "no images found (expected files ending in "
                                     f"{', '.join(IMAGE_EXTENSIONS)})")
        return files
    if src.is_file():
        return [src]
    if src.is_symlink():
        raise BadInputError(src, "is a broken symbolic link (or a link loop)")
    if any(ch in str(source) for ch in "*?["):
        files = sorted(Path(p) for p in _glob.glob(str(source), recursive=True) if Path(p).is_file())
        if not files:
            raise BadInputError(source, "the pattern matches no files")
        return files
    raise BadInputError(src, "no such file or folder")


def to_unit_float(arr: np.ndarray, *, path=None) -> np.ndarray:
    """Scale an image array to float32 in [0, 1] by the per-dtype rule of this module."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        return (arr.astype(np.float64) / np.iinfo(arr.dtype).max).astype(np.float32)
    if np.issubdtype(arr.dtype, np.signedinteger):
        info = np.iinfo(arr.dtype)
        return ((arr.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            bad = "NaN" if np.isnan(arr).any() else "inf"
            raise BadInputError(path, f"float image contains {bad} values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return arr.astype(np.float32)
        if hi == lo:
            return np.zeros(arr.shape, np.float32)
        return ((arr.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
    raise BadInputError(path, f"unsupported pixel type {arr.dtype}")


def to_grey(arr: np.ndarray, *, path=None) -> np.ndarray:
    """Convert (H, W), (H, W, 3) or (H, W, 4) to (H, W) by the luma rule (alpha dropped)."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] in (1, 2, 3, 4):
        c = arr.shape[-1]
        if c in (2, 4):
            alpha = arr[..., -1]
            if np.issubdtype(alpha.dtype, np.integer):
                opaque = alpha.min() == np.iinfo(alpha.dtype).max
            else:
                opaque = alpha.min() >= 1.0
            if not opaque:
                warnings.warn(f"{path}: alpha channel is not opaque; it is ignored", stacklevel=3)
            arr = arr[..., :-1]
            c -= 1
        if c == 1:
            return arr[..., 0]
        grey = arr.astype(np.float64) @ _LUMA
        if np.issubdtype(arr.dtype, np.integer):
            grey = np.clip(np.rint(grey), 0, np.iinfo(arr.dtype).max).astype(arr.dtype)
        return grey
    raise BadInputError(path, f"expected a grey or RGB(A) image, got array of shape {arr.shape}")


def max_image_pixels() -> int | None:
    """The largest image (in pixels) matrep decodes: ``$MATREP_MAX_IMAGE_PIXELS`` or the default.

    ``0`` (or ``none``) means no limit. The limit guards against decompression bombs: a small
    file whose header claims billions of pixels.
    """
    raw = os.environ.get(ENV_MAX_PIXELS, "").strip().replace("_", "").replace(",", "")
    if not raw:
        return DEFAULT_MAX_PIXELS
    if raw.lower() in ("0", "none", "off"):
        return None
    try:
        value = int(float(raw))
    except ValueError:
        value = -1
    if value < 0:
        raise BadInputError(None, f"${ENV_MAX_PIXELS} must be a number of pixels (0 for no limit), "
                                  f"got {os.environ[ENV_MAX_PIXELS]!r}")
    return value or None


def _check_pixels(path: Path, height: int, width: int, frames: int = 1) -> None:
    """Refuse an image whose header claims more pixels than :func:`max_image_pixels`."""
    limit = max_image_pixels()
    n = int(height) * int(width) * int(frames)
    size = f"{width}x{height}" + (f"x{frames} frames" if frames != 1 else "")
    if limit is not None and n > limit:
        raise BadInputError(path, f"image header claims {size} = {n:,} pixels, more than "
                                  f"the limit of {limit:,} (a decompression bomb?); if the image is "
                                  f"real, raise the limit with {ENV_MAX_PIXELS}={n}")


class LibraryLog(logging.Handler):
    """``with LibraryLog("tifffile") as log:`` keeps a library's log records (``log.messages``)
    off the terminal while it reads one file: matrep reports a bad file in its own one line."""

    def __init__(self, name: str):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self._logger = logging.getLogger(name)

    def emit(self, record):
        self.messages.append(" ".join(record.getMessage().split()))

    def __enter__(self):
        self._propagate = self._logger.propagate
        self._logger.addHandler(self)
        self._logger.propagate = False
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with LibraryLog("tifffile") as logs:
        try:
            with tifffile.TiffFile(str(path)) as tif:
                if not tif.series:
                    raise BadInputError(path, "TIFF holds no image")
                shape = [int(d) for d in tif.series[0].shape]
                if len(shape) >= 3 and shape[-1] in (1, 2, 3, 4):
                    shape = shape[:-1]  # colour channels
                shape = [1] * (2 - len(shape)) + shape
                _check_pixels(path, shape[-2], shape[-1], int(np.prod(shape[:-2], dtype=np.float64)))
                arr = tif.series[0].asarray()
        except BadInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
            why = " ".join(str(exc).split()) or (logs.messages[0] if logs.messages else "")
            raise BadInputError(path, f"not a readable TIFF ({type(exc).__name__}: {why})") from None
    return arr


def _read_raw(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix in (".dm3", ".dm4", ".emd"):
        from .formats import read_pixels

        return read_pixels(path)
    if suffix in (".tif", ".tiff"):
        arr = np.squeeze(_read_tiff(path))
        if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
            arr = np.moveaxis(arr, 0, -1)  # planar RGB
        return arr
    from PIL import Image, UnidentifiedImageError

    try:
        with _PIL_LOCK:  # matrep's own limit replaces PIL's (which raises without the numbers)
            old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = old
        with im, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            _check_pixels(path, im.size[1], im.size[0])
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif im.mode == "I;16B":
                im = im.convert("I;16")
            arr = np.array(im)
    except UnidentifiedImageError:
        raise BadInputError(path, "not an image (unrecognised file content)") from None
    except BadInputError:
        raise
    except PermissionError:
        raise BadInputError(path, "cannot be read (permission denied)") from None
    except Image.DecompressionBombError as exc:
        raise BadInputError(path, f"{' '.join(str(exc).split())}; if the image is real, raise the "
                                  f"limit with {ENV_MAX_PIXELS}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input
        msg = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
        if "truncated" in msg.lower():
            msg = "truncated image file"
        raise BadInputError(path, f"corrupt image ({msg})") from None
    if arr.dtype == np.int32 and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)  # PIL mode "I" from 16-bit PNGs
    return arr


def read_micrograph(path) -> np.ndarray:
    """Read a micrograph as float32 of shape (H, W) in [0, 1].

    Raises :class:`~matrep.errors.BadInputError` naming the file for corrupt or non-image
    files, empty images, and NaN/inf in float TIFFs.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise BadInputError(path, "is a folder, not an image file")
        if path.is_symlink():
            raise BadInputError(path, "is a broken symbolic link (or a link loop)")
        raise BadInputError(path, "no such file")
    if path.stat().st_size == 0:
        raise BadInputError(path, "empty file")
    arr = _read_raw(path)
    arr = to_grey(arr, path=path)
    if arr.size == 0:
        raise BadInputError(path, "image has no pixels")
    return to_unit_float(arr, path=path)


def apply_crop(img: np.ndarray, crop=None, crop_bottom: int = 0, *, path=None) -> np.ndarray:
    """Crop ``img``: first remove ``crop_bottom`` rows, then take the box ``crop``.

    ``crop`` is ``(top, left, height, width)``; ``None`` keeps everything.
    """
    if crop_bottom:
        if crop_bottom < 0 or crop_bottom >= img.shape[0]:
            raise BadInputError(path, f"crop_bottom={crop_bottom} leaves no rows of an image "
                                      f"with {img.shape[0]} rows")
        img = img[: img.shape[0] - crop_bottom]
    if crop is not None:
        top, left, height, width = (int(v) for v in crop)
        if top < 0 or left < 0 or height <= 0 or width <= 0 or top + height > img.shape[0] \
                or left + width > img.shape[1]:
            raise BadInputError(path, f"crop box (top={top}, left={left}, height={height}, "
                                      f"width={width}) does not fit the {img.shape[0]}x"
                                      f"{img.shape[1]} image")
        img = img[top:top + height, left:left + width]
    return img


def extract_patches(img: np.ndarray, size: int = 128, stride: int = 50, *, path=None):
    """Cut a (H, W) image into patches by a sliding window.

    Returns
    -------
    patches : ndarray of shape (n_patches, size, size), float32 (a copy)
    coords : ndarray of shape (n_patches, 2), int64, top-left (y, x) of each patch

    >>> p, c = extract_patches(np.zeros((228, 178), np.float32), size=128, stride=50)
    >>> p.shape, c.tolist()
    ((6, 128, 128), [[0, 0], [0, 50], [50, 0], [50, 50], [100, 0], [100, 50]])
    """
    if size <= 0 or stride <= 0:
        raise ValueError(f"patch size and stride must be positive, got size={size}, stride={stride}")
    h, w = img.shape
    if h < size or w < size:
        raise BadInputError(path, f"image of {h}x{w} pixels is smaller than the {size}x{size} patch")
    ys = np.arange(0, h - size + 1, stride)
    xs = np.arange(0, w - size + 1, stride)
    view = np.lib.stride_tricks.sliding_window_view(img, (size, size))[::stride, ::stride]
    patches = np.ascontiguousarray(view.reshape(-1, size, size), dtype=np.float32)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    coords = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.int64)
    return patches, coords


# ---------------------------------------------------------------------------------------
# patch sets
# ---------------------------------------------------------------------------------------
@dataclass
class PatchSet:
    """Patches of a set of micrographs with the record of each patch.

    Attributes
    ----------
    patches : ndarray of shape (n_patches, size, size), float32 in [0, 1]
    sources : ndarray of shape (n_patches,), str — the file each patch came from
    micrograph_ids : ndarray of shape (n_patches,), str — file path relative to the common
        folder, without extension
    coords : ndarray of shape (n_patches, 2), int64 — top-left (y, x) in the cropped image
    patch, stride, crop, crop_bottom : the settings that cut them
    skipped : list of (path, problem) for files skipped with ``skip_bad=True``
    """

    patches: np.ndarray
    sources: np.ndarray
    micrograph_ids: np.ndarray
    coords: np.ndarray
    patch: int = 128
    stride: int = 50
    crop: tuple | None = None
    crop_bottom: int = 0
    skipped: list = field(default_factory=list)
    scale: object = None  # matrep.scale.ScalePlan: pixel sizes, resampling (None: not resolved)

    def __len__(self) -> int:
        return len(self.patches)

    @property
    def files(self) -> list[str]:
        """The distinct source files, in order."""
        return list(dict.fromkeys(self.sources.tolist()))

    def settings(self) -> dict:
        """The patching settings as a JSON-compatible dict."""
        return {"patch": int(self.patch), "stride": int(self.stride),
                "crop": list(self.crop) if self.crop is not None else None,
                "crop_bottom": int(self.crop_bottom),
                **({"scale": s} if (s := getattr(self.scale, "settings", lambda: None)()) else {})}

    def subset(self, index) -> "PatchSet":
        """A PatchSet of the patches selected by ``index`` (mask or integer array)."""
        return PatchSet(self.patches[index], self.sources[index], self.micrograph_ids[index],
                        self.coords[index], self.patch, self.stride, self.crop, self.crop_bottom,
                        list(self.skipped), scale=self.scale)


def micrograph_id(path: Path, root: Path | None) -> str:
    """Id of a micrograph: its path relative to ``root`` without the extension."""
    path = Path(path)
    try:
        rel = path.relative_to(root) if root is not None else Path(path.name)
    except ValueError:
        rel = Path(path.name)
    return rel.with_suffix("").as_posix()


def _common_root(files: list[Path]) -> Path | None:
    parents = {f.resolve().parent for f in files}
    if len(parents) == 1:
        return parents.pop()
    import os

    return Path(os.path.commonpath([str(p) for p in parents]))


def load_patches(images, *, patch: int = 128, stride: int = 50, crop=None, crop_bottom: int = 0,
                 skip_bad: bool = False, max_patches_per_image: int | None = None,
                 seed: int = 0, progress=None, scale=None) -> PatchSet:
    """Read micrographs and cut them into patches.

    Parameters
    ----------
    images : folder, glob pattern, file, or list of paths
    patch, stride : int, default 128, 50 (the paper's sliding window)
    crop : (top, left, height, width) or None
    crop_bottom : int, default 0 — rows removed at the bottom first (UHCS: 38)
    skip_bad : bool, default False — skip unreadable/too-small files and list them in
        ``PatchSet.skipped`` instead of raising
    max_patches_per_image : int or None — keep a seeded random subset of each image's patches
    progress : callable wrapping an iterable (e.g. a progress bar), optional
    scale : matrep.scale.ScaleOptions or ScalePlan, optional — resolve each micrograph's pixel
        size (recorded in ``PatchSet.scale``) and, with a target, resample it after cropping;
        micrographs left out for their scale are not read (see :mod:`matrep.scale`)

    Raises
    ------
    BadInputError naming the file and the problem.
    """
    files = [Path(f) for f in list_images(images)]
    root = Path(images).resolve() if not isinstance(images, (list, tuple)) and Path(images).is_dir() \
        else _common_root(files)
    if scale is not None:  # pixel sizes; micrographs left out for their scale (matrep.scale)
        from .scale import as_plan

        scale = as_plan(scale, files, patch=patch, crop=crop, crop_bottom=crop_bottom,
                        skip_bad=skip_bad)
        files = [f for f in files if scale.keeps(f)]
    rng = np.random.default_rng(seed)
    all_p, all_c, all_src, all_id, skipped = [], [], [], [], []
    it = progress(files) if progress is not None else files
    for f in it:
        try:
            img = read_micrograph(f)
            img = apply_crop(img, crop, crop_bottom, path=f)
            if scale is not None:
                img = scale.resample(f, img)
            p, c = extract_patches(img, patch, stride, path=f)
        except BadInputError as exc:
            if not skip_bad:
                raise
            skipped.append((str(f), exc.problem))
            continue
        if max_patches_per_image is not None and len(p) > max_patches_per_image:
            keep = np.sort(rng.choice(len(p), max_patches_per_image, replace=False))
            p, c = p[keep], c[keep]
        all_p.append(p)
        all_c.append(c)
        all_src += [str(f)] * len(p)
        all_id += [micrograph_id(f.resolve(), root)] * len(p)
    if not all_p:
        raise BadInputError(images, "no usable images (all were skipped: "
                            + "; ".join(f"{Path(s).name}: {m}" for s, m in skipped) + ")")
    return PatchSet(np.concatenate(all_p), np.array(all_src), np.array(all_id),
                    np.concatenate(all_c), patch, stride,
                    tuple(crop) if crop is not None else None, crop_bottom, skipped, scale=scale)
