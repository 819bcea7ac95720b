"""Frozen-VGG19 work on the *input* patches, done once per patch and reused every epoch.

The encoder is a frozen VGG19 and the style targets are Gram matrices of that same frozen
network's feature maps of the input patch, so neither depends on anything being trained. A
plain training step recomputes both on every visit of a patch; matrep computes them once
(in ``torch.inference_mode``) and keeps them, so a training step runs only the decoder and
VGG19 on the reconstruction.

What is stored per patch (float32):

* the pooled encoder features (2048 values with the default ``"meanstd"`` pooling);
* the patch's grey-level quantiles (256 values; the targets of the histogram term) and its
  log radial power spectrum (P/2 values; the targets of the spectrum term); its graphite
  threshold and the normalised two-point autocorrelation of its soft graphite indicator
  (P/4 values; the targets of the phase term) and its normalised lineal-path function
  (P/4 values; the targets of the lineal term) and its three Minkowski functionals (the
  targets of the Minkowski term);
* per style layer, whichever is smaller of the target Gram matrix (C x C) and the target
  feature map (C x M): for 128 x 128 patches the Grams of conv1_1, pool1, pool2 and pool3
  (64², 64², 128², 256² values) and the *feature map* of pool4 (512 x 64 values, where its
  Gram would be 512² = 262,144). The Gram of a stored feature map is recomputed in the step
  (2 C² M flops, about 0.3 % of the VGG19 work it replaces).

For 128² patches that is 2048 + 122,880 floats = 488 KiB per patch, against 1.36 MiB for all
five Grams (and ~23 MiB for the feature maps themselves). Up to ``memory_budget`` bytes
(default 2 GiB, ~4,300 patches) live in RAM; beyond that the targets are written to a
``numpy.memmap`` file in ``directory`` (deleted when the cache is closed) and read back
batch by batch.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from matrep.kernels import gram_matrix

from .model import (MINKOWSKI_SOFTNESS, N_QUANTILES, intensity_quantiles, lineal_path,
                    minkowski_functionals, phase_correlation, phase_max_lag, pool_features,
                    radial_log_spectrum, soft_dark_phase)


@dataclass(frozen=True)
class TargetSlot:
    """Where one style layer's target lives in a cache row."""

    tap: str
    kind: str  # "gram" (C, C) or "features" (C, H, W)
    shape: tuple
    offset: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def target_layout(shapes: dict, taps) -> list[TargetSlot]:
    """Layout of one cache row for feature maps of ``shapes`` (tap -> (C, H, W))."""
    slots, off = [], 0
    for t in taps:
        C, H, W = shapes[t]
        if C * C <= C * H * W:
            slot = TargetSlot(t, "gram", (C, C), off)
        else:
            slot = TargetSlot(t, "features", (C, H, W), off)
        slots.append(slot)
        off += slot.size
    return slots


