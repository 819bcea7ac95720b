r"""The maths of the ``twopoint`` encoder, in pure functions: segmentation and two-point statistics.

:func:`segment`, :func:`otsu_thresholds`, :func:`two_point_stats`,
:func:`correlations_multiple`, :func:`radial_average` and :func:`two_point_stats_reference`;
the definitions are in :mod:`matrep.plugins.twopoint`.
"""

from __future__ import annotations

import numbers

import numpy as np

from matrep.errors import BadInputError

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
