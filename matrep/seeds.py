"""Deterministic seeds derived from data (one implementation for core and plugins)."""

from __future__ import annotations

import hashlib

import numpy as np


def array_seed(a) -> int:
    """A seed from the bytes of an array (a patch, a latent vector): deterministic, and
    different for different arrays (the first 60 bits of their SHA-256).

    >>> array_seed(np.zeros(3, np.float32)) == array_seed(np.zeros(3, np.float32))
    True
    """
    return int(hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:15], 16)


def next_seeds(seed: int, k: int) -> list:
    """The ``k`` seeds after ``seed`` (``seed + 1 .. seed + k``, modulo 2⁶³): the other noise
    draws of one latent or one patch (design's other draws, a reconstruction's candidates).

    >>> next_seeds(5, 2)
    [6, 7]
    """
    return [(int(seed) + j) % 2 ** 63 for j in range(1, int(k) + 1)]
