"""Settings of a texture-VAE training run: hyper-parameters and their schedules
(:class:`TrainSettings`), loss-spike detection (:class:`SpikeMonitor`), the precision, the
held-out split (:func:`split_patches`) and the fingerprint of the training data.

Used by the training loop (:mod:`matrep.plugins.texturevae.train`, which re-exports these
names) and by the encoder's ``fit``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from matrep.errors import BadInputError

#: A loss term above this many times its running median is reported as a spike.
SPIKE_FACTOR = 10.0
#: Steps in the running window of each term (and the fewest before spikes are judged).
SPIKE_WINDOW, SPIKE_MIN_STEPS = 64, 16


# ---------------------------------------------------------------------------------------
# settings, devices, splits
# ---------------------------------------------------------------------------------------
@dataclass
class TrainSettings:
    """Hyper-parameters of one training run (all JSON-serialisable)."""

    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    kl_weight: float = 1e-2
    layer_weights: tuple = (1.0, 1.0, 1.0, 1.0, 1.0)
    seed: int = 0
    checkpoint_every: int | None = None
    precision: str = "fp32"  # resolved: "fp32" or "bf16"
    style_backend: str = "auto"
    #: clip the global gradient norm of head + decoder to this value (None: no clipping)
    grad_clip: float | None = None
    #: steps over which the KL weight ramps linearly from 0 to ``kl_weight`` (0: none)
    kl_warmup: int = 0
    #: "constant", or "cosine": decay from ``lr`` to ``lr * lr_final`` over the run
    lr_schedule: str = "constant"
    #: steps of linear learning-rate warm-up from ``lr / 10`` (0: none)
    lr_warmup: int = 0
    lr_final: float = 0.05
    #: weight of the grey-level histogram term added to the style loss (0: the paper's loss)
    histogram_weight: float = 0.0
    #: weight of the log radial power-spectrum term added to the style loss (0: the paper's loss)
    spectrum_weight: float = 0.0
    #: weight of the graphite two-point autocorrelation term (0: the paper's loss)
    phase_weight: float = 0.0
    #: weight of the graphite lineal-path term (0: the paper's loss)
    lineal_weight: float = 0.0
    #: weight of the graphite Minkowski-functional term (0: the paper's loss)
    minkowski_weight: float = 0.0
    #: weight of the term asking the batch's aggregate posterior for the prior's variance
    spread_weight: float = 0.0
    #: keep the model of the epoch with the lowest held-out style loss (needs held-out patches)
    keep_best: bool = True
    extra: dict = field(default_factory=dict)

    def lr_at(self, step: int, total: int, base: float) -> float:
        """Learning rate of global step ``step`` (0-based) of ``total`` steps."""
        lr = base
        if self.lr_schedule == "cosine" and total > 0:
            t = min(1.0, step / max(1, total - 1))
            lr = base * (self.lr_final + (1.0 - self.lr_final) * 0.5 * (1.0 + math.cos(math.pi * t)))
        if self.lr_warmup and step < self.lr_warmup:
            lr *= 0.1 + 0.9 * step / self.lr_warmup
        return lr

    def kl_weight_at(self, step: int) -> float:
        """KL weight of global step ``step`` (linear warm-up over ``kl_warmup`` steps)."""
        if self.kl_warmup and step < self.kl_warmup:
            return self.kl_weight * step / self.kl_warmup
        return self.kl_weight


class SpikeMonitor:
    """Flags a loss term that jumps above ``factor`` x its running median.

    The window holds the last :data:`SPIKE_WINDOW` values of each term; nothing is judged
    before :data:`SPIKE_MIN_STEPS` values. ``state()``/``from_state()`` round-trip through a
    checkpoint so a resumed run flags exactly what the uninterrupted one would.
    """

    def __init__(self, factor=SPIKE_FACTOR, window=SPIKE_WINDOW, min_steps=SPIKE_MIN_STEPS,
                 values=None):
        self.factor, self.window, self.min_steps = float(factor), int(window), int(min_steps)
        self.values = {k: list(v) for k, v in (values or {}).items()}

    def check(self, **terms) -> list:
        """Add this step's values; return ``(name, value, running median)`` of each term that
        spiked."""
        out = []
        for name, v in terms.items():
            hist = self.values.setdefault(name, [])
            if len(hist) >= self.min_steps:
                med = float(np.median(hist))
                if med > 0 and v > self.factor * med:
                    out.append((name, v, med))
            hist.append(float(v))
            del hist[:-self.window]
        return out

    def state(self) -> dict:
        return {"values": self.values}

    @classmethod
    def from_state(cls, state, factor=SPIKE_FACTOR):
        return cls(factor=factor, values=(state or {}).get("values"))


def resolve_precision(precision, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` (autocast) on CUDA, ``"fp32"`` elsewhere."""
    if precision in (None, "auto"):
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise BadInputError(None, f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    return precision


def split_patches(n, *, micrograph_ids=None, coords=None, patch=128, val_fraction=0.1,
                  how="region", seed=0):
    """Split patch indices into training and held-out validation sets.

    ``how="region"`` (default): in each micrograph, the bottom rows of patches (about
    ``val_fraction`` of that micrograph's patches, at least one row) are held out, and the
    training patches are those that do not overlap them (``y + patch <= y_val``); the patches
    in between are dropped. Held-out patches thus come from every micrograph but share no pixel
    with a training patch (with stride 50 < 128, a random patch split would leak pixels).
    ``how="patch"``: a seeded random fraction of the patches (overlap possible).
    ``how="micrograph"``: whole micrographs (a seeded random ``val_fraction`` of them, at least
    one) are held out. Without micrograph ids / coordinates, ``"region"`` falls back to
    ``"patch"``.

    Returns
    -------
    train_idx, val_idx : int64 arrays (sorted)
    """
    rng = np.random.default_rng([int(seed), 7919])
    if val_fraction <= 0 or n < 2:
        return np.arange(n), np.arange(0)
    if how not in ("region", "patch", "micrograph"):
        raise BadInputError(None, f"val_split must be 'region', 'patch' or 'micrograph', got {how!r}")
    if how == "region" and (micrograph_ids is None or coords is None):
        how = "patch"
    if how == "micrograph" and micrograph_ids is None:
        how = "patch"
    if how == "patch":
        k = max(1, int(round(val_fraction * n)))
        val = np.sort(rng.choice(n, k, replace=False))
        return np.setdiff1d(np.arange(n), val), val
    ids = np.asarray(micrograph_ids)
    uniq = list(dict.fromkeys(ids.tolist()))
    if how == "micrograph":
        if len(uniq) < 2:
            raise BadInputError(None, "val_split='micrograph' needs at least 2 micrographs, "
                                      f"got {len(uniq)}; use val_split='region'")
        k = min(len(uniq) - 1, max(1, int(round(val_fraction * len(uniq)))))
        held = set(rng.choice(np.array(uniq, dtype=object), k, replace=False).tolist())
        mask = np.array([i in held for i in ids.tolist()])
        return np.flatnonzero(~mask), np.flatnonzero(mask)
    coords = np.asarray(coords)
    train, val = [], []
    for mg in uniq:
        idx = np.flatnonzero(ids == mg)
        ys = np.unique(coords[idx, 0])
        if len(ys) < 2:
            train.append(idx)
            continue
        # smallest row start whose rows below hold <= val_fraction of the patches (>= 1 row)
        y_val = ys[-1]
        for y in ys[::-1]:
            if (coords[idx, 0] >= y).sum() <= val_fraction * len(idx) or y == ys[-1]:
                y_val = y
            else:
                break
        v = idx[coords[idx, 0] >= y_val]
        t = idx[coords[idx, 0] + patch <= y_val]
        if len(t) == 0:  # micrograph too short for a gap: keep it for training
            train.append(idx)
            continue
        train.append(t)
        val.append(v)
    train = np.sort(np.concatenate(train)) if train else np.arange(0)
    val = np.sort(np.concatenate(val)) if val else np.arange(0)
    return train, val


def fingerprint_arrays(*arrays) -> str:
    """sha256 over the bytes of some arrays (identifies the training data of a run)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()
