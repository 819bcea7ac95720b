"""Train/test splits of a study's patches: random over patches, grouped over micrographs.

See :mod:`matrep.study` for why both exist (interpolation vs. an unseen micrograph).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInputError, LabelsError


@dataclass
class Split:
    """One train/test split of the patches.

    ``kind`` is ``"random"`` or ``"grouped"``; ``held_out`` names the test groups of a
    grouped split; ``seed`` is the random split's seed.
    """

    id: str
    kind: str
    train: np.ndarray
    test: np.ndarray
    seed: int | None = None
    held_out: list = field(default_factory=list)

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(self.id.encode())
        h.update(np.asarray(self.train, np.int64).tobytes())
        h.update(b"|")
        h.update(np.asarray(self.test, np.int64).tobytes())
        return h.hexdigest()


def random_splits(n: int, *, seeds=5, test_size: float = 0.2, stratify=None) -> list[Split]:
    """Random train/test splits over ``n`` patches, one per seed.

    Parameters
    ----------
    n : number of patches
    seeds : int (seeds 0..seeds-1) or sequence of int
    test_size : float in (0, 1), default 0.2 (the paper's 20 % held out)
    stratify : array of shape (n,), optional — class labels to stratify on

    >>> s = random_splits(10, seeds=2)
    >>> [(x.id, len(x.train), len(x.test)) for x in s]
    [('random-s0', 8, 2), ('random-s1', 8, 2)]
    """
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise BadInputError(None, f"test_size must lie in (0, 1), got {test_size}")
    seeds = list(range(seeds)) if isinstance(seeds, (int, np.integer)) else list(seeds)
    if n < 2:
        raise BadInputError(None, f"a random split needs at least 2 patches, got {n}")
    idx = np.arange(n)
    out = []
    for s in seeds:
        strat = stratify
        if strat is not None:
            _, counts = np.unique(strat, return_counts=True)
            if counts.min() < 2 or round(n * test_size) < len(counts):
                strat = None  # too few of a class to stratify: plain random split
        tr, te = train_test_split(idx, test_size=test_size, random_state=int(s), stratify=strat)
        out.append(Split(f"random-s{s}", "random", np.sort(tr), np.sort(te), seed=int(s)))
    return out


def group_splits(groups, *, folds: int | None = None, max_groups: int | None = None,
                 seed: int = 0) -> list[Split]:
    """Grouped splits: each test set is whole groups, never seen in training.

    Parameters
    ----------
    groups : array of shape (n,) — the group of each patch
    folds : int or None — ``None``: leave one group out (one split per group); ``K``:
        ``GroupKFold(K)`` (each group held out exactly once, K splits)
    max_groups : int or None — leave-one-group-out for only this many groups, chosen at
        random (``seed``); the others are always in training. Ignored with ``folds``.

    >>> s = group_splits(np.array(["a", "a", "b", "c", "c"]))
    >>> [(x.id, x.test.tolist(), x.held_out) for x in s]
    [('group-a', [0, 1], ['a']), ('group-b', [2], ['b']), ('group-c', [3, 4], ['c'])]
    """
    groups = np.asarray(groups).astype(str)
    uniq = sorted(set(groups.tolist()), key=natural_key)
    if len(uniq) < 2:
        raise LabelsError(f"a grouped split needs at least 2 groups, got {len(uniq)} "
                          f"({', '.join(uniq)}); use --split random or another --group column")
    idx = np.arange(len(groups))
    out = []
    if folds is not None:
        from sklearn.model_selection import GroupKFold

        if folds < 2 or folds > len(uniq):
            raise BadInputError(None, f"--folds must lie in 2..{len(uniq)} (the number of "
                                      f"groups), got {folds}")
        try:
            gkf = GroupKFold(n_splits=int(folds), shuffle=True, random_state=seed)
        except TypeError:  # scikit-learn < 1.6: no shuffling, balanced folds in a fixed order
            gkf = GroupKFold(n_splits=int(folds))
        for k, (tr, te) in enumerate(gkf.split(idx, groups=groups)):
            held = sorted(set(groups[te].tolist()))
            out.append(Split(f"fold-{k}", "grouped", np.sort(tr), np.sort(te), held_out=held))
        return out
    chosen = uniq
    if max_groups is not None and max_groups < len(uniq):
        if max_groups < 1:
            raise BadInputError(None, f"--max-groups must be >= 1, got {max_groups}")
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(uniq, size=int(max_groups), replace=False).tolist())
    for g in chosen:
        te = idx[groups == g]
        tr = idx[groups != g]
        out.append(Split(f"group-{_safe_id(g)}", "grouped", tr, te, held_out=[g]))
    return out


def natural_key(value) -> tuple:
    """Sort key putting "2" before "10" and numbers before text.

    >>> sorted(["10", "2", "b", "a1"], key=natural_key)
    ['2', '10', 'a1', 'b']
    """
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _safe_id(value: str) -> str:
    s = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(value))
    return s[:60] or "_"
