r"""Disentanglement scores of latents against known factors: MIG and SAP.

.. math::

    \mathrm{MIG} = \frac{1}{K}\sum_k \frac{I(z_{j^{(k)}_1}; v_k) - I(z_{j^{(k)}_2}; v_k)}
    {H(v_k)}, \qquad
    \mathrm{SAP} = \frac{1}{K}\sum_k \left(S_{j^{(k)}_1 k} - S_{j^{(k)}_2 k}\right),

with :math:`j^{(k)}_1, j^{(k)}_2` the latent dimensions with the largest and second largest
mutual information (MIG) or score (SAP) for factor :math:`v_k`. MIG discretises each latent
into ``n_bins`` equal-width bins and each factor into at most ``n_bins`` values (its distinct
values, else quantile bins); SAP's score :math:`S_{jk}` is the :math:`R^2` of a linear fit of
factor k on latent j (Kumar et al.'s continuous-factor form). Both lie in [0, 1]; higher means
each factor is captured by one dimension alone.

R. T. Q. Chen, X. Li, R. Grosse and D. Duvenaud, "Isolating sources of disentanglement in
variational autoencoders", NeurIPS 2018.
A. Kumar, P. Sattigeri and A. Balakrishnan, "Variational inference of disentangled latent
concepts from unlabeled observations", ICLR 2018.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadInputError


def _discretize(v, n_bins):
    v = np.asarray(v, dtype=float)
    u = np.unique(v)
    if len(u) <= n_bins:
        return np.searchsorted(u, v)
    edges = np.unique(np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.digitize(v, edges)


def _usable_factors(factors):
    """Names of the factors with at least 3 finite values, not all equal."""
    cols = []
    for c in factors.columns:
        v = factors[c].to_numpy(dtype=float)
        if np.isfinite(v).sum() >= 3 and np.ptp(v[np.isfinite(v)]) > 0:
            cols.append(c)
    return cols


def mutual_information_gap(Z, factors, *, n_bins: int = 20) -> dict:
    """MIG of latents ``Z`` (n, d) with respect to ``factors`` (DataFrame (n, K)).

    Returns ``{"score": float, "per_factor": {name: gap}, "top_dims": {name: [j1, j2]}}``;
    the score is the mean normalised gap over factors with at least two values. Needs d >= 2.
    """
    from sklearn.metrics import mutual_info_score

    Z = np.asarray(Z, dtype=float)
    if Z.ndim != 2 or Z.shape[1] < 2:
        raise BadInputError(None, f"MIG needs at least 2 latent dimensions, got shape {Z.shape}")
    per, top = {}, {}
    for c in _usable_factors(factors):
        v = factors[c].to_numpy(dtype=float)
        ok = np.isfinite(v)
        vd = _discretize(v[ok], n_bins)
        h = mutual_info_score(vd, vd)
        if h <= 0:
            continue
        mi = np.empty(Z.shape[1])
        for j in range(Z.shape[1]):
            z = Z[ok, j]
            edges = np.histogram_bin_edges(z, bins=n_bins)
            mi[j] = mutual_info_score(np.digitize(z, edges[1:-1]), vd)
        order = np.argsort(mi)[::-1]
        per[c] = float((mi[order[0]] - mi[order[1]]) / h)
        top[c] = [int(order[0]), int(order[1])]
    score = float(np.mean(list(per.values()))) if per else float("nan")
    return {"score": score, "per_factor": per, "top_dims": top, "n_bins": n_bins}


def sap_score(Z, factors) -> dict:
    """SAP of latents ``Z`` (n, d) with respect to ``factors`` (DataFrame (n, K)).

    The score of latent j for factor k is the R^2 of the linear fit of the factor on z_j (the
    squared Pearson correlation); SAP is the mean gap between the best and second-best
    dimension. Returns ``{"score", "per_factor", "top_dims"}``.
    """
    Z = np.asarray(Z, dtype=float)
    if Z.ndim != 2 or Z.shape[1] < 2:
        raise BadInputError(None, f"SAP needs at least 2 latent dimensions, got shape {Z.shape}")
    per, top = {}, {}
    for c in _usable_factors(factors):
        v = factors[c].to_numpy(dtype=float)
        ok = np.isfinite(v)
        z = Z[ok]
        zc = z - z.mean(0)
        vc = v[ok] - v[ok].mean()
        denom = np.sqrt((zc ** 2).sum(0) * (vc ** 2).sum())
        r2 = np.where(denom > 0, (zc.T @ vc) / np.where(denom > 0, denom, 1), 0.0) ** 2
        order = np.argsort(r2)[::-1]
        per[c] = float(r2[order[0]] - r2[order[1]])
        top[c] = [int(order[0]), int(order[1])]
    score = float(np.mean(list(per.values()))) if per else float("nan")
    return {"score": score, "per_factor": per, "top_dims": top}
