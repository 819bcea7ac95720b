r"""Two-point statistics of phase maps by FFT, with the definitions of PyMKS.

The maths lives in pure functions; :class:`TwoPointEncoder` only forwards its parameters.

* :func:`segment` turns grey patches into phase labels (Otsu, a given threshold, multi-Otsu
  for ``n_phases > 2``); integer and boolean inputs are labels already and are used as they are.
* :func:`two_point_stats` is the discretised two-point statistics of PyMKS
  (``pymks.two_point_stats``, v0.4.1): same normalisation for periodic and non-periodic
  boundaries, same mask rule, same centred ``(2·cutoff+1) x (2·cutoff+1)`` layout with the
  zero vector in the middle.
* :func:`correlations_multiple` computes several auto/cross correlations of labelled phases at
  once (one FFT per phase, the whole batch per call), stacked on the last axis as PyMKS does.
* :func:`radial_average` averages the centred statistics over rings of equal ``|r|``.
* :func:`two_point_stats_reference` is a plain per-sample numpy implementation of the same
  definition (the baseline of ``benchmarks/bench_twopoint.py`` and a cross-check in the tests).

The discretised two-point statistics (Kalidindi 2015; Cecen, Fast & Kalidindi 2016,
doi:10.1007/s40192-017-0089-0; PyMKS documentation) are

.. math::

   f[r \mid l, l'] = \frac{1}{S_r} \sum_s m[s, l]\, m[s + r, l']

where :math:`m[s, l]` is the indicator (or volume fraction) of local state :math:`l` at pixel
:math:`s` and :math:`S_r` is the number of pixel pairs separated by :math:`r` that lie inside
the image: :math:`S_r = S` (all pixels) for a periodic boundary and
:math:`S_r = \prod_i (N_i - |r_i|)` for a non-periodic one. For an autocorrelation,
:math:`f[0 \mid l, l]` is the volume fraction of :math:`l` (Torquato 2002, *Random
Heterogeneous Materials*, ch. 2: :math:`S_2(0) = \phi`).
"""

from __future__ import annotations

import numbers

import numpy as np

from matrep.encoder import BaseEncoder, check_patches
from matrep.errors import BadInputError

__all__ = [
    "segment",
    "otsu_thresholds",
    "two_point_stats",
    "correlations_multiple",
    "radial_average",
    "two_point_stats_reference",
    "TwoPointEncoder",
]

# FFT-grid pixels per FFT call (all samples and phases of a chunk together): small chunks keep
# the spectra in cache; 2**18 (16 patches of 128 x 128) measured ~1.5x faster than one call
# for the whole batch of 64 (docs/twopoint.md)
_CHUNK_ELEMENTS = 1 << 18