class FeatureCache:
    """Pooled encoder inputs and style targets of a set of patches (see the module docstring).

    Parameters
    ----------
    backbone : VGG19Backbone
        Frozen network returning at least ``encoder_taps`` and ``style_taps``.
    patches : ndarray of shape (n, P, P), float32 in [0, 1]
    encoder_taps, style_taps : sequences of tap names
    pooling : str, see :func:`matrep.plugins.texturevae.model.pool_features`
    batch_size : int
    memory_budget : int, bytes kept in RAM for the targets before spilling to disk
    directory : folder for the spill file (default: the system temp folder)
    progress : callable wrapping an iterable (a progress bar), optional
    """

    def __init__(self, backbone, patches, *, encoder_taps, style_taps, pooling="meanstd",
                 batch_size=32, memory_budget=2 * 1024**3, directory=None, progress=None):
        self.encoder_taps = tuple(encoder_taps)
        self.style_taps = tuple(style_taps)
        self._spill = None
        n, P = len(patches), patches.shape[-1]
        device = _module_device(backbone)
        taps = tuple(dict.fromkeys(self.encoder_taps + self.style_taps))
        self.pooled = None
        self.targets = None
        starts = range(0, n, batch_size)
        it = progress(starts) if progress is not None else starts
        with torch.inference_mode():
            for s in it:
                x = torch.from_numpy(np.ascontiguousarray(patches[s:s + batch_size])).to(device)
                feats = backbone(backbone.preprocess(x[:, None].float()))
                pooled = pool_features(feats, self.encoder_taps, pooling).cpu().numpy()
                if self.targets is None:
                    shapes = {t: tuple(feats[t].shape[1:]) for t in self.style_taps}
                    self.layout = target_layout(shapes, self.style_taps)
                    self.row_size = sum(sl.size for sl in self.layout)
                    self.pooled = np.empty((n, pooled.shape[1]), np.float32)
                    self.quantiles = np.empty((n, N_QUANTILES), np.float32)
                    self.spectra = np.empty((n, P // 2), np.float32)
                    self.thresholds = np.empty(n, np.float32)
                    self.phase = np.empty((n, phase_max_lag(P)), np.float32)
                    self.lineal = np.empty((n, phase_max_lag(P)), np.float32)
                    self.minkowski = np.empty((n, 3), np.float32)
                    self.targets = self._allocate(n, self.row_size, memory_budget, directory)
                self.pooled[s:s + len(x)] = pooled
                self.quantiles[s:s + len(x)] = intensity_quantiles(x).cpu().numpy()
                self.spectra[s:s + len(x)] = radial_log_spectrum(x).cpu().numpy()
                thr = dark_thresholds(x)
                self.thresholds[s:s + len(x)] = thr
                soft = soft_dark_phase(x, torch.from_numpy(np.nan_to_num(thr)).to(device))
                self.phase[s:s + len(x)] = phase_correlation(soft).cpu().numpy()
                self.lineal[s:s + len(x)] = lineal_path(soft).cpu().numpy()
                sharp = soft_dark_phase(x, torch.from_numpy(np.nan_to_num(thr)).to(device),
                                        MINKOWSKI_SOFTNESS)
                self.minkowski[s:s + len(x)] = minkowski_functionals(sharp).cpu().numpy()
                rows = []
                for sl in self.layout:
                    f = feats[sl.tap].float()
                    v = gram_matrix(f) if sl.kind == "gram" else f.contiguous()
                    rows.append(v.reshape(len(x), -1))
                self.targets[s:s + len(x)] = torch.cat(rows, dim=1).cpu().numpy()
        self.n = n
        self.patch_size = P

    def _allocate(self, n, row, budget, directory):
        nbytes = n * row * 4
        if nbytes <= budget:
            self.on_disk = False
            return np.empty((n, row), np.float32)
        self.on_disk = True
        d = Path(directory) if directory is not None else Path(tempfile.gettempdir())
        d.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tmp-texturevae-cache-", suffix=".f32", dir=d)
        os.close(fd)
        self._spill = Path(name)
        return np.memmap(name, dtype=np.float32, mode="w+", shape=(n, row))

    @property
    def nbytes(self) -> int:
        """Bytes of cached data (RAM or disk)."""
        return int(self.pooled.nbytes + self.quantiles.nbytes + self.spectra.nbytes
                   + self.thresholds.nbytes + self.phase.nbytes + self.lineal.nbytes
                   + self.minkowski.nbytes
                   + self.n * self.row_size * 4)

    def batch(self, index, device):
        """Pooled features (B, D) and the style targets as Gram matrices, on ``device``.

        Returns
        -------
        pooled : Tensor of shape (B, D)
        grams : list of Tensor of shape (B, C_l, C_l), float32, one per style layer
        """
        index = np.asarray(index)
        order = np.argsort(index) if self.on_disk else None
        if order is not None:  # sorted reads are kinder to a memmap
            rows = np.empty((len(index), self.row_size), np.float32)
            rows[order] = self.targets[index[order]]
        else:
            rows = self.targets[index]
        pooled = torch.from_numpy(self.pooled[index]).to(device, non_blocking=True)
        rows = torch.from_numpy(rows).to(device, non_blocking=True)
        grams = []
        for sl in self.layout:
            v = rows[:, sl.offset:sl.offset + sl.size].reshape(len(index), *sl.shape)
            grams.append(v.contiguous() if sl.kind == "gram" else gram_matrix(v))
        return pooled, grams

    def grey_batch(self, index, device):
        """The targets of the grey-level terms for the input patches ``index``:
        ``{"histogram": (B, N_QUANTILES) quantiles, "spectrum": (B, P // 2) log spectra,
        "phase": ((B,) graphite thresholds, NaN where none, (B, R) phase correlations),
        "lineal": (the same thresholds, (B, R) lineal-path functions),
        "minkowski": (the same thresholds, (B, 3) Minkowski functionals)}``
        (:data:`~matrep.plugins.texturevae.step.GREY_TERMS`)."""
        index = np.asarray(index)
        return {"histogram": torch.from_numpy(self.quantiles[index]).to(device),
                "spectrum": torch.from_numpy(self.spectra[index]).to(device),
                "phase": (torch.from_numpy(self.thresholds[index]).to(device),
                          torch.from_numpy(self.phase[index]).to(device)),
                "lineal": (torch.from_numpy(self.thresholds[index]).to(device),
                           torch.from_numpy(self.lineal[index]).to(device)),
                "minkowski": (torch.from_numpy(self.thresholds[index]).to(device),
                              torch.from_numpy(self.minkowski[index]).to(device))}

    def close(self):
        """Delete the spill file, if any."""
        if self._spill is not None:
            self.targets = None
            try:
                self._spill.unlink()
            except FileNotFoundError:
                pass
            self._spill = None

    def __del__(self):  # best effort; close() is the contract
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass


def dark_thresholds(x) -> np.ndarray:
    """Each patch's graphite threshold (:func:`matrep.metrics.morphology.dark_phase_threshold`,
    the segmentation ``matrep evaluate`` measures with), NaN for a graphite-free patch:
    (B, ..., H, W) -> (B,) float32."""
    from matrep.metrics.morphology import dark_phase_threshold

    imgs = x.reshape(x.shape[0], *x.shape[-2:]).float().cpu().numpy()
    out = np.empty(len(imgs), np.float32)
    for i, img in enumerate(imgs):
        t = dark_phase_threshold(img)
        out[i] = np.nan if t is None else t
    return out


def _module_device(module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
