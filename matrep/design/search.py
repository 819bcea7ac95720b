r"""Searching the latent space for targets, inside the prior's high-density region.

The objective of a latent :math:`z` for targets :math:`t_p` is the expected squared error of
the surrogates, each property scaled by its tolerance :math:`s_p` (``tolerance x |t_p|``):

.. math::

    a(z) = \sum_p \frac{(\mu_p(z) - t_p)^2 + \sigma_{f,p}^2(z)}{s_p^2}
           + \lambda \max(0, \lVert z\rVert^2 - r^2)^2 ,

the first term the mean squared distance of the property to its target under the surrogate
(so both "off target" and "unsure" cost), the second a penalty that keeps :math:`z` inside the
ball :math:`\lVert z\rVert^2 \le r^2 = \chi^2_{d}(q)` holding a fraction ``q`` of the prior
:math:`N(0, I_d)` mass (``d`` the active dimensions). Each start is minimised by L-BFGS-B with
the analytic gradient and then projected into the ball.

One-to-many: several starts (the training latents the surrogate ranks best, and draws from the
prior) give several minima; :func:`select_diverse` keeps candidates at least a given latent
distance apart.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.stats import chi2


def prior_radius(dim: int, quantile: float = 0.99) -> float:
    """Radius of the ball holding ``quantile`` of the mass of N(0, I_dim).

    >>> round(prior_radius(1, 0.95), 3)
    1.96
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    return float(np.sqrt(chi2.ppf(quantile, int(dim))))


def project_to_ball(Z, radius: float) -> np.ndarray:
    """Scale rows of ``Z`` longer than ``radius`` back onto the sphere of that radius."""
    Z = np.atleast_2d(np.asarray(Z, dtype=np.float64)).copy()
    n = np.linalg.norm(Z, axis=1)
    far = n > radius
    Z[far] *= (radius / n[far])[:, None]
    return Z


class SearchSpace:
    r"""The coordinates the search works in: latents (the active dimensions) whitened by a
    Gaussian, :math:`u = L^{-1}(z - m)` with :math:`LL^\top = \Sigma`, so that the search ball
    :math:`\lVert u\rVert \le r` is that Gaussian's high-density ellipsoid.

    :meth:`fit` takes the Gaussian of the training latents (the encoder's posterior means): the
    region where the decoder met real patches in training. :meth:`prior` is N(0, I), the ball
    of the prior itself. With a small KL weight the posterior means spread far wider than the
    prior (a quick-preset model with KL weight 0.05: per-dimension std 1.8-4.5, median length
    7.7 where the prior's 99 % ball has radius 4.5), so the prior's ball leaves most real
    patches out; with the preset's 0.3 they spread 0.6-2.6 (median length 4.2).
    """

    def __init__(self, center, chol):
        self.center = np.asarray(center, dtype=np.float64)
        self.chol = np.asarray(chol, dtype=np.float64)

    @classmethod
    def prior(cls, dim: int) -> "SearchSpace":
        return cls(np.zeros(dim), np.eye(dim))

    @classmethod
    def fit(cls, Z, ridge: float = 1e-6) -> "SearchSpace":
        """The Gaussian (mean, covariance + ``ridge`` x its mean variance) of latents ``Z``."""
        Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
        if len(Z) < Z.shape[1] + 1:
            raise ValueError(f"fitting the search region needs more latents ({len(Z)}) than "
                             f"dimensions ({Z.shape[1]})")
        C = np.atleast_2d(np.cov(Z.T))
        C = C + ridge * max(float(np.trace(C)) / len(C), 1e-12) * np.eye(len(C))
        return cls(Z.mean(axis=0), np.linalg.cholesky(C))

    def to_search(self, Z) -> np.ndarray:
        """Search coordinates of latents ``Z`` (m, d)."""
        from scipy.linalg import solve_triangular

        Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
        return solve_triangular(self.chol, (Z - self.center).T, lower=True).T

    def to_latent(self, U) -> np.ndarray:
        """Latents of search coordinates ``U`` (m, d)."""
        return self.center + np.atleast_2d(np.asarray(U, dtype=np.float64)) @ self.chol.T

    def wrap(self, surrogate) -> "_InSearchSpace":
        """``surrogate`` (of latents) as a surrogate of search coordinates."""
        return _InSearchSpace(surrogate, self)