# ---------------------------------------------------------------------------------------
# segmentation
# ---------------------------------------------------------------------------------------
def otsu_thresholds(values, n_phases: int = 2) -> np.ndarray:
    """Thresholds that split grey ``values`` into ``n_phases`` phases.

    Otsu's method (Otsu 1979, doi:10.1109/TSMC.1979.4310076) for two phases, its multi-level
    form (Liao, Chen & Chung 2001) for more, both from scikit-image on the pooled values.
    If ``values`` hold at most ``n_phases`` distinct levels (an already segmented image
    stored as grey), the thresholds are the midpoints between those levels, so the labels
    reproduce the levels exactly.

    Parameters
    ----------
    values : array_like
        Grey values of any shape (pooled).
    n_phases : int, default 2

    Returns
    -------
    ndarray of shape (k,), sorted, ``k <= n_phases - 1``.

    Examples
    --------
    >>> otsu_thresholds([0.0, 0.0, 1.0, 1.0]).tolist()
    [0.5]
    >>> otsu_thresholds([0.0, 0.5, 1.0], n_phases=3).tolist()
    [0.25, 0.75]
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise BadInputError(None, "cannot compute Otsu thresholds of an empty array")
    levels = np.unique(values)
    if levels.size <= n_phases:
        return (levels[:-1] + levels[1:]) / 2.0
    from skimage.filters import threshold_multiotsu, threshold_otsu

    if n_phases == 2:
        return np.array([threshold_otsu(values)], dtype=np.float64)
    return np.sort(np.asarray(threshold_multiotsu(values, classes=n_phases), dtype=np.float64))


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _label_dtype(n):
    return np.int8 if n <= 127 else np.int32


def segment(patches, *, threshold="otsu", n_phases: int = 2) -> np.ndarray:
    """Phase labels ``0 .. n_phases-1`` of grey patches (darkest phase is 0).

    Rules, in order:

    * integer or boolean input is already segmented and is returned as it is (as labels);
    * ``threshold="otsu"``: :func:`otsu_thresholds` of all given values pooled (so every
      patch of a batch is cut at the same grey levels); ``n_phases > 2`` uses multi-Otsu;
    * ``threshold`` a float, or a sequence of ``n_phases - 1`` floats: those grey levels;
    * ``threshold=None``: the float input is a segmented map stored as grey in [0, 1]
      (labels scaled by ``1 / (n_phases - 1)``, as an 8-bit PNG of labels reads):
      the label is ``round(x * (n_phases - 1))``.

    A value equal to a threshold goes to the lower phase (scikit-image's
    ``image > threshold`` is the foreground).

    Parameters
    ----------
    patches : array_like of shape (n_patches, H, W) or any shape
    threshold : "otsu", float, sequence of float or None, default "otsu"
    n_phases : int, default 2

    Returns
    -------
    ndarray of int labels, same shape as ``patches``.

    Examples
    --------
    >>> segment(np.array([[0.1, 0.2], [0.8, 0.9]])).tolist()
    [[0, 0], [1, 1]]
    >>> segment(np.array([[0.1, 0.6], [0.8, 0.9]]), threshold=0.7).tolist()
    [[0, 0], [1, 1]]
    >>> segment(np.array([[0, 2], [1, 1]])).tolist()
    [[0, 2], [1, 1]]
    >>> segment(np.array([0.0, 0.5, 1.0]), threshold=None, n_phases=3).tolist()
    [0, 1, 2]
    """
    x = np.asarray(patches)
    n_phases = _check_n_phases(n_phases)
    if x.dtype == bool:
        return x.astype(np.int8)
    if np.issubdtype(x.dtype, np.integer):
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise BadInputError(None, f"patches must be numeric, got dtype {x.dtype}")
    return np.digitize(x, _resolve_thresholds(x, threshold, n_phases), right=True).astype(
        _label_dtype(n_phases))


def _check_n_phases(n_phases):
    if not isinstance(n_phases, numbers.Integral) or isinstance(n_phases, bool) or n_phases < 2:
        raise BadInputError(None, f"n_phases must be an integer >= 2, got {n_phases!r}")
    return int(n_phases)


def _resolve_thresholds(x, threshold, n_phases) -> np.ndarray:
    """The sorted grey-level thresholds that :func:`segment` applies to float input ``x``."""
    if isinstance(threshold, str):
        if threshold != "otsu":
            raise BadInputError(None, f'threshold must be "otsu", a float, a list of floats or '
                                      f"None, got {threshold!r}")
        return otsu_thresholds(x, n_phases)
    if threshold is None:
        return (np.arange(n_phases - 1) + 0.5) / (n_phases - 1)
    t = np.atleast_1d(np.asarray(threshold, dtype=np.float64))
    if t.ndim != 1 or t.size != n_phases - 1 or not np.isfinite(t).all():
        raise BadInputError(None, f"threshold must be one finite value per phase boundary "
                                  f"({n_phases - 1} for n_phases={n_phases}), got {threshold!r}")
    return np.sort(t)


# ---------------------------------------------------------------------------------------
# two-point statistics
# ---------------------------------------------------------------------------------------
def _max_cutoff(spatial_shape) -> int:
    return int((min(spatial_shape) - 1) // 2)


def _resolve_cutoff(cutoff, spatial_shape) -> int:
    """PyMKS's rule: ``None`` means the largest centred window, larger values are clipped."""
    c_max = _max_cutoff(spatial_shape)
    if cutoff is None:
        return c_max
    if not isinstance(cutoff, numbers.Integral) or isinstance(cutoff, bool) or cutoff < 0:
        raise BadInputError(None, f"cutoff must be None or an integer >= 0, got {cutoff!r}")
    return min(int(cutoff), c_max)


def _work_dtype(*arrays):
    return np.float32 if all(a.dtype == np.float32 for a in arrays) else np.float64


