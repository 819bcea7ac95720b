r"""Forward surrogates on the latent space: a Gaussian process with gradients, and its correction.

:class:`LatentGP` is Gaussian-process regression (Rasmussen & Williams 2006, alg. 2.1) with
the kernel

.. math::

    k(z, z') = c \exp\Big(-\tfrac12 \sum_j (z_j - z'_j)^2 / \ell_j^2\Big)
               + \sigma_n^2 \delta_{zz'},

whose hyperparameters :math:`c, \ell, \sigma_n` are fitted by scikit-learn's
``GaussianProcessRegressor`` (maximum marginal likelihood, on a seeded subset of at most
``max_fit_points`` points). The posterior is then computed here on all points, so that the
search gets the analytic gradients of the mean and of the variance:

.. math::

    \mu(z) = m + s\,k_z^\top \alpha, \qquad
    \sigma_f^2(z) = s^2 (c - k_z^\top K^{-1} k_z), \qquad
    \nabla\mu = s \sum_i \alpha_i k_i\,\frac{z_i - z}{\ell^2}, \qquad
    \nabla\sigma_f^2 = -2 s^2 \,(\nabla k_z)^\top K^{-1} k_z,

with :math:`m, s` the mean and standard deviation used to standardise the targets. The
predictive standard deviation reported to users includes the noise term
(:math:`\sigma^2 = \sigma_f^2 + s^2\sigma_n^2`): it is the spread of the value a new design's
physics check can give, not only of the GP mean.

:class:`CorrectedSurrogate` is the two-fidelity surrogate of the design loop (the additive
form of Kennedy & O'Hagan 2000): a base GP trained on the patch-level properties of the
training patches, plus a correction GP trained on what the physics check of *decoded* designs
gave minus the base prediction. The base learns where properties lie in the latent space; the
correction learns what the decoder and the segmentation change.

References
----------
- C. E. Rasmussen, C. K. I. Williams, *Gaussian Processes for Machine Learning*, MIT Press 2006.
- M. C. Kennedy, A. O'Hagan, "Predicting the output from a complex computer code when fast
  approximations are available", Biometrika 87 (2000) 1-13.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.linalg import cho_solve, cholesky, solve_triangular

from ..errors import NotFittedError


class LatentGP:
    """Gaussian-process regression on latent vectors, with analytic gradients.

    Parameters
    ----------
    ard : bool, default True
        One length scale per latent dimension (automatic relevance determination);
        ``False``: one shared length scale (used for the small correction data sets).
    max_fit_points : int, default 200
        Hyperparameters are fitted on a seeded subset of at most this many points (the cost is
        cubic, and with ARD the gradient has one n x n slice per dimension); the posterior
        always uses every point.
    max_iter : int, default 60
        L-BFGS-B iterations of the marginal-likelihood fit.
    length_scale_bounds : (float, float), default (1e-2, 1e3)
    noise_bounds : (float, float), default (1e-6, 1.0)
        Bounds of the noise variance on standardised targets.
    seed : int, default 0

    Attributes
    ----------
    X_ : ndarray of shape (n, d) — training inputs
    y_ : ndarray of shape (n,) — training targets
    constant_, length_scale_, noise_ : fitted hyperparameters (standardised units)
    """

    def __init__(self, *, ard: bool = True, max_fit_points: int = 200, max_iter: int = 60,
                 length_scale_bounds=(1e-2, 1e3), noise_bounds=(1e-6, 1.0), seed: int = 0):
        self.ard = ard
        self.max_fit_points = max_fit_points
        self.max_iter = max_iter
        self.length_scale_bounds = length_scale_bounds
        self.noise_bounds = noise_bounds
        self.seed = seed

    # -------------------------------------------------------------------------- fitting
    def fit(self, X, y) -> "LatentGP":
        """Fit the hyperparameters by maximum marginal likelihood, then the posterior."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        X, y = self._check(X, y)
        d = X.shape[1]
        self.y_mean_, self.y_std_ = float(y.mean()), float(y.std()) or 1.0
        ys = (y - self.y_mean_) / self.y_std_
        sub = np.arange(len(X))
        if len(X) > self.max_fit_points:
            sub = np.sort(np.random.default_rng(self.seed).choice(len(X), self.max_fit_points,
                                                                  replace=False))
        # start where a typical pair of points is about one length scale apart (in d dims a
        # per-dimension start of one standard deviation makes every pair look unrelated)
        sd = np.maximum(X[sub].std(axis=0), 1e-3) * np.sqrt(d)
        lo, hi = self.length_scale_bounds
        ls0 = np.clip(sd, lo, hi) if self.ard else float(np.clip(np.sqrt(np.mean(sd ** 2)), lo, hi))
        kernel = (ConstantKernel(1.0, (1e-3, 1e3))
                  * RBF(ls0 if self.ard else ls0, self.length_scale_bounds)
                  + WhiteKernel(0.1, self.noise_bounds))
        def optimizer(obj, x0, bounds):
            from scipy.optimize import minimize

            r = minimize(obj, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                         options={"maxiter": int(self.max_iter)})
            return r.x, r.fun

        gpr = GaussianProcessRegressor(kernel, normalize_y=False, n_restarts_optimizer=0,
                                       optimizer=optimizer, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gpr.fit(X[sub], ys[sub])
        k = gpr.kernel_
        self.constant_ = float(k.k1.k1.constant_value)
        ls = np.asarray(k.k1.k2.length_scale, dtype=np.float64)
        self.length_scale_ = np.full(d, float(ls)) if ls.ndim == 0 else ls
        self.noise_ = float(k.k2.noise_level)
        self.log_marginal_likelihood_ = float(gpr.log_marginal_likelihood_value_)
        return self._posterior(X, y)

    def update(self, X, y) -> "LatentGP":
        """Recompute the posterior on new data with the hyperparameters kept.

        The target standardisation is kept too, so predictions move only through the data.
        """
        self._fitted()
        X, y = self._check(X, y)
        return self._posterior(X, y)

    def _posterior(self, X, y) -> "LatentGP":
        self.X_, self.y_ = X, y
        ys = (y - self.y_mean_) / self.y_std_
        K = self._k(X, X) + (self.noise_ + 1e-8) * np.eye(len(X))
        self.L_ = cholesky(K, lower=True)
        self.alpha_ = cho_solve((self.L_, True), ys)
        return self

    @staticmethod
    def _check(X, y):
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).ravel()
        if X.ndim != 2 or len(X) != len(y) or len(X) == 0:
            raise ValueError(f"expected X of shape (n, d) and y of shape (n,) with n > 0, got "
                             f"{X.shape} and {y.shape}")
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ValueError("X and y must be finite")
        return X, y

    def _fitted(self):
        if not hasattr(self, "length_scale_"):
            raise NotFittedError("LatentGP is not fitted: call fit(X, y) first")

    def _k(self, A, B):
        a = A / self.length_scale_
        b = B / self.length_scale_
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return self.constant_ * np.exp(-0.5 * np.maximum(d2, 0.0))

    # -------------------------------------------------------------------------- predicting
    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise term, in target units."""
        return float(np.sqrt(self.noise_) * self.y_std_)

    def predict(self, Z, return_std: bool = False):
        """Posterior mean (and predictive standard deviation, noise included) at ``Z``.

        Parameters
        ----------
        Z : array of shape (m, d)

        Returns
        -------
        mean : ndarray of shape (m,)
        std : ndarray of shape (m,), only with ``return_std``
        """
        self._fitted()
        Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
        Kz = self._k(Z, self.X_)
        mean = self.y_mean_ + self.y_std_ * (Kz @ self.alpha_)
        if not return_std:
            return mean
        v = solve_triangular(self.L_, Kz.T, lower=True)
        var_f = np.maximum(self.constant_ - (v * v).sum(0), 0.0)
        return mean, np.sqrt((var_f + self.noise_)) * self.y_std_

    def predict_grad(self, z):
        """Mean, latent-function variance and their gradients at one point ``z`` (shape (d,)).

        Returns
        -------
        mean : float
        var_f : float — variance of the GP mean (noise not included)
        grad_mean, grad_var_f : ndarrays of shape (d,)
        """
        self._fitted()
        z = np.asarray(z, dtype=np.float64).ravel()
        kz = self._k(z[None], self.X_)[0]                              # (n,)
        diff = (self.X_ - z) / self.length_scale_ ** 2                  # (n, d): d k_i/dz = k_i * diff_i
        mean = self.y_mean_ + self.y_std_ * float(kz @ self.alpha_)
        grad_mean = self.y_std_ * ((self.alpha_ * kz) @ diff)
        v = cho_solve((self.L_, True), kz)                              # K^-1 k_z
        var_f = max(self.constant_ - float(kz @ v), 0.0) * self.y_std_ ** 2
        grad_var = -2.0 * self.y_std_ ** 2 * ((kz * v) @ diff)
        return mean, var_f, grad_mean, grad_var


class CorrectedSurrogate:
    """A base GP plus a GP of the corrections measured by physics (two fidelities).

    Parameters
    ----------
    base : LatentGP
        Fitted on the patch-level properties of the training patches.
    min_points_for_fit : int, default 6
        With fewer corrections than this, the correction is their mean with their spread as
        uncertainty (before any check: zero, with the base GP's noise as uncertainty), and no
        GP is fitted.

    Attributes
    ----------
    Z_, r_ : the latents checked by physics and the residuals ``physics - base mean``
    """

    def __init__(self, base: LatentGP, *, min_points_for_fit: int = 6, seed: int = 0):
        self.base = base
        self.min_points_for_fit = min_points_for_fit
        self.seed = seed
        self.Z_ = np.zeros((0, base.X_.shape[1]))
        self.r_ = np.zeros(0)
        self.correction_ = None

    @property
    def n_corrections(self) -> int:
        return len(self.r_)

    def add(self, Z, values) -> "CorrectedSurrogate":
        """Add physics values of decoded latents ``Z`` (shape (m, d)) and refit the correction."""
        Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
        values = np.asarray(values, dtype=np.float64).ravel()
        ok = np.isfinite(values)
        if not ok.any():
            return self
        Z, values = Z[ok], values[ok]
        self.Z_ = np.concatenate([self.Z_, Z])
        self.r_ = np.concatenate([self.r_, values - self.base.predict(Z)])
        if len(self.r_) >= self.min_points_for_fit:
            self.correction_ = LatentGP(ard=False, max_fit_points=400, seed=self.seed,
                                        noise_bounds=(1e-4, 1.0)).fit(self.Z_, self.r_)
        else:
            self.correction_ = None
        return self

    def _const(self):
        if len(self.r_) == 0:  # nothing checked yet: a correction as large as the base noise
            return 0.0, self.base.noise_std ** 2
        spread = float(self.r_.std(ddof=1)) if len(self.r_) > 1 else abs(float(self.r_[0]))
        return float(self.r_.mean()), spread ** 2

    def predict(self, Z, return_std: bool = False):
        """Mean (and predictive std) of the physics value of decoded latents ``Z``."""
        m, s = self.base.predict(Z, return_std=True)
        if self.correction_ is not None:
            cm, cs = self.correction_.predict(Z, return_std=True)
        else:
            c, v = self._const()
            cm, cs = np.full(len(m), c), np.full(len(m), np.sqrt(v))
        mean = m + cm
        return (mean, np.sqrt(s ** 2 + cs ** 2)) if return_std else mean

    def predict_grad(self, z):
        """Mean, variance (noise excluded) and their gradients at one point, as LatentGP."""
        m, v, gm, gv = self.base.predict_grad(z)
        if self.correction_ is not None:
            cm, cv, cgm, cgv = self.correction_.predict_grad(z)
            return m + cm, v + cv, gm + cgm, gv + cgv
        c, cvar = self._const()
        return m + c, v + cvar, gm, gv
