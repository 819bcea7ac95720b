r"""STSIM-2, the structural texture similarity metric of Zujovic, Pappas and Neuhoff (2013).

    J. Zujovic, T. N. Pappas and D. L. Neuhoff, "Structural texture similarity metrics for
    image analysis and retrieval", IEEE Transactions on Image Processing 22(7), 2545-2558,
    2013. doi:10.1109/TIP.2013.2251645

Both images are decomposed by a complex steerable pyramid (3 scales x 4 orientations plus the
high-pass and low-pass residuals: 14 subbands). For every subband the two images are compared
by four terms computed over a sliding window and multiplied (STSIM-1's per-band score):

.. math::

    l = \frac{2 |\mu_x| |\mu_y| + C}{|\mu_x|^2 + |\mu_y|^2 + C}, \quad
    c = \frac{2 \sigma_x \sigma_y + C}{\sigma_x^2 + \sigma_y^2 + C}, \quad
    c_{0,1} = 1 - \tfrac12 |\rho_x(0,1) - \rho_y(0,1)|, \quad
    c_{1,0} = 1 - \tfrac12 |\rho_x(1,0) - \rho_y(1,0)|,

    q = (l\, c\, c_{0,1}\, c_{1,0})^{1/4},

with :math:`\rho(0,1)` and :math:`\rho(1,0)` the first-order horizontal and vertical
autocorrelation coefficients of the (complex) subband. STSIM-2 adds cross-band terms
:math:`1 - \tfrac12 |\rho^{m,n}_x - \rho^{m,n}_y|`, where :math:`\rho^{m,n}` is the correlation
coefficient of the magnitudes of subbands m and n: across adjacent scales at the same
orientation (2 x 4 = 8 pairs) and across orientations at the same scale (3 x 6 = 18 pairs),
taken from an undecimated pyramid so the bands align position by position. Each term map is
averaged over the window positions and STSIM-2 is the mean of the 14 + 8 + 18 = 40 terms
(additive pooling). No weights are learned.

Variant implemented (the paper leaves the choice open; these follow the authors' reference
code): **sliding window**, 7x7, Gaussian (sigma = 7/6) for the mean/variance terms and uniform
for the correlation terms (7x6 and 6x7 windows over the shifted pairs, 7x7 for the cross
terms), "valid" positions only, C = 0.001, images scaled to 0..255 before the decomposition.
``window=None`` gives the **global** variant (one statistic per subband over the whole image).
Bands smaller than the window (e.g. the low-pass of a 64 px patch) use a window clipped to the
band size.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .steerable import steerable_pyramid

C = 0.001


@lru_cache(maxsize=32)
def _gauss1d(win: int, sigma: float) -> tuple:
    """1-D factor of MATLAB's ``fspecial('gaussian', win, sigma)`` (which is separable)."""
    m = (win - 1) / 2.0
    x = np.arange(win) - m
    h = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return tuple(h / h.sum())


def _sep_filter(x, ky, kx):
    """Valid-position correlation of x (..., h, w) with the separable kernel ky kx^T.

    Done by shifted slices (elementwise multiply-adds), which is much faster on CPU than a
    single-channel conv2d and works for complex tensors as is.
    """
    h = x.shape[-2] - len(ky) + 1
    out = sum(c * x[..., i:i + h, :] for i, c in enumerate(ky))
    w = x.shape[-1] - len(kx) + 1
    return sum(c * out[..., :, j:j + w] for j, c in enumerate(kx))


def _box(x, k: int, dim: int):
    """Valid-position sums over k consecutive entries along ``dim`` (cumulative-sum trick)."""
    import torch

    c = torch.cumsum(x, dim=dim)
    n = x.shape[dim]
    first = c.narrow(dim, k - 1, 1)
    if n == k:
        return first
    rest = c.narrow(dim, k, n - k) - c.narrow(dim, 0, n - k)
    return torch.cat([first, rest], dim=dim)