def _fft_shape(spatial, cutoff, periodic_boundary):
    """FFT size per axis: the image itself (periodic) or enough zero padding that vectors
    up to ``cutoff`` never wrap around (``N + cutoff``, rounded up to a fast length)."""
    if periodic_boundary:
        return tuple(spatial)
    from scipy.fft import next_fast_len

    return tuple(next_fast_len(n + cutoff, real=True) for n in spatial)


def _centre_index(fft_shape, cutoff):
    """Index arrays that pick vectors ``-cutoff .. cutoff`` per axis out of an unshifted
    correlation (the same entries PyMKS keeps after ``fftshift`` and its centre slice)."""
    r = np.arange(-cutoff, cutoff + 1)
    return np.ix_(*[r % m for m in fft_shape])


def _pair_counts(spatial, cutoff) -> np.ndarray:
    r"""Number of pixel pairs inside the image for each vector: :math:`\prod_i (N_i - |r_i|)`."""
    r = np.abs(np.arange(-cutoff, cutoff + 1))
    out = np.ones((1,) * len(spatial))
    for axis, n in enumerate(spatial):
        shape = [1] * len(spatial)
        shape[axis] = r.size
        out = out * (n - r).reshape(shape)
    return out


def _chunks(n_samples, sample_size):
    step = max(1, _CHUNK_ELEMENTS // max(1, sample_size))
    for start in range(0, n_samples, step):
        yield slice(start, min(n_samples, start + step))


def _as_samples(arr, name):
    arr = np.asarray(arr)
    if arr.ndim < 2:
        raise BadInputError(None, f"{name} must have shape (n_samples, n_x, ...), "
                                  f"got shape {arr.shape}")
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float64)
    elif not np.issubdtype(arr.dtype, np.floating):
        raise BadInputError(None, f"{name} must be numeric, got dtype {arr.dtype}")
    elif arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    return arr


def _correlate(spectra1, spectra2, fft_shape, index, workers=None):
    """Centred window of ``ifft(conj(F1) F2)`` for a chunk of samples."""
    from scipy.fft import irfftn

    axes = tuple(range(1, len(fft_shape) + 1))
    prod = spectra1.conj()
    prod *= spectra2
    full = irfftn(prod, s=fft_shape, axes=axes, workers=workers)
    return full[(slice(None),) + index]


