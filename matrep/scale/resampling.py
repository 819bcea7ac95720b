"""Resampling to one pixel size: the zoom, ``--scale auto``, the upsampling limit, the plan.

:func:`plan_scale` decides each micrograph's zoom factor (or leaves it out) by the rules of
:mod:`matrep.scale`; :func:`resample` applies one.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import BadInputError
from .sources import (UNKNOWN, _WHERE_TO_GET_ONE, PixelSize, ScaleWarning, parse_scale,
                      resolve_pixel_sizes)

#: Largest allowed upsampling factor (target pixel size finer than the image's by at most 2x).
UPSAMPLE_LIMIT = 2.0
#: Share of micrographs ``--scale auto`` keeps without upsampling.
AUTO_SHARE = 0.9


# ---------------------------------------------------------------------------------------
# resampling
# ---------------------------------------------------------------------------------------
def resample(img: np.ndarray, factor: float) -> np.ndarray:
    """Zoom a (H, W) image in [0, 1] by ``factor`` (anti-aliased when < 1; see the module doc).

    ``factor == 1`` returns ``img`` itself. The result is float32 of shape
    ``(round(H * factor), round(W * factor))``, clipped to [0, 1].

    >>> resample(np.ones((10, 8), np.float32), 0.5).shape
    (5, 4)
    """
    factor = float(factor)
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"resampling factor must be a positive number, got {factor!r}")
    if abs(factor - 1.0) < 1e-9:
        return img
    from skimage.transform import rescale

    out = rescale(np.asarray(img, dtype=np.float32), factor, order=1, mode="reflect",
                  anti_aliasing=factor < 1.0, preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def auto_target(pixel_sizes, share: float = AUTO_SHARE) -> float:
    """``--scale auto``: the smallest pixel size that at least ``share`` of ``pixel_sizes`` reach.

    That is the coarsest pixel size among the finest ``share`` of the micrographs: they are
    only downsampled, the rest are upsampled or left out.

    >>> auto_target([0.1, 0.1, 0.2, 0.4, 1.0], share=0.8)
    0.4
    """
    p = np.sort(np.asarray([v for v in pixel_sizes if v is not None], dtype=np.float64))
    if not len(p):
        raise ValueError("--scale auto needs at least one known pixel size")
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    k = max(1, int(math.ceil(share * len(p) - 1e-9)))
    return float(p[k - 1])


# ---------------------------------------------------------------------------------------
# options and plan
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScaleOptions:
    """What the user asked for (the CLI's ``--scale``, ``--pixel-size`` ... options).

    Attributes
    ----------
    scale : float (um/px), ``"auto"`` or None (no resampling)
    pixel_size : float or None — one pixel size for every micrograph
    pixel_size_column : str or None — labels column (see :func:`label_column_kind`)
    labels : CSV path or DataFrame holding the column, optional
    file_column : labels column naming the image files
    min_pixel_size, max_pixel_size : float or None — keep micrographs within this range
    upsample_limit : float, default :data:`UPSAMPLE_LIMIT`
    share : float, default :data:`AUTO_SHARE` (``scale="auto"``)
    model_scale : float or None — the scale a model was trained at (used when ``scale`` is
        None; a different ``scale`` gives a warning)
    warn : callable(str) receiving warnings, optional
    """

    scale: float | str | None = None
    pixel_size: float | None = None
    pixel_size_column: str | None = None
    labels: object = None
    file_column: str = "file"
    min_pixel_size: float | None = None
    max_pixel_size: float | None = None
    upsample_limit: float = UPSAMPLE_LIMIT
    share: float = AUTO_SHARE
    model_scale: float | None = None
    warn: Callable | None = field(default=None, compare=False, repr=False)

    def effective_scale(self):
        """``scale``, or the model's recorded scale when ``scale`` is None."""
        return self.scale if self.scale is not None else self.model_scale

    def selects(self) -> bool:
        """Whether micrographs must have a known pixel size (resampling or a range)."""
        return self.effective_scale() is not None or self.min_pixel_size is not None \
            or self.max_pixel_size is not None

    def replace(self, **kw) -> "ScaleOptions":
        return replace(self, **kw)


@dataclass
class ScalePlan:
    """Pixel sizes of a set of micrographs and what to do with each.

    Attributes
    ----------
    target_um_per_px : float or None — the pixel size every kept micrograph is resampled to
    pixel_sizes : dict str(path) -> PixelSize — every micrograph considered
    factors : dict str(path) -> float — zoom factor of each kept micrograph (1.0 without target)
    dropped : list of (path, reason) — micrographs left out for their scale
    auto : bool — the target was chosen by ``scale="auto"``
    upsample_limit : float
    """

    target_um_per_px: float | None
    pixel_sizes: dict
    factors: dict
    dropped: list = field(default_factory=list)
    auto: bool = False
    upsample_limit: float = UPSAMPLE_LIMIT
    share: float = AUTO_SHARE

    def keeps(self, path) -> bool:
        return str(path) in self.factors

    def keep(self, files) -> list:
        """The files of ``files`` this plan keeps, in order."""
        return [f for f in files if self.keeps(f)]

    def resample(self, path, img: np.ndarray) -> np.ndarray:
        """``img`` (the cropped micrograph ``path``) at the target pixel size."""
        return resample(img, self.factors.get(str(path), 1.0))

    def pixel_size(self, path) -> PixelSize:
        return self.pixel_sizes.get(str(path), PixelSize(None, UNKNOWN))

    def records(self, sources) -> dict:
        """Per-patch record columns for patches cut from ``sources`` (one path per patch).

        ``pixel_size_um`` is the micrograph's own pixel size (NaN when unknown),
        ``pixel_size_source`` where it came from, ``resample_factor`` the zoom applied.
        """
        cache = {}
        ps, src, fac = [], [], []
        for s in np.asarray(sources).tolist():
            if s not in cache:
                p = self.pixel_size(s)
                cache[s] = (p.um_per_px if p.known else float("nan"), p.source,
                            float(self.factors.get(str(s), 1.0)))
            a, b, c = cache[s]
            ps.append(a)
            src.append(b)
            fac.append(c)
        return {"pixel_size_um": np.array(ps, dtype=np.float64),
                "pixel_size_source": np.array(src, dtype=object),
                "resample_factor": np.array(fac, dtype=np.float64)}

    def summary(self, files=None) -> dict:
        """Scale distribution of the (kept) micrographs, for reports (JSON-compatible)."""
        files = list(self.factors) if files is None else [str(f) for f in files]
        vals = [self.pixel_size(f).um_per_px for f in files]
        known = np.array([v for v in vals if v is not None], dtype=np.float64)
        sources: dict = {}
        for f in files:
            s = self.pixel_size(f).source
            s = s.split("[", 1)[0].split("(", 1)[0]
            sources[s] = sources.get(s, 0) + 1
        d = {"target_um_per_px": self.target_um_per_px, "auto": bool(self.auto),
             "images": len(files), "known": int(len(known)),
             "unknown": int(len(files) - len(known)),
             "sources": sources, "dropped": len(self.dropped),
             "upsample_limit": self.upsample_limit}
        if len(known):
            q = np.quantile(known, [0.0, 0.1, 0.5, 0.9, 1.0])
            d.update({"min_um_per_px": float(q[0]), "p10_um_per_px": float(q[1]),
                      "median_um_per_px": float(q[2]), "p90_um_per_px": float(q[3]),
                      "max_um_per_px": float(q[4])})
        if self.auto:
            d["auto_share"] = self.share
        return d

    def settings(self) -> dict | None:
        """What changes the patches (None without a target): target, limit, per-file sizes."""
        if self.target_um_per_px is None:
            return None
        h = hashlib.sha256(json.dumps(sorted((k, v) for k, v in self.factors.items())).encode())
        return {"um_per_px": float(self.target_um_per_px), "auto": bool(self.auto),
                "upsample_limit": float(self.upsample_limit), "factors_sha256": h.hexdigest()}

    def describe(self) -> list[str]:
        """Human-readable lines: the distribution, the target, the micrographs left out."""
        return [format_summary(self.summary())]


def format_summary(s: dict) -> str:
    """One line about a :meth:`ScalePlan.summary` (the reports' "Scale" line).

    >>> format_summary({"images": 2, "known": 0, "unknown": 2, "sources": {"unknown": 2},
    ...                 "target_um_per_px": None, "dropped": 0})
    'pixel size unknown for all 2 micrographs; not resampled'
    """
    if s["known"]:
        out = (f"pixel sizes of the {s['images']} micrographs used: {s['min_um_per_px']:.4g} to "
               f"{s['max_um_per_px']:.4g} um/px (10/50/90 %: {s['p10_um_per_px']:.4g} / "
               f"{s['median_um_per_px']:.4g} / {s['p90_um_per_px']:.4g}), {s['unknown']} unknown; "
               "from " + ", ".join(f"{k} ({v})" for k, v in sorted(s["sources"].items())))
    else:
        out = f"pixel size unknown for all {s['images']} micrographs"
    if s.get("target_um_per_px") is not None:
        out += f"; resampled to {s['target_um_per_px']:.6g} um/px"
        if s.get("auto"):
            out += (f" (--scale auto: the coarsest pixel size of the finest "
                    f"{s.get('auto_share', AUTO_SHARE):.0%})")
        out += f", upsampling limit {s.get('upsample_limit', UPSAMPLE_LIMIT):g}x"
    else:
        out += "; not resampled"
    if s.get("dropped"):
        out += f"; {s['dropped']} micrograph(s) left out for their scale"
    return out


def _image_hw(path, crop=None, crop_bottom: int = 0) -> tuple[int, int] | None:
    """(height, width) of a micrograph after cropping, from its header when possible."""
    path = Path(path)
    suffix = path.suffix.lower()
    hw = None
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            from ..io import LibraryLog

            with LibraryLog("tifffile"), tifffile.TiffFile(str(path)) as tif:
                shp = tif.pages.first.shape
                hw = (int(shp[0]), int(shp[1])) if len(shp) == 2 or shp[-1] in (1, 2, 3, 4) \
                    else (int(shp[-2]), int(shp[-1]))
        elif suffix in (".png", ".jpg", ".jpeg", ".bmp"):
            from PIL import Image

            with Image.open(path) as im:
                hw = (int(im.size[1]), int(im.size[0]))
    except Exception:  # noqa: BLE001 - unreadable here: the reader names the problem later
        return None
    if hw is None:
        from ..io import read_micrograph

        try:
            hw = read_micrograph(path).shape
        except BadInputError:
            return None
    h, w = hw
    if crop_bottom:
        h -= int(crop_bottom)
    if crop is not None:
        h, w = int(crop[2]), int(crop[3])
    return (h, w) if h > 0 and w > 0 else None


def plan_scale(files, options: ScaleOptions | None = None, *, patch: int | None = None,
               crop=None, crop_bottom: int = 0, skip_bad: bool = False) -> ScalePlan:
    """Resolve pixel sizes, select by range, fix the target and each micrograph's factor.

    Parameters
    ----------
    files : list of paths
    options : ScaleOptions (default: record pixel sizes only)
    patch : int, optional — patch size; micrographs smaller than one patch after resampling
        are left out with a warning (not checked when None)
    crop, crop_bottom : the cropping applied before resampling (for that check)
    skip_bad : bool — leave out micrographs whose pixel size is missing or invalid (with a
        warning) instead of raising

    Raises
    ------
    BadInputError
        Naming the micrograph: a pixel size missing when a scale or range is asked for, or a
        zero, negative or non-numeric scale-bar value.
    """
    opts = options or ScaleOptions()
    warn = opts.warn or (lambda m: warnings.warn(m, ScaleWarning, stacklevel=3))
    files = [str(f) for f in files]
    sizes = resolve_pixel_sizes(files, pixel_size=opts.pixel_size, labels=opts.labels,
                                column=opts.pixel_size_column, file_column=opts.file_column,
                                warn=warn)
    scale = parse_scale(opts.scale)
    if opts.model_scale is not None and scale is not None and scale != "auto" \
            and abs(scale - opts.model_scale) > 1e-9 * opts.model_scale:
        warn(f"the model was trained at {opts.model_scale:.6g} um/px; encoding at --scale "
             f"{scale:.6g} um/px as asked")
    if scale is None:
        scale = opts.model_scale
    dropped: list = []
    kept = []
    for f in files:
        p = sizes[f]
        if opts.selects() and not p.known:
            why = "no pixel size (needed for --scale/--min-pixel-size/--max-pixel-size); " \
                  + _WHERE_TO_GET_ONE
            if not skip_bad:
                raise BadInputError(f, why)
            warn(f"{f}: left out: {why}")
            dropped.append((f, "pixel size unknown"))
            continue
        if opts.min_pixel_size is not None and p.um_per_px < opts.min_pixel_size:
            dropped.append((f, f"pixel size {p.um_per_px:.6g} um/px < --min-pixel-size "
                               f"{opts.min_pixel_size:g}"))
            continue
        if opts.max_pixel_size is not None and p.um_per_px > opts.max_pixel_size:
            dropped.append((f, f"pixel size {p.um_per_px:.6g} um/px > --max-pixel-size "
                               f"{opts.max_pixel_size:g}"))
            continue
        kept.append(f)
    auto = scale == "auto"
    if auto:
        if not kept:
            raise BadInputError(None, "--scale auto: no micrograph left to choose a scale from")
        scale = auto_target([sizes[f].um_per_px for f in kept], opts.share)
    factors = {}
    for f in kept:
        if scale is None:
            factors[f] = 1.0
            continue
        p = sizes[f].um_per_px
        factor = p / scale
        if factor > opts.upsample_limit * (1 + 1e-9):
            warn(f"{f}: left out: pixel size {p:.6g} um/px ({sizes[f].source}) would need "
                 f"{factor:.3g}x upsampling to {scale:.6g} um/px (limit "
                 f"{opts.upsample_limit:g}x)")
            dropped.append((f, f"needs {factor:.3g}x upsampling (pixel size {p:.6g} um/px)"))
            continue
        if patch is not None:
            hw = _image_hw(f, crop, crop_bottom)
            if hw is not None and min(round(hw[0] * factor), round(hw[1] * factor)) < patch:
                warn(f"{f}: left out: at {scale:.6g} um/px its {hw[0]}x{hw[1]} pixels of "
                     f"{p:.6g} um/px become {round(hw[0] * factor)}x{round(hw[1] * factor)}, "
                     f"smaller than the {patch}x{patch} patch")
                dropped.append((f, f"smaller than one patch at {scale:.6g} um/px"))
                continue
        factors[f] = factor
    if not factors and files:
        raise BadInputError(None, "no micrograph is left after the scale selection ("
                            + "; ".join(f"{Path(f).name}: {r}" for f, r in dropped[:5])
                            + (" ..." if len(dropped) > 5 else "") + ")")
    return ScalePlan(None if scale is None else float(scale), sizes, factors, dropped, auto,
                     float(opts.upsample_limit), float(opts.share))


def as_plan(scale, files, **kw) -> ScalePlan:
    """A :class:`ScalePlan` for ``files``: ``scale`` may already be one, or ScaleOptions."""
    if isinstance(scale, ScalePlan):
        return scale
    if not isinstance(scale, ScaleOptions):
        scale = ScaleOptions(scale=scale)
    return plan_scale(files, scale, **kw)


def _fit_patches_record(model_dir) -> dict:
    """The ``patches`` record of ``model_dir/fit.json`` (empty when there is none)."""
    p = Path(model_dir) / "fit.json"
    if not p.is_file():
        return {}
    try:
        rec = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return (rec.get("patches") if isinstance(rec, dict) else None) or {}


def model_scale(model_dir) -> float | None:
    """The pixel size (um/px) a model in ``model_dir`` was trained at, from its ``fit.json``."""
    v = _fit_patches_record(model_dir).get("scale_um_per_px")
    return float(v) if v is not None else None


def model_trained_unscaled(model_dir) -> bool:
    """Whether ``model_dir/fit.json`` records training without ``--scale``.

    True when the record says ``scale_um_per_px: null`` (micrographs patched at their own
    pixel sizes); False for a recorded scale and for a model whose ``fit.json`` does not say
    (no file, or written before scales were recorded).
    """
    rec = _fit_patches_record(model_dir)
    return "scale_um_per_px" in rec and rec["scale_um_per_px"] is None


def unscaled_model_warnings(models, target) -> list:
    """One warning line per model folder in ``models`` trained without ``--scale`` whose
    patches would now be resampled to ``target`` (um/px or ``"auto"``; None: no resampling,
    no warning): its features would mix scales, so it is said, never silent."""
    if target is None:
        return []
    to = "--scale auto" if target == "auto" else f"{float(target):g} um/px"
    return [f"{m}/fit.json: the model was trained without --scale (each micrograph at its own "
            f"pixel size), but its patches are now resampled to {to}; train it at that scale "
            f"(matrep fit --scale) or leave out --scale"
            for m in models if isinstance(m, (str, Path)) and model_trained_unscaled(m)]


def warn_unscaled_models(models, scale) -> None:
    """For library callers: :func:`unscaled_model_warnings` for ``scale`` (a
    :class:`ScaleOptions`) as :class:`~matrep.scale.ScaleWarning` warnings. Options that
    carry their own ``warn`` callback come from a command that has said it already."""
    if scale is None or scale.warn is not None:
        return
    import warnings

    from .sources import ScaleWarning

    target = scale.scale if scale.scale is not None else scale.model_scale
    for line in unscaled_model_warnings(models, target):
        warnings.warn(line, ScaleWarning, stacklevel=3)