class _InSearchSpace:
    """A latent surrogate seen in search coordinates: predictions at ``to_latent(u)``, their
    gradients by the chain rule (``L^T grad``), physics values added at the latents."""

    def __init__(self, surrogate, space: SearchSpace):
        self.surrogate, self.space = surrogate, space

    def predict(self, U, return_std: bool = False):
        return self.surrogate.predict(self.space.to_latent(U), return_std=return_std)

    def predict_grad(self, u):
        m, v, gm, gv = self.surrogate.predict_grad(self.space.to_latent(u)[0])
        L = self.space.chol
        return m, v, L.T @ gm, L.T @ gv

    def add(self, U, values):
        self.surrogate.add(self.space.to_latent(U), values)
        return self


def objective(surrogates, targets, scales, z, radius: float, penalty: float = 10.0):
    """:math:`a(z)` and its gradient (see the module docstring).

    Parameters
    ----------
    surrogates : dict of property -> surrogate with ``predict_grad`` (LatentGP, CorrectedSurrogate)
    targets, scales : dict of property -> float
    z : array of shape (d,)
    """
    val, grad = 0.0, np.zeros_like(z, dtype=np.float64)
    for p, s in surrogates.items():
        m, v, gm, gv = s.predict_grad(z)
        e = m - targets[p]
        w = 1.0 / scales[p] ** 2
        val += w * (e * e + v)
        grad += w * (2 * e * gm + gv)
    excess = float(z @ z) - radius ** 2
    if excess > 0:
        val += penalty * excess ** 2
        grad += penalty * 4 * excess * z
    return val, grad


def score(surrogates, targets, scales, Z) -> np.ndarray:
    """Expected scaled squared error (noise included) of each row of ``Z``; lower is better."""
    out = np.zeros(len(Z))
    for p, s in surrogates.items():
        m, sd = s.predict(Z, return_std=True)
        out += ((m - targets[p]) ** 2 + sd ** 2) / scales[p] ** 2
    return out


def optimise(surrogates, targets, scales, starts, radius: float, *, maxiter: int = 30):
    """Minimise :func:`objective` from each start; the results projected into the ball.

    At most ``maxiter`` L-BFGS-B iterations and ``2 * maxiter`` objective evaluations per
    start: the physics check corrects what a short search leaves.

    Returns
    -------
    ndarray of shape (n_starts, d)
    """
    out = []
    for z0 in np.atleast_2d(starts):
        res = minimize(lambda z: objective(surrogates, targets, scales, z, radius),
                       np.asarray(z0, dtype=np.float64), jac=True, method="L-BFGS-B",
                       options={"maxiter": int(maxiter), "maxfun": 2 * int(maxiter)})
        out.append(res.x)
    return project_to_ball(np.array(out), radius) if out else np.zeros((0, np.shape(starts)[-1]))


def select_diverse(Z, scores, k: int, min_distance: float, exclude=None) -> np.ndarray:
    """Greedy choice of up to ``k`` rows of ``Z``, best score first, pairwise apart.

    A row is taken only if it lies at least ``min_distance`` (Euclidean) from every row taken
    before and from every row of ``exclude`` (latents already checked). Fewer than ``k`` rows
    come back when not enough are far enough apart.

    Returns
    -------
    int ndarray of the chosen row indices, in the order chosen
    """
    Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
    taken = [] if exclude is None else [np.asarray(e, np.float64) for e in np.atleast_2d(exclude)
                                        if np.size(e)]
    chosen = []
    for i in np.argsort(scores, kind="stable"):
        if len(chosen) >= k:
            break
        if all(np.linalg.norm(Z[i] - t) >= min_distance for t in taken):
            chosen.append(int(i))
            taken.append(Z[i])
    return np.array(chosen, dtype=np.int64)