def two_point_stats(arr1, arr2, *, periodic_boundary: bool = True, cutoff=None, mask=None,
                    workers=None):
    r"""Two-point statistics of ``arr1[i]`` (state :math:`l`) with ``arr2[i]`` (state :math:`l'`).

    Same definition as ``pymks.two_point_stats`` (PyMKS 0.4.1):

    .. math::

       f[r \mid l, l'] = \frac{1}{S_r} \sum_s m[s, l]\, m[s + r, l']

    with :math:`S_r = S` for ``periodic_boundary=True`` and, for a non-periodic boundary, the
    number of pixel pairs :math:`(s, s + r)` that lie inside the image (Cecen, Fast &
    Kalidindi 2016, doi:10.1007/s40192-017-0089-0). With a ``mask`` :math:`w[s] \in [0, 1]`
    the fields are :math:`w\,m` and :math:`S_r = \sum_s w[s] w[s + r]` (PyMKS's rule).

    Computed with real FFTs over the whole batch at once (non-periodic: zero padding of
    ``cutoff`` pixels, enough for every kept vector).

    Parameters
    ----------
    arr1, arr2 : array_like of shape (n_samples, n_x, n_y[, n_z])
        Indicator maps (0/1) or continuous fields, e.g. ``labels == phase``.
    periodic_boundary : bool, default True
    cutoff : int or None, default None
        Keep vectors with ``|r_i| <= cutoff`` per axis. ``None`` keeps the largest centred
        window, ``(min(n_x, n_y) - 1) // 2``; larger values are clipped to it (as PyMKS).
    mask : array_like of shape (n_samples, n_x, n_y) or (n_x, n_y), optional
        Confidence per pixel in [0, 1].
    workers : int or None, default None
        Threads for the FFTs (``scipy.fft`` semantics: ``None`` is 1, ``-1`` all cores).

    Returns
    -------
    ndarray of shape (n_samples, 2*cutoff+1, 2*cutoff+1)
        ``out[i, cutoff + r_x, cutoff + r_y]`` is :math:`f[r]`; float32 when both inputs are
        float32, float64 otherwise.

    Examples
    --------
    >>> a = np.array([[[1, 0, 0], [0, 1, 1], [1, 1, 0]]])
    >>> (two_point_stats(a, a) * 9).round(6).tolist()
    [[[2.0, 2.0, 4.0], [2.0, 5.0, 2.0], [4.0, 2.0, 2.0]]]
    >>> (two_point_stats(a, a, periodic_boundary=False) * 36).round(6).tolist()
    [[[9.0, 6.0, 18.0], [12.0, 20.0, 12.0], [18.0, 6.0, 9.0]]]
    """
    arr1 = _as_samples(arr1, "arr1")
    same = arr2 is None or arr2 is arr1
    arr2 = arr1 if same else _as_samples(arr2, "arr2")
    if arr1.shape != arr2.shape:
        raise BadInputError(None, f"arr1 and arr2 must have the same shape, got {arr1.shape} "
                                  f"and {arr2.shape}")
    spatial = arr1.shape[1:]
    cutoff = _resolve_cutoff(cutoff, spatial)
    dtype = _work_dtype(arr1, arr2)

    if mask is not None:
        mask = np.asarray(mask, dtype=dtype)
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise BadInputError(None, "mask must be in range [0, 1]")
        mask = np.broadcast_to(mask, arr1.shape)
        arr1 = arr1 * mask
        arr2 = arr1 if same else arr2 * mask

    fft_shape = _fft_shape(spatial, cutoff, periodic_boundary)
    index = _centre_index(fft_shape, cutoff)
    out = np.empty((arr1.shape[0],) + (2 * cutoff + 1,) * len(spatial), dtype=dtype)
    from scipy.fft import rfftn

    axes = tuple(range(1, len(spatial) + 1))
    for sl in _chunks(arr1.shape[0], int(np.prod(fft_shape))):
        f1 = rfftn(arr1[sl].astype(dtype, copy=False), s=fft_shape, axes=axes, workers=workers)
        f2 = f1 if same else rfftn(arr2[sl].astype(dtype, copy=False), s=fft_shape, axes=axes,
                                   workers=workers)
        out[sl] = _correlate(f1, f2, fft_shape, index, workers)
        if mask is not None:
            fm = rfftn(mask[sl], s=fft_shape, axes=axes, workers=workers)
            out[sl] /= _correlate(fm, fm, fft_shape, index, workers)
    if mask is None:
        out /= np.prod(spatial) if periodic_boundary else _pair_counts(spatial, cutoff)
    return out


def correlations_multiple(labels, correlations, *, periodic_boundary: bool = True, cutoff=None,
                          dtype=np.float32, workers=None):
    """Several two-point statistics of labelled phases, stacked on the last axis.

    For each pair ``(l, l')`` in ``correlations`` this is
    ``two_point_stats(labels == l, labels == l', ...)``; the FFT of each phase indicator is
    computed once per batch. The layout matches ``pymks.correlations_multiple`` applied to
    the one-hot phase indicators.

    Parameters
    ----------
    labels : array_like of int, shape (n_samples, n_x, n_y)
        Phase labels, e.g. from :func:`segment`.
    correlations : sequence of (int, int)
        Phase pairs; ``[(1, 1)]`` is the autocorrelation of phase 1.
    periodic_boundary : bool, default True
    cutoff : int or None, default None
        As in :func:`two_point_stats`.
    dtype : numpy dtype, default float32
        Working and output precision.
    workers : int or None, default None
        Threads for the FFTs, as in :func:`two_point_stats`.

    Returns
    -------
    ndarray of shape (n_samples, 2*cutoff+1, 2*cutoff+1, len(correlations))

    Examples
    --------
    >>> labels = np.array([[[0, 1], [1, 0]]])
    >>> correlations_multiple(labels, [(1, 1), (0, 1)], dtype=np.float64)[0, 0, 0].tolist()
    [0.5, 0.0]
    """
    from scipy.fft import rfftn

    labels = np.asarray(labels)
    if labels.ndim < 2:
        raise BadInputError(None, f"labels must have shape (n_samples, n_x, ...), "
                                  f"got {labels.shape}")
    pairs = [(int(a), int(b)) for a, b in correlations]
    if not pairs:
        raise BadInputError(None, "correlations must name at least one (phase, phase) pair")
    spatial = labels.shape[1:]
    cutoff = _resolve_cutoff(cutoff, spatial)
    fft_shape = _fft_shape(spatial, cutoff, periodic_boundary)
    index = _centre_index(fft_shape, cutoff)
    axes = tuple(range(1, len(spatial) + 1))
    phases = sorted({p for pair in pairs for p in pair})
    out = np.empty((labels.shape[0],) + (2 * cutoff + 1,) * len(spatial) + (len(pairs),),
                   dtype=dtype)
    for sl in _chunks(labels.shape[0], int(np.prod(fft_shape)) * len(phases)):
        spectra = {p: rfftn((labels[sl] == p).astype(dtype), s=fft_shape, axes=axes,
                            workers=workers)
                   for p in phases}
        for k, (a, b) in enumerate(pairs):
            out[sl, ..., k] = _correlate(spectra[a], spectra[b], fft_shape, index, workers)
    norm = np.prod(spatial) if periodic_boundary else _pair_counts(spatial, cutoff)[..., None]
    out /= np.asarray(norm, dtype=dtype)
    return out


