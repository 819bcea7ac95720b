"""The ``twopoint`` encoder: segmented patches to two-point statistics, optionally PCA-reduced.

:class:`TwoPointEncoder` only forwards its parameters to the functions of
:mod:`~matrep.plugins.twopoint.stats`.
"""

from __future__ import annotations

import numpy as np

from matrep.encoder import BaseEncoder, check_patches
from matrep.errors import BadInputError

from .stats import (_check_n_phases, _is_int, _resolve_cutoff, _resolve_thresholds,
                    correlations_multiple, radial_average)


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
