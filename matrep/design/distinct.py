r"""Style distance between patches, for telling designs apart.

The distance is the texture-VAE's reconstruction loss (Gatys et al. 2015, the paper's eq. 2)
between two patches, on the frozen VGG19 of :mod:`matrep.backbone` and the paper's layers
(conv1_1, pool1-pool4, equal weights):

.. math::

    d(a, b) = \sum_l \frac{1}{4 C_l^2} \lVert \hat G^l(a) - \hat G^l(b) \rVert_F^2,
    \qquad \hat G^l = F^l F^{l\top} / M_l ,

which equals :math:`\sum_l \frac{1}{4 C_l^2 M_l^2}\lVert G^l(a) - G^l(b)\rVert^2` with the
unnormalised Gram matrices. Gram matrices are computed once per patch, so all pairwise
distances of ``n`` patches cost ``n`` network passes.

The yardstick of "distinct" is the same distance between two patches of one micrograph
(:func:`within_micrograph_distances`): two views of one microstructure.
"""

from __future__ import annotations

import numpy as np

STYLE_LAYERS = ("conv1_1", "pool1", "pool2", "pool3", "pool4")


class StyleDistance:
    """Pairwise style distances of patches.

    Parameters
    ----------
    weights : str, default "auto"
        VGG19 weights (see ``matrep weights``); ``"random"`` only for tests.
    layers : tuple of str, default the texture-VAE's style layers
    device : str, default "cpu"
    batch_size : int, default 16
    """

    def __init__(self, weights="auto", layers=STYLE_LAYERS, device="cpu", batch_size: int = 16):
        self.weights = weights
        self.layers = tuple(layers)
        self.device = device
        self.batch_size = batch_size
        self._bb = None

    def _backbone(self):
        if self._bb is None:
            from ..backbone import VGG19Backbone

            self._bb = VGG19Backbone(weights=self.weights, taps=self.layers, device=self.device)
        return self._bb

    def grams(self, patches) -> list[np.ndarray]:
        """Normalised Gram matrices of each patch, one float32 array (n, C_l, C_l) per layer."""
        import torch

        from ..kernels import gram_matrix

        X = np.asarray(patches, dtype=np.float32)
        bb = self._backbone()
        out = [[] for _ in self.layers]
        with torch.inference_mode():
            for s in range(0, len(X), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(X[s:s + self.batch_size]))[:, None]
                feats = bb.features(x.to(self.device))
                for i, t in enumerate(self.layers):
                    out[i].append(gram_matrix(feats[t].float(), normalize=True).cpu().numpy())
        return [np.concatenate(o) for o in out]

    @staticmethod
    def between(ga, gb) -> np.ndarray:
        """Distance matrix of shape (n_a, n_b) between two sets of Gram matrices."""
        D = 0.0
        for a, b in zip(ga, gb):
            C = a.shape[1]
            fa = a.reshape(len(a), -1).astype(np.float64)
            fb = b.reshape(len(b), -1).astype(np.float64)
            d2 = (fa * fa).sum(1)[:, None] + (fb * fb).sum(1)[None, :] - 2 * fa @ fb.T
            D = D + np.maximum(d2, 0.0) / (4.0 * C * C)
        return np.asarray(D)

    def pairwise(self, patches) -> np.ndarray:
        """Symmetric distance matrix of shape (n, n) of ``patches`` (n, H, W)."""
        return self.square(self.grams(patches))

    @classmethod
    def square(cls, g) -> np.ndarray:
        """Symmetric distance matrix of shape (n, n) of one set of Gram matrices."""
        D = cls.between(g, g)
        np.fill_diagonal(D, 0.0)
        return 0.5 * (D + D.T)