def radial_average(stats) -> np.ndarray:
    r"""Average centred two-point statistics over rings :math:`\mathrm{round}(|r|) = k`.

    Parameters
    ----------
    stats : array_like of shape (n_samples, 2*cutoff+1, 2*cutoff+1[, n_correlations])
        The centred layout of :func:`two_point_stats` (:func:`correlations_multiple`).

    Returns
    -------
    ndarray of shape (n_samples, cutoff+1[, n_correlations])
        Entry ``k`` is the mean over vectors with ``round(|r|) == k``, for ``k = 0 .. cutoff``
        (vectors longer than ``cutoff + 0.5``, in the corners of the window, are not used).

    Examples
    --------
    >>> s = np.arange(9.0).reshape(1, 3, 3)
    >>> radial_average(s).tolist()
    [[4.0, 4.0]]
    """
    stats = np.asarray(stats)
    has_corr = stats.ndim == 4
    side = stats.shape[1]
    if stats.ndim not in (3, 4) or stats.shape[2] != side or side % 2 != 1:
        raise BadInputError(None, "stats must have the centred shape (n_samples, 2*cutoff+1, "
                                  f"2*cutoff+1[, n_correlations]), got {stats.shape}")
    cutoff = side // 2
    weights = _radial_weights(cutoff).astype(stats.dtype if stats.dtype.kind == "f" else np.float64)
    flat = stats.reshape(stats.shape[0], side * side, -1)
    out = np.einsum("npc,pk->nkc", flat, weights)
    return out if has_corr else out[..., 0]


def _radial_weights(cutoff):
    """(side*side, cutoff+1) matrix that averages each ring ``round(|r|) == k``."""
    r = np.arange(-cutoff, cutoff + 1)
    dist = np.rint(np.hypot(r[:, None], r[None, :])).astype(int).ravel()
    weights = np.zeros((dist.size, cutoff + 1))
    keep = dist <= cutoff
    weights[np.flatnonzero(keep), dist[keep]] = 1.0
    return weights / weights.sum(axis=0, keepdims=True)