class _Window:
    """Local averaging over a sliding window (valid positions) or over the whole band."""

    def __init__(self, win: int | None):
        self.win = win

    def gauss(self, x):
        if self.win is None:
            return x.mean((-2, -1), keepdim=True)
        k = min(self.win, x.shape[-2], x.shape[-1])
        g = _gauss1d(k, k / 6.0)
        return _sep_filter(x, g, g)

    def uniform(self, x, shape):
        if self.win is None:
            return x.mean((-2, -1), keepdim=True)
        kh = max(1, min(shape[0], x.shape[-2]))
        kw = max(1, min(shape[1], x.shape[-1]))
        return _box(_box(x, kh, -2), kw, -1) / (kh * kw)


def _sqrt0(v):
    return v.clamp_min(0).sqrt()


def _band_term(a, b, w: _Window):
    """STSIM-1 score of one subband pair (a, b), each (N, h, w) real or complex -> (N,)."""
    mua, mub = w.gauss(a), w.gauss(b)
    ma, mb = mua.abs(), mub.abs()
    lum = (2 * ma * mb + C) / (ma ** 2 + mb ** 2 + C)
    va = w.gauss(a.abs() ** 2) - ma ** 2
    vb = w.gauss(b.abs() ** 2) - mb ** 2
    sa, sb = _sqrt0(va), _sqrt0(vb)
    con = (2 * sa * sb + C) / (va.clamp_min(0) + vb.clamp_min(0) + C)
    win = w.win or 0
    c01 = _corr_term(a[..., :, :-1], a[..., :, 1:], b[..., :, :-1], b[..., :, 1:], w,
                     (win, win - 1), conj=True)
    c10 = _corr_term(a[..., :-1, :], a[..., 1:, :], b[..., :-1, :], b[..., 1:, :], w,
                     (win - 1, win), conj=True)
    # the four maps have the same valid size except when a window was clipped
    hh = min(m.shape[-2] for m in (lum, con, c01, c10))
    ww = min(m.shape[-1] for m in (lum, con, c01, c10))
    prod = (lum[..., :hh, :ww] * con[..., :hh, :ww] * c01[..., :hh, :ww] * c10[..., :hh, :ww])
    return prod.clamp(0, 1).pow(0.25).mean((-2, -1))


def _rho(p, q, w: _Window, shape, conj: bool):
    """Correlation coefficient map of p and q (complex when conj: E[p q*])."""
    mp, mq = w.uniform(p, shape), w.uniform(q, shape)
    vp = w.uniform(p.abs() ** 2, shape) - mp.abs() ** 2
    vq = w.uniform(q.abs() ** 2, shape) - mq.abs() ** 2
    if conj:
        cross = w.uniform(p * q.conj(), shape) - mp * mq.conj()
    else:
        cross = w.uniform(p * q, shape) - mp * mq
    return (cross + C) / (_sqrt0(vp) * _sqrt0(vq) + C)


def _corr_term(a1, a2, b1, b2, w: _Window, shape, conj: bool):
    ra = _rho(a1, a2, w, shape, conj)
    rb = _rho(b1, b2, w, shape, conj)
    return (1 - 0.5 * (ra - rb).abs()).clamp(0, 1)


def _pyramids(x, y, n_scales, n_orientations, dtype):
    kw = dict(n_scales=n_scales, n_orientations=n_orientations, dtype=dtype)
    pa, pb = steerable_pyramid(x, **kw), steerable_pyramid(y, **kw)
    ua = steerable_pyramid(x, subsample=False, **kw)
    ub = steerable_pyramid(y, subsample=False, **kw)
    mag_a = [[band.abs() for band in s] for s in ua.bands]
    mag_b = [[band.abs() for band in s] for s in ub.bands]
    return pa, pb, mag_a, mag_b


