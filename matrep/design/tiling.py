r"""Designs larger than a patch: periodic tiling of decoded patches with blended seams.

A W x W design of latent :math:`z` is laid out on a torus (so that it is one period of a
periodic medium, as the homogenisation solver assumes). ``m = ceil(W / (P - overlap))`` tiles
per side sit at offsets ``round(k W / m)``; every tile is decoded from
:math:`z + \epsilon_k`, :math:`\epsilon_k \sim N(0, \text{jitter}^2 I)` on the latent
dimensions the design uses (jitter 0: the same patch everywhere), and is weighted by a
separable window that is 1 inside and falls off as a raised cosine over ``overlap`` pixels at
each edge; the canvas is the weighted mean of the tiles. Blending averages the grey levels of
two tiles in the seams, which blurs particles there; the property of the large design is
therefore measured by physics on the large design itself, not assumed equal to the patch's.

Texture synthesis towards the patch's Gram statistics (Gatys et al. 2015) would avoid the
seams, but costs a VGG19 forward and backward pass of the whole W x W image per iteration
(minutes per 512^2 design on two CPU cores); it is not implemented.
"""

from __future__ import annotations

import math

import numpy as np


def blend_window(size: int, ramp: int) -> np.ndarray:
    """1-D weights of length ``size``: a raised-cosine ramp over ``ramp`` pixels at each end.

    >>> np.round(blend_window(6, 2), 3).tolist()
    [0.146, 0.854, 1.0, 1.0, 0.854, 0.146]
    """
    w = np.ones(size, dtype=np.float64)
    ramp = int(min(max(ramp, 0), size // 2))
    if ramp:
        t = (np.arange(ramp) + 0.5) / ramp
        r = 0.5 - 0.5 * np.cos(np.pi * t)
        w[:ramp] = r
        w[size - ramp:] = r[::-1]
    return w


def tile_latents(z, n_tiles: int, *, jitter: float = 0.25, active=None, seed: int = 0) -> np.ndarray:
    """``n_tiles`` latents around ``z``: ``z + jitter * N(0, I)`` on the ``active`` dimensions."""
    z = np.asarray(z, dtype=np.float32).ravel()
    Z = np.repeat(z[None], n_tiles, axis=0)
    if jitter > 0:
        idx = np.arange(len(z)) if active is None else np.asarray(active)
        eps = np.random.default_rng(seed).standard_normal((n_tiles, len(idx))).astype(np.float32)
        Z[:, idx] += jitter * eps
    return Z


def tile(patches, size: int, *, overlap: int) -> np.ndarray:
    """Blend ``m * m`` patches (row-major) into one periodic ``size x size`` image.

    Parameters
    ----------
    patches : array of shape (m * m, P, P)
    size : int — side of the result
    overlap : int — width of the blended seams (pixels)
    """
    patches = np.asarray(patches, dtype=np.float64)
    n, P, _ = patches.shape
    m = int(round(math.sqrt(n)))
    if m * m != n:
        raise ValueError(f"expected a square number of tiles, got {n}")
    if m * P < size:
        raise ValueError(f"{m}x{m} tiles of {P} px cannot cover {size} px")
    w1 = blend_window(P, overlap) + 1e-6
    w2 = np.outer(w1, w1)
    acc = np.zeros((size, size))
    wsum = np.zeros((size, size))
    offs = [int(round(k * size / m)) for k in range(m)]
    for i, oy in enumerate(offs):
        for j, ox in enumerate(offs):
            ys = (oy + np.arange(P)) % size
            xs = (ox + np.arange(P)) % size
            acc[np.ix_(ys, xs)] += w2 * patches[i * m + j]
            wsum[np.ix_(ys, xs)] += w2
    return (acc / wsum).astype(np.float32)


def n_tiles_per_side(size: int, patch: int, overlap: int) -> int:
    """Tiles per side so that neighbours overlap by at least ``overlap`` pixels."""
    step = patch - overlap
    if step <= 0:
        raise ValueError(f"overlap {overlap} must be smaller than the patch {patch}")
    return max(1, math.ceil(size / step))


def large_design(model, z, size: int, *, overlap: int | None = None, jitter: float = 0.25,
                 active=None, seed: int = 0) -> np.ndarray:
    """A periodic ``size x size`` design of latent ``z`` by blended tiling (module docstring).

    Parameters
    ----------
    model : a decoding encoder (``decode(Z) -> (n, P, P)``)
    z : array of shape (latent_dim,)
    size : int — side in pixels (e.g. 512)
    overlap : int, default P // 4
    jitter : float, default 0.25 — spread of the tiles' latents around ``z``
    active : indices of the latent dimensions to jitter (default all)
    seed : int
    """
    P = int(np.asarray(model.decode(np.asarray(z, np.float32)[None])).shape[-1])
    overlap = P // 4 if overlap is None else int(overlap)
    m = n_tiles_per_side(size, P, overlap)
    Z = tile_latents(z, m * m, jitter=jitter, active=active, seed=seed)
    return tile(model.decode(Z), size, overlap=overlap)