def two_point_stats_reference(arr1, arr2, *, periodic_boundary: bool = True, cutoff=None):
    """Plain numpy, one sample at a time, following PyMKS's recipe step by step.

    ``fftn`` in float64, ``conj(F1) F2``, ``ifftn``, ``fftshift``, divide by the
    autocorrelation of a padded array of ones (non-periodic) or by the pixel count, then the
    centre slice. Slow on purpose: the baseline for the benchmark and the tests.

    Examples
    --------
    >>> a = np.array([[[1, 0, 0], [0, 1, 1], [1, 1, 0]]])
    >>> np.allclose(two_point_stats_reference(a, a), two_point_stats(a, a))
    True
    """
    arr1 = np.asarray(arr1, dtype=np.float64)
    arr2 = np.asarray(arr2, dtype=np.float64)
    spatial = arr1.shape[1:]
    cutoff = _resolve_cutoff(cutoff, spatial)
    pad = [(0, 0) if periodic_boundary else (cutoff, cutoff)] * len(spatial)

    def corr(a, b):
        return np.fft.fftshift(np.fft.ifftn(np.conj(np.fft.fftn(a)) * np.fft.fftn(b))).real

    results = []
    for a, b in zip(arr1, arr2, strict=True):
        a, b = np.pad(a, pad), np.pad(b, pad)
        c = corr(a, b)
        if periodic_boundary:
            c = c / a.size
        else:
            ones = np.pad(np.ones(spatial), pad)
            c = c / corr(ones, ones)
        centre = tuple(slice(m // 2 - cutoff, m // 2 + cutoff + 1) for m in c.shape)
        results.append(c[centre])
    return np.stack(results)


# ---------------------------------------------------------------------------------------
# the encoder
# ---------------------------------------------------------------------------------------
_OTSU_MAX_VALUES = 1 << 22  # Otsu on at most ~4M pooled pixels (an even stride through them)


class TwoPointEncoder(BaseEncoder):
    r"""Two-point statistics of segmented patches as features (optionally PCA-reduced).

    Pipeline: grey patch → phase labels (:func:`segment` with thresholds learned in ``fit``)
    → two-point statistics of the chosen phase pairs (:func:`correlations_multiple`, PyMKS
    definitions) → optional :func:`radial_average` → flattened in PyMKS's layout → optional
    PCA fitted on the training patches.

    Parameters
    ----------
    threshold : "otsu", float, sequence of float or None, default "otsu"
        How grey patches become phases. ``"otsu"``: Otsu (multi-Otsu for ``n_phases > 2``)
        thresholds of the pooled training pixels, learned once in ``fit`` and applied to every
        patch (a per-patch Otsu would cut noise in patches that hold one phase only); if the
        training pixels take at most ``n_phases`` distinct values the input is treated as
        already segmented and cut midway between them. A float (or ``n_phases - 1`` floats):
        fixed grey levels. ``None``: the input is a label map stored as grey,
        ``label = round(x * (n_phases - 1))``.
    n_phases : int, default 2
        Number of phases; labels run from 0 (darkest) to ``n_phases - 1``.
    phase : int, default 1
        The phase whose autocorrelation :math:`S_2` is computed (1 = the brighter phase of two).
        Ignored when ``correlations`` is given.
    correlations : sequence of (int, int) or None, default None
        Phase pairs ``(l, l')`` to compute (auto- and cross-correlations), stacked in this order.
        ``None`` means ``[(phase, phase)]``.
    periodic_boundary : bool, default True
        Periodic (PyMKS default) or non-periodic boundary (normalised by the number of pixel
        pairs inside the patch for each vector).
    cutoff : int or None, default 32
        Keep vectors with ``|r_x|, |r_y| <= cutoff`` (a (2·cutoff+1)² window; 65 x 65 for the
        default, a quarter of the default 128-pixel patch on each side of the centre). Clipped
        to ``(min(H, W) - 1) // 2`` of the training patches; ``None`` takes that maximum.
    radial : bool, default False
        Average over rings of equal ``round(|r|)`` → ``cutoff + 1`` values per correlation.
    n_components : int or None, default None
        PCA components fitted on the training patches' statistics. ``None``: the raw
        statistics, flattened from the centred layout (``(2·cutoff+1)² · n_correlations``
        features; ``(cutoff+1) · n_correlations`` when ``radial``).
    random_state : int or None, default None
        Seed of the PCA solver (used only by its randomised solver on large inputs).
    n_jobs : int or None, default None
        Threads for the FFTs (``None``: 1, ``-1``: all cores).

    Attributes
    ----------
    thresholds_ : ndarray of shape (k,)
        Grey levels between phases (``k <= n_phases - 1``).
    correlations_ : ndarray of shape (n_correlations, 2)
    cutoff_ : int
        Effective cutoff.
    n_stats_ : int
        Number of statistics per patch before PCA.
    components_, mean_, explained_variance_, explained_variance_ratio_ : ndarray
        The PCA (only when ``n_components`` is set).

    Examples
    --------
    >>> from matrep.testing import make_texture_patches
    >>> patches = make_texture_patches(4, 32)
    >>> enc = TwoPointEncoder(cutoff=4, radial=True).fit(patches)
    >>> enc.transform(patches).shape
    (4, 5)
    """

    name = "twopoint"
    description = ("Two-point autocorrelation statistics (PyMKS definitions) of Otsu-segmented "
                   "patches by FFT; optional radial average and PCA")
    trainable = True
    generative = False

    def __init__(self, *, threshold="otsu", n_phases=2, phase=1, correlations=None,
                 periodic_boundary=True, cutoff=32, radial=False, n_components=None,
                 random_state=None, n_jobs=None):
        self.threshold = threshold
        self.n_phases = n_phases
        self.phase = phase
        self.correlations = correlations
        self.periodic_boundary = periodic_boundary
        self.cutoff = cutoff
        self.radial = radial
        self.n_components = n_components
        self.random_state = random_state
        self.n_jobs = n_jobs

    # -- validation ---------------------------------------------------------------------
    def _resolve_correlations(self, n_phases):
        pairs = [(self.phase, self.phase)] if self.correlations is None else self.correlations
        try:
            arr = np.asarray(pairs)
        except (TypeError, ValueError):
            arr = np.empty((0, 0))
        ok = (arr.ndim == 2 and arr.shape[1:] == (2,) and arr.shape[0] >= 1
              and np.issubdtype(arr.dtype, np.integer)
              and arr.min() >= 0 and arr.max() < n_phases)
        if not ok:
            what = "phase" if self.correlations is None else "correlations"
            raise BadInputError(None, f"{what} must name phases in 0..{n_phases - 1} "
                                      f"(n_phases={n_phases}); correlations is a list of (l, l') "
                                      f"pairs; got phase={self.phase!r}, "
                                      f"correlations={self.correlations!r}")
        return arr.astype(np.int64)

    def _validate_params(self):
        n_phases = _check_n_phases(self.n_phases)
        correlations = self._resolve_correlations(n_phases)
        if not isinstance(self.periodic_boundary, (bool, np.bool_)):
            raise BadInputError(None, f"periodic_boundary must be True or False, got "
                                      f"{self.periodic_boundary!r}")
        nj = self.n_jobs
        if nj is not None and (not _is_int(nj) or nj == 0):
            raise BadInputError(None, f"n_jobs must be None or a non-zero integer (-1: all cores), "
                                      f"got {nj!r}")
        if not isinstance(self.radial, (bool, np.bool_)):
            raise BadInputError(None, f"radial must be True or False, got {self.radial!r}")
        nc = self.n_components
        if nc is not None and (not _is_int(nc) or nc < 1):
            raise BadInputError(None, f"n_components must be None or an integer >= 1, got {nc!r}")
        return n_phases, correlations

    # -- the maths, forwarded -----------------------------------------------------------
    def _stats(self, X):
        """Flattened statistics of patches ``X`` (float32, shape (n, n_stats_))."""
        if min(X.shape[1:]) < 2 * self.cutoff_ + 1:
            raise BadInputError(None, f"patches of shape {X.shape[1:]} are too small for the "
                                      f"fitted cutoff {self.cutoff_} (need at least "
                                      f"{2 * self.cutoff_ + 1} pixels per side); encode patches "
                                      "of the training size or fit with a smaller cutoff")
        labels = np.zeros(X.shape, dtype=np.int8)
        for t in self.thresholds_:  # == np.digitize(X, thresholds_, right=True), faster
            labels += X > t
        stats = correlations_multiple(labels, self.correlations_.tolist(),
                                      periodic_boundary=bool(self.periodic_boundary),
                                      cutoff=self.cutoff_, dtype=np.float32,
                                      workers=self.n_jobs)
        if self.radial:
            stats = radial_average(stats)
        return stats.reshape(len(X), -1)

    def fit(self, X, y=None, *, context=None):
        """Learn the phase thresholds and, if ``n_components`` is set, the PCA.

        Parameters
        ----------
        X : ndarray of shape (n_patches, H, W), values in [0, 1]
        y : ignored
        context : :class:`matrep.encoder.FitContext`, optional
            Accepted as every trainable encoder's fit does; nothing in it is needed here.

        Returns
        -------
        self
        """
        n_phases, correlations = self._validate_params()
        X = check_patches(X)
        if len(X) == 0:
            raise BadInputError(None, "fit needs at least one patch, got 0")
        if isinstance(self.threshold, str):
            flat = X.ravel()
            sample = flat[:: max(1, flat.size // _OTSU_MAX_VALUES)]
            thresholds = _resolve_thresholds(sample, self.threshold, n_phases)
        else:
            thresholds = _resolve_thresholds(X, self.threshold, n_phases)
        cutoff = _resolve_cutoff(self.cutoff, X.shape[1:])

        self.thresholds_ = thresholds.astype(np.float64)
        self.correlations_ = correlations
        self.cutoff_ = cutoff
        for attr in ("components_", "mean_", "explained_variance_", "explained_variance_ratio_"):
            self.__dict__.pop(attr, None)
        if self.n_components is None:
            self.n_stats_ = self._stats(X[:1]).shape[1]
            return self

        stats = self._stats(X)
        self.n_stats_ = stats.shape[1]
        limit = min(stats.shape)
        if self.n_components > limit:
            raise BadInputError(None, f"n_components={self.n_components} needs at least that many "
                                      f"training patches and statistics, got {stats.shape[0]} "
                                      f"patches x {stats.shape[1]} statistics; use "
                                      f"n_components <= {limit} or n_components=None")
        from sklearn.decomposition import PCA

        pca = PCA(n_components=int(self.n_components), random_state=self.random_state)
        pca.fit(stats.astype(np.float64))
        self.components_ = pca.components_.astype(np.float32)
        self.mean_ = pca.mean_.astype(np.float32)
        self.explained_variance_ = pca.explained_variance_.astype(np.float32)
        self.explained_variance_ratio_ = pca.explained_variance_ratio_.astype(np.float32)
        return self

    def transform(self, X):
        """Two-point features of patches.

        Parameters
        ----------
        X : ndarray of shape (n_patches, H, W), values in [0, 1]

        Returns
        -------
        ndarray of shape (n_patches, n_features), float32
            ``n_components`` PCA scores, or the raw statistics (``n_stats_``) in PyMKS's
            layout: ``stats[i, cutoff + r_x, cutoff + r_y, k]`` flattened in C order
            (``stats[i, k_r, k]`` when ``radial``), ``k`` indexing ``correlations_``.
        """
        self._check_fitted()
        X = check_patches(X)
        stats = self._stats(X)
        if getattr(self, "components_", None) is None:
            return stats
        return ((stats - self.mean_) @ self.components_.T).astype(np.float32, copy=False)

    def get_feature_names_out(self, input_features=None):
        """Names of the output features, e.g. ``S2[1,1](-3,+2)``, ``S2[1,1](r=4)`` or ``pc0``."""
        self._check_fitted()
        if getattr(self, "components_", None) is not None:
            return np.array([f"pc{i}" for i in range(len(self.components_))], dtype=object)
        c = self.cutoff_
        pairs = [f"S2[{a},{b}]" for a, b in self.correlations_.tolist()]
        if self.radial:
            names = [f"{p}(r={k})" for k in range(c + 1) for p in pairs]
        else:
            names = [f"{p}({i:+d},{j:+d})" for i in range(-c, c + 1) for j in range(-c, c + 1)
                     for p in pairs]
        return np.array(names, dtype=object)

    # -- save / load ----------------------------------------------------------------------
    def _get_state(self):
        arrays = {"thresholds_": self.thresholds_, "correlations_": self.correlations_}
        for attr in ("components_", "mean_", "explained_variance_", "explained_variance_ratio_"):
            if getattr(self, attr, None) is not None:
                arrays[attr] = getattr(self, attr)
        return arrays, {"cutoff_": int(self.cutoff_), "n_stats_": int(self.n_stats_)}

    def _set_state(self, arrays, meta):
        self.thresholds_ = np.asarray(arrays["thresholds_"], dtype=np.float64)
        self.correlations_ = np.asarray(arrays["correlations_"], dtype=np.int64)
        self.cutoff_ = int(meta["cutoff_"])
        self.n_stats_ = int(meta["n_stats_"])
        for attr in ("components_", "mean_", "explained_variance_", "explained_variance_ratio_"):
            if attr in arrays:
                setattr(self, attr, np.asarray(arrays[attr], dtype=np.float32))
