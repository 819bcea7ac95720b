"""Grey-level histogram features: a minimal, complete matrep encoder plugin."""

import numpy as np

from matrep.encoder import BaseEncoder, check_patches


class HistogramEncoder(BaseEncoder):
    """Normalised grey-level histogram of each patch, plus its mean and standard deviation.

    Parameters
    ----------
    bins : int, default 32
        Number of equal-width bins over [0, 1].
    """

    name = "histogram"
    description = "Grey-level histogram (+ mean, std) of each patch (example plugin)."
    trainable = False
    generative = False

    def __init__(self, *, bins=32):
        self.bins = bins

    def fit(self, X, y=None):
        check_patches(X)
        if int(self.bins) < 1:
            raise ValueError(f"bins must be >= 1, got {self.bins}")
        self.n_features_ = int(self.bins) + 2
        return self

    def transform(self, X):
        self._check_fitted()
        X = check_patches(X)
        flat = X.reshape(len(X), -1)
        idx = np.minimum((flat * self.bins).astype(np.int64), self.bins - 1)
        hist = np.stack([np.bincount(r, minlength=self.bins) for r in idx]).astype(np.float32)
        hist /= flat.shape[1]
        return np.concatenate([hist, flat.mean(1, keepdims=True), flat.std(1, keepdims=True)], 1)

    def _get_state(self):
        return {}, {"n_features_": self.n_features_}

    def _set_state(self, arrays, meta):
        self.n_features_ = int(meta["n_features_"])