def _terms(pyr, window, n_scales, n_orientations):
    import torch

    pa, pb, mag_a, mag_b = pyr
    w = _Window(window)
    terms = [_band_term(a, b, w) for a, b in zip(pa.as_list(), pb.as_list())]
    shape = (window or 0, window or 0)
    for s in range(1, n_scales):                       # across scales, same orientation
        for o in range(n_orientations):
            terms.append(_corr_term(mag_a[s - 1][o], mag_a[s][o], mag_b[s - 1][o], mag_b[s][o],
                                    w, shape, conj=False).mean((-2, -1)))
    for s in range(n_scales):                          # across orientations, same scale
        for o1 in range(n_orientations - 1):
            for o2 in range(o1 + 1, n_orientations):
                terms.append(_corr_term(mag_a[s][o1], mag_a[s][o2], mag_b[s][o1], mag_b[s][o2],
                                        w, shape, conj=False).mean((-2, -1)))
    return torch.stack(terms, dim=1)


def stsim2_terms(x, y, *, window: int | None = 7, n_scales: int = 3, n_orientations: int = 4,
                 dtype=None):
    """All STSIM-2 terms of a batch, shape (N, n_terms): band terms, then cross-scale, then
    cross-orientation terms (40 columns with the defaults)."""
    return stsim2_variants(x, y, windows=(window,), n_scales=n_scales,
                           n_orientations=n_orientations, dtype=dtype, terms=True)[window]


def stsim2_variants(x, y, *, windows=(7, None), n_scales: int = 3, n_orientations: int = 4,
                    dtype=None, terms: bool = False) -> dict:
    """STSIM-2 for several windows from one pyramid pass: ``{window: scores (N,)}``
    (``terms=True``: ``{window: (N, n_terms)}``). Unbatched; see :func:`stsim2`."""
    import torch

    x, y = _check_pair(x, y)
    for window in windows:
        if window is not None and window < 2:
            raise ValueError(f"window must be >= 2 or None (global), got {window}")
    dtype = dtype or torch.float64
    x = x.to(dtype) * 255.0
    y = y.to(dtype) * 255.0
    pyr = _pyramids(x, y, n_scales, n_orientations, dtype)
    out = {}
    for window in windows:
        t = _terms(pyr, window, n_scales, n_orientations)
        out[window] = t if terms else t.mean(1).clamp(0, 1).float()
    return out


def _check_pair(x, y):
    import torch

    if not torch.is_tensor(x) or not torch.is_tensor(y):
        raise TypeError(f"expected torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if x.dim() == 4 and x.shape[1] == 1:
        x, y = x[:, 0], y[:, 0]
    if x.dim() != 3:
        raise ValueError(f"expected grey images of shape (N, 1, H, W), got {tuple(x.shape)}")
    if torch.is_complex(x) or not x.is_floating_point():
        x, y = x.float(), y.float()
    return x, y


def stsim2(x, y, *, window: int | None = 7, n_scales: int = 3, n_orientations: int = 4,
           batch_size: int = 64, dtype=None):
    """STSIM-2 similarity of two batches of grey images.

    Parameters
    ----------
    x, y : tensors of shape (N, 1, H, W) in [0, 1] (on any device; computed there)
    window : int or None, default 7 — sliding window size; None for the global variant
    n_scales, n_orientations : int, default 3, 4 — steerable pyramid
    batch_size : int, default 64 — images per pyramid pass (bounds memory)
    dtype : computation dtype, default torch.float64

    Returns
    -------
    tensor of shape (N,), float32, in [0, 1]; 1 for identical images. Symmetric in x and y.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    >>> stsim2(x, x).tolist()
    [1.0, 1.0]
    """
    import torch

    if window is not None and window < 2:
        raise ValueError(f"window must be >= 2 or None (global), got {window}")
    x, y = _check_pair(x, y)
    out = []
    for i in range(0, len(x), batch_size):
        t = stsim2_terms(x[i:i + batch_size], y[i:i + batch_size], window=window,
                         n_scales=n_scales, n_orientations=n_orientations, dtype=dtype)
        out.append(t.mean(1))
    if not out:
        return torch.zeros(0, dtype=torch.float32, device=x.device)
    return torch.cat(out).clamp(0, 1).float()


def n_terms(n_scales: int = 3, n_orientations: int = 4) -> int:
    """Number of STSIM-2 terms: subbands + cross-scale pairs + cross-orientation pairs (40)."""
    return (n_scales * n_orientations + 2 + (n_scales - 1) * n_orientations
            + n_scales * math.comb(n_orientations, 2))
