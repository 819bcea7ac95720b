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

Modules
-------
* :mod:`~matrep.plugins.twopoint.stats`: the maths (:func:`segment`, :func:`otsu_thresholds`,
  :func:`two_point_stats`, :func:`correlations_multiple`, :func:`radial_average`,
  :func:`two_point_stats_reference`)
* :mod:`~matrep.plugins.twopoint.encoder`: :class:`TwoPointEncoder` (the entry point
  ``twopoint = "matrep.plugins.twopoint:TwoPointEncoder"``)

Everything public is importable from ``matrep.plugins.twopoint`` itself.
"""

from __future__ import annotations

from .encoder import TwoPointEncoder
from .stats import (correlations_multiple, otsu_thresholds, radial_average, segment,
                    two_point_stats, two_point_stats_reference)

__all__ = [
    "segment",
    "otsu_thresholds",
    "two_point_stats",
    "correlations_multiple",
    "radial_average",
    "two_point_stats_reference",
    "TwoPointEncoder",
]
