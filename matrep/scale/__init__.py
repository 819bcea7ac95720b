r"""Physical scale: every micrograph's pixel size, and resampling to one pixel size.

A texture statistic means something only at a known physical scale: a 128-pixel patch of a
micrograph at 0.01 um/px covers 1.3 um, at 5 um/px 640 um. This module gives every
micrograph a pixel size in micrometres per pixel (or an explicit "unknown") and, when asked,
resamples each micrograph to one target pixel size before it is cut into patches, so that
every patch covers the same area of the sample.

Where a pixel size comes from (the first that is present wins; :func:`resolve_pixel_sizes`):

1. ``pixel_size`` (``--pixel-size``): one value for every image;
2. a labels column: ``pixel_size_column`` (``--pixel-size-column``), by default
   ``pixel_size_um`` if the labels have it, else the scale-bar pair ``micron_bar`` /
   ``micron_bar_px`` (UHCS: the bar's length and its length in pixels; a
   ``micron_bar_units`` column, when present, gives the bar's unit, e.g. ``nm``);
3. the file's own metadata (:mod:`matrep.formats`: TIFF vendor and resolution tags,
   DM3/DM4/EMD axes).

The source is recorded next to the value (``option``, ``labels:pixel_size_um``,
``labels:micron_bar/micron_bar_px``, ``file:tiff:FEI_HELIOS[Scan]PixelWidth``, ...,
``unknown``). When a label (or ``--pixel-size``) and the file's metadata disagree by more than
:data:`CONFLICT_RTOL`, the label wins and a warning names the file and both values.

Resampling (:func:`resample`): each micrograph is zoomed by ``factor = p / t`` (its pixel size
``p`` over the target ``t``), after cropping and before patching.

* Downsampling (factor < 1) is anti-aliased: a Gaussian low-pass of standard deviation
  :math:`\sigma = (1/\mathrm{factor} - 1)/2` pixels, then bilinear interpolation
  (``skimage.transform.rescale(..., order=1, anti_aliasing=True)``). Without the low-pass,
  detail finer than the new pixel folds back as false, coarser texture (aliasing), and the
  two-point statistics and Gram matrices measure exactly that spatial-frequency content.
  Bilinear rather than cubic interpolation never overshoots the [0, 1] grey range.
* Upsampling (factor > 1) adds no information; it is bilinear and allowed up to
  :data:`UPSAMPLE_LIMIT` (2x). A micrograph that would need more is left out, with a warning
  naming it and its pixel size.
* The resampled image has ``round(H * factor)`` x ``round(W * factor)`` pixels, so its pixel
  size is the target to within one pixel over the image's width. Patch coordinates in the
  records are in the resampled image.

``scale="auto"`` (``--scale auto``, :func:`auto_target`) picks the coarsest pixel size among
the finest :data:`AUTO_SHARE` (90 %) of the micrographs: those 90 % are only downsampled
(they keep what they show at that scale), the coarsest 10 % are upsampled (up to 2x) or left
out. Micrographs that become smaller than one patch are left out with a warning as well.

``min_pixel_size`` / ``max_pixel_size`` keep only micrographs within that range of pixel
sizes (inclusive); the others are left out with a note.

Modules
-------
* :mod:`~matrep.scale.sources`: pixel sizes from the option, a labels column (or the scale
  bar) and the file's metadata (:func:`resolve_pixel_sizes`)
* :mod:`~matrep.scale.resampling`: :func:`resample`, :func:`auto_target`, the upsampling
  limit, :class:`ScaleOptions`, :class:`ScalePlan` and :func:`plan_scale`

Everything public is importable from ``matrep.scale`` itself.
"""

from __future__ import annotations

from .resampling import (AUTO_SHARE, UPSAMPLE_LIMIT, ScaleOptions, ScalePlan, as_plan, auto_target,
                         format_summary, model_scale, model_trained_unscaled, plan_scale,
                         resample, unscaled_model_warnings)
from .sources import (BAR_COLUMNS, BAR_UNITS_COLUMN, CONFLICT_RTOL, PIXEL_SIZE_COLUMN, UNKNOWN,
                      PixelSize, ScaleWarning, label_column_kind, label_pixel_sizes, parse_scale,
                      resolve_pixel_sizes, scale_bar_pixel_size)

__all__ = ["AUTO_SHARE", "CONFLICT_RTOL", "PixelSize", "ScaleOptions", "ScalePlan", "ScaleWarning",
           "UPSAMPLE_LIMIT", "as_plan", "auto_target", "label_pixel_sizes", "model_scale",
           "model_trained_unscaled", "parse_scale", "plan_scale", "resample", "resolve_pixel_sizes",
           "scale_bar_pixel_size", "unscaled_model_warnings"]
