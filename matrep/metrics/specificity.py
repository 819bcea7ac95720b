"""Is a reconstruction specific to its input? Own-vs-other distance of reconstructions.

For patches x_i from several micrographs and their reconstructions r_i, compare d(x_i, r_i)
with d(x_i, r_j) for r_j the reconstruction of a patch of *another* micrograph (one partner
per patch, seeded). A model that decodes one average texture scores the same on both; a
useful one is closer to its own reconstruction for (nearly) every patch. The texture-VAE uses
its own style loss as ``d`` (``TextureVAEEncoder.style_distance``).
"""

from __future__ import annotations

import numpy as np


def own_vs_other(X, R, micrograph_ids, distance, *, seed: int = 0) -> dict:
    """Own-reconstruction vs other-micrograph-reconstruction distance.

    Parameters
    ----------
    X, R : arrays of shape (n, P, P) — patches and their reconstructions
    micrograph_ids : array of shape (n,) — at least two distinct values
    distance : callable(X, Y) -> array of shape (n,), lower = closer
    seed : int — seeds the choice of each patch's other-micrograph partner

    Returns
    -------
    dict with ``own`` and ``other`` (arrays of shape (n,)), their means and medians,
    ``frac_own_lower`` (share of patches whose own reconstruction is closer), ``ratio``
    (mean own / mean other) and ``n``.

    Raises
    ------
    ValueError if the patches come from fewer than two micrographs.
    """
    ids = np.asarray(micrograph_ids)
    if len(set(ids.tolist())) < 2:
        raise ValueError("specificity needs patches from at least two micrographs, got "
                         f"{len(set(ids.tolist()))}")
    rng = np.random.default_rng(seed)
    partner = np.array([rng.choice(np.flatnonzero(ids != ids[i])) for i in range(len(X))])
    own = np.asarray(distance(X, R), dtype=float)
    other = np.asarray(distance(X, R[partner]), dtype=float)
    return {"own": own, "other": other, "own_mean": float(own.mean()),
            "other_mean": float(other.mean()), "own_median": float(np.median(own)),
            "other_median": float(np.median(other)),
            "frac_own_lower": float((own < other).mean()),
            "ratio": float(own.mean() / other.mean()), "n": int(len(X))}