def within_micrograph_distances(metric: StyleDistance, patches, micrograph_ids, *,
                                per_micrograph: int = 6, seed: int = 0) -> np.ndarray:
    """Style distances between pairs of patches of one micrograph.

    ``per_micrograph`` patches are drawn (seeded) from each micrograph, and every pair of them
    counts once.

    Returns
    -------
    ndarray of the distances (all micrographs together)
    """
    rng = np.random.default_rng(seed)
    ids = np.asarray(micrograph_ids)
    out = []
    for m in dict.fromkeys(ids.tolist()):
        idx = np.flatnonzero(ids == m)
        if len(idx) < 2:
            continue
        idx = rng.choice(idx, min(per_micrograph, len(idx)), replace=False)
        D = metric.pairwise(np.asarray(patches)[idx])
        out.append(D[np.triu_indices(len(idx), 1)])
    return np.concatenate(out) if out else np.zeros(0)


#: nodes the exact search of :func:`select_distinct` may visit before it settles for the
#: greedy choice (a few hundred candidates and n = 4 take far fewer)
SEARCH_NODES = 200_000


def select_distinct(errors, D, k: int, min_distance: float,
                    max_error: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``k`` items pairwise at least ``min_distance`` apart, as many as can be, and of
    those sets the one whose worst error is smallest.

    The distinct set is found exactly (a largest clique of the "far enough apart" graph over the
    items ordered by error; among the largest, the one with the smallest largest error, ties to
    the smaller errors) instead of greedily: taking the best item first can block a set of
    ``k`` that are all apart. When fewer than ``k`` items are far enough apart, the best
    remaining ones by error fill the list and are marked as not distinct. With ``max_error``,
    an item is taken for being distinct only if its error is at most ``max(max_error, 2 x the
    smallest error)``: a poor design is not returned just because it looks different (the bound
    follows the best error when no item reaches ``max_error``). Past :data:`SEARCH_NODES` the
    search keeps the greedy choice (smallest error first, each apart from those taken).

    Parameters
    ----------
    errors : array of shape (n,) — lower is better (NaN last)
    D : array of shape (n, n) — pairwise distances
    k : int
    min_distance : float

    Returns
    -------
    chosen : int ndarray of shape (min(k, n),): the distinct ones, then the fill; each by error
    distinct : bool ndarray, whether each chosen item met the distance rule
    """
    errors = np.where(np.isfinite(errors), errors, np.inf)
    order = np.argsort(errors, kind="stable")
    bound = np.inf
    if max_error is not None and len(errors):
        bound = max(float(max_error), 2.0 * float(errors[order[0]]))
    pool = [int(i) for i in order if errors[i] <= bound]
    far = np.asarray(D) >= min_distance
    chosen = _largest_apart(pool, far, k)
    if chosen is None:  # search budget spent: the greedy choice
        chosen = []
        for i in pool:
            if len(chosen) < k and all(far[i, j] for j in chosen):
                chosen.append(i)
    flags = [True] * len(chosen)
    for i in order:
        if len(chosen) >= k:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
            flags.append(False)
    return np.array(chosen, dtype=np.int64), np.array(flags, dtype=bool)


def _largest_apart(pool: list, far: np.ndarray, k: int) -> list | None:
    """The largest set (at most ``k``) of ``pool``'s items pairwise ``far`` apart whose last
    item (``pool`` is ordered best first) comes earliest; ``None`` when the search exceeds
    :data:`SEARCH_NODES`."""
    budget = [SEARCH_NODES]

    def extend(taken, cand, need):  # ``need`` more from ``cand``, each far from all taken
        if need == 0:
            return taken
        for p in range(len(cand) - need + 1):
            budget[0] -= 1
            if budget[0] < 0:
                return None
            i = cand[p]
            found = extend(taken + [i], [j for j in cand[p + 1:] if far[i, j]], need - 1)
            if found:
                return found
        return None

    for size in range(min(k, len(pool)), 0, -1):
        for m in range(size - 1, len(pool)):  # the set's worst item is pool[m]
            last = pool[m]
            found = extend([], [j for j in pool[:m] if far[j, last]], size - 1)
            if budget[0] < 0:
                return None
            if found is not None:
                return sorted(found, key=pool.index) + [last]
    return []
