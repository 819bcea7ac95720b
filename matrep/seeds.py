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