def propose(surrogates, targets, scales, *, pool, radius: float, n: int, n_starts: int = 16,
            min_distance: float = 1.0, exclude=None, rng=None, maxiter: int = 30):
    """Up to ``n`` diverse latents the surrogates expect to meet the targets.

    Parameters
    ----------
    surrogates, targets, scales : dicts by property (see :func:`objective`)
    pool : array of shape (m, d)
        Latents to start from (the training latents): the ``n_starts // 2`` best by
        :func:`score` that lie ``min_distance`` apart; the rest of the starts are prior draws
        inside the ball.
    radius : float — the prior ball (:func:`prior_radius`)
    n : int — latents wanted
    exclude : array of shape (k, d), optional — latents already checked (kept at a distance)
    min_distance : float — wanted distance between candidates and from ``exclude``; halved
        (up to five times) when fewer than ``n`` candidates are that far apart; if still too
        few, random steps of ``min_distance / 2`` around the best ones fill the batch
    rng : numpy Generator

    Returns
    -------
    Z : ndarray of shape (<= n, d)
    scores : ndarray — :func:`score` of each
    """
    rng = np.random.default_rng(0) if rng is None else rng
    pool = np.atleast_2d(np.asarray(pool, dtype=np.float64))
    d = pool.shape[1]
    n_pool = max(1, n_starts // 2)
    sp = score(surrogates, targets, scales, pool)
    starts = [pool[select_diverse(pool, sp, n_pool, min_distance)]]
    n_rand = max(0, n_starts - len(starts[0]))
    if n_rand:
        starts.append(project_to_ball(rng.standard_normal((n_rand, d)), radius))
    starts = np.concatenate(starts)
    Z = optimise(surrogates, targets, scales, starts, radius, maxiter=maxiter)
    s = score(surrogates, targets, scales, Z)
    Zall, sall = Z, s
    for dist in min_distance / 2.0 ** np.arange(6):  # relax the distance before giving fewer
        pick = select_diverse(Z, s, n, dist, exclude=exclude)
        if len(pick) >= n:
            break
    Z, s = Z[pick], s[pick]
    if len(Z) < n:  # the minima are all taken: explore around the best of them
        best = Z if len(Z) else Zall[np.argsort(sall)[:1]]
        J = project_to_ball(best[rng.integers(len(best), size=n - len(Z))]
                            + 0.5 * min_distance * rng.standard_normal((n - len(Z), d)), radius)
        Z = np.concatenate([Z, J])
        s = np.concatenate([s, score(surrogates, targets, scales, J)])
    return Z, s


def secant_steps(Z, errors, k: int, radius: float, *, min_distance: float = 1.0) -> np.ndarray:
    """Refinement by physics: secant steps between checked latents on both sides of the target.

    For up to ``k`` anchors (the checked latents with the smallest ``|error|``, at least
    ``min_distance`` apart, relaxed by halving when too few are), the partner is the nearest
    checked latent whose error has the other sign, and the step goes to where the straight
    line between their errors crosses zero:

    .. math::  z = z_a + \\frac{e_a}{e_a - e_b}\\,(z_b - z_a).

    Anchors without a partner are skipped, and so are steps that land within
    ``0.05 * min_distance`` of a checked latent (an anchor already on target) or of an earlier
    step (two anchors sharing a partner). The physics value along a short segment of the
    latent space is close to linear, so each step lands much nearer the target than either end.

    Parameters
    ----------
    Z : array of shape (m, d) — checked latents
    errors : array of shape (m,) — signed errors (physics - target), NaN for failed checks
    k : int
    radius : float — the prior ball (the steps are projected into it)

    Returns
    -------
    ndarray of shape (<= k, d)
    """
    Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
    e = np.asarray(errors, dtype=np.float64)
    ok = np.isfinite(e)
    Z, e = Z[ok], e[ok]
    if len(Z) < 2:
        return np.zeros((0, Z.shape[1]))
    for dist in min_distance / 2.0 ** np.arange(6):
        anchors = select_diverse(Z, np.abs(e), k, dist)
        if len(anchors) >= k:
            break
    out = []
    for a in anchors:
        opp = np.flatnonzero(np.sign(e) == -np.sign(e[a]))
        if e[a] == 0 or not len(opp):
            continue
        b = opp[np.argmin(np.linalg.norm(Z[opp] - Z[a], axis=1))]
        s = e[a] / (e[a] - e[b])
        out.append(Z[a] + s * (Z[b] - Z[a]))
    if not out:
        return np.zeros((0, Z.shape[1]))
    out = project_to_ball(np.array(out), radius)
    # a step that lands on a checked latent (an anchor already on target) would spend a
    # solver call on a design already checked: leave it to the search
    tol = 0.05 * min_distance
    keep = []
    for i, z in enumerate(out):
        if (np.linalg.norm(Z - z, axis=1).min() > tol
                and all(np.linalg.norm(z - out[j]) > tol for j in keep)):
            keep.append(i)
    return out[keep]
