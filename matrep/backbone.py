"""A frozen, pretrained VGG19 with named feature taps.

The network is ``torchvision.models.vgg19(weights=None).features`` (built on the meta device, so
nothing is downloaded or randomly initialised), loaded with weights from
:func:`matrep.weights.resolve_vgg19_weights`, frozen (``requires_grad=False``, always in eval
mode) and cut after the deepest requested tap.

Tap names (the table lives in :mod:`matrep.taps`, re-exported here) follow Simonyan &
Zisserman (2015) / Gatys et al. (2015): ``conv{b}_{i}``, ``relu{b}_{i}`` for block ``b`` = 1..5
and layer ``i`` within it, and ``pool{b}`` after each block. Channel counts: block 1: 64,
block 2: 128, block 3: 256, blocks 4-5: 512. Each ``pool{b}`` halves the height and width
(floor). For a 128x128 input::

    conv1_1 (64, 128, 128)   pool1 (64, 64, 64)   pool2 (128, 32, 32)
    pool3 (256, 16, 16)      pool4 (512, 8, 8)    pool5 (512, 4, 4)

The frozen-VGG19 service every VGG-based encoder uses (one implementation each):

* :func:`resolve_device` — ``None``/``"auto"`` → CUDA when present, else CPU;
* :func:`shared_backbone` — one built network per process, shared between encoders;
* :func:`check_weights` — a fitted encoder's weights must be the ones it was made with;
* :func:`weights_provenance` — the weights' record under the one key ``"weights"`` (the
  feature store writes ``weights_name`` and ``weights_sha256`` from it);
* :func:`pool_map` — a feature map to per-channel statistics;
* :class:`BackboneFeatures` — a study's per-patch cache of those statistics, so that each
  patch goes through VGG19 once for all encoders that declare a
  :class:`matrep.encoder.BackboneRequest`.

Example
-------
>>> from matrep.backbone import tap_shapes
>>> tap_shapes(128)["pool4"]
(512, 8, 8)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import BadInputError, WeightsNotFoundError
from .taps import (POOLINGS, STYLE_TAPS, TAP_CHANNELS, TAP_INDEX, TAP_NAMES, check_taps,
                   tap_shapes)
from .weights import VGG19Weights, resolve_vgg19_weights

__all__ = ["VGG19Backbone", "STYLE_TAPS", "TAP_CHANNELS", "TAP_INDEX", "TAP_NAMES", "check_taps",
           "tap_shapes", "POOLINGS", "pool_map", "resolve_device", "shared_backbone",
           "check_weights", "weights_provenance", "BackboneFeatures"]


class VGG19Backbone(nn.Module):
    """Frozen pretrained VGG19 returning a dict of named feature maps.

    Parameters
    ----------
    weights : "auto", source name, path or VGG19Weights, default "auto"
        Passed to :func:`matrep.weights.resolve_vgg19_weights`.
    taps : sequence of str, default ("conv1_1", "pool1", "pool2", "pool3", "pool4")
        Layers to return (see :data:`TAP_NAMES`). The network runs only up to the deepest one.
    device : torch.device or str, optional
        Where the weights live (default: CPU).

    Attributes
    ----------
    weights : VGG19Weights
    taps : tuple of str
    weights_info : dict
        name, sha256, source, path, preprocessing (+ channel_order, scale, mean, std).
    """

    def __init__(self, weights="auto", taps=STYLE_TAPS, device=None):
        super().__init__()
        import torchvision

        self.taps = check_taps(taps)
        self.weights = weights if isinstance(weights, VGG19Weights) else resolve_vgg19_weights(weights)
        depth = max(TAP_INDEX[t] for t in self.taps)
        with torch.device("meta"):
            layers = torchvision.models.vgg19(weights=None).features[: depth + 1]
        sd = {k: v for k, v in self.weights.state_dict().items() if int(k.split(".")[0]) <= depth}
        layers.load_state_dict(sd, strict=True, assign=True)
        tapped = {TAP_INDEX[t] for t in self.taps}
        for i, m in enumerate(layers):
            # an in-place ReLU would overwrite a tapped conv output
            if isinstance(m, nn.ReLU) and (i - 1) in tapped:
                layers[i] = nn.ReLU(inplace=False)
        self.layers = layers
        self._tap_at = {TAP_INDEX[t]: t for t in self.taps}

        # preprocess: y = x[:, order] * (scale / std) - mean / std, per network input channel
        w = self.weights
        std = torch.tensor(w.std, dtype=torch.float32)
        mul = (w.scale / std).view(1, 3, 1, 1)
        add = (-torch.tensor(w.mean, dtype=torch.float32) / std).view(1, 3, 1, 1)
        self.register_buffer("_mul", mul, persistent=False)
        self.register_buffer("_add", add, persistent=False)
        self._bgr = w.channel_order == "BGR"

        self.requires_grad_(False)
        super().train(False)
        if device is not None:
            self.to(device)

    def train(self, mode: bool = True):
        """The backbone is frozen: it stays in eval mode whatever ``mode`` says."""
        return super().train(False)

    @property
    def weights_info(self) -> dict:
        """Provenance of the weights: name, sha256, source, path, preprocessing and constants."""
        return self.weights.info()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Map images in [0, 1] of shape (N, 1, H, W) (grey) or (N, 3, H, W) (RGB) to network input.

        Grey is replicated to three channels; RGB is reordered to BGR for Caffe weights; then the
        scale, mean and std of the weights' preprocessing are applied. Differentiable.
        """
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise BadInputError(None, f"expected images of shape (N, 1, H, W) or (N, 3, H, W), "
                                      f"got {tuple(x.shape)}")
        if x.shape[1] == 3 and self._bgr:
            x = x.flip(1)
        return x * self._mul.to(x.dtype) + self._add.to(x.dtype)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps of the taps for a *preprocessed* batch of shape (N, 3, H, W)."""
        out = {}
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self._tap_at:
                out[self._tap_at[i]] = x
        return {t: out[t] for t in self.taps}

    def features(self, x01: torch.Tensor) -> dict[str, torch.Tensor]:
        """``forward(preprocess(x01))`` for images in [0, 1]."""
        return self.forward(self.preprocess(x01))

    def extra_repr(self) -> str:
        return f"weights={self.weights.name!r} ({self.weights.sha256[:12]}), taps={self.taps}"


# ---------------------------------------------------------------------------------------
# the shared service
# ---------------------------------------------------------------------------------------
def pool_map(f: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool a feature map batch (N, C, h, w) to (N, k), float32 for ``meanstd`` and ``gram``.

    ``mean``: spatial mean per channel (C values); ``max``: spatial max; ``gram_diag``: mean
    squared activation per channel; ``meanstd``: the means, then the standard deviations
    :math:`\\sqrt{\\frac{1}{M}\\sum_p (F_{cp} - \\bar F_c)^2 + 10^{-8}}` (2C values);
    ``gram``: the upper triangle, row-major, of :math:`G = F F^T / M` (C(C+1)/2 values).
    """
    if pooling == "mean":
        return f.mean(dim=(2, 3))
    if pooling == "max":
        return f.amax(dim=(2, 3))
    if pooling == "gram_diag":
        return f.square().mean(dim=(2, 3))
    if pooling == "meanstd":
        flat = f.float().flatten(2)
        return torch.cat([flat.mean(dim=2),
                          torch.sqrt(flat.var(dim=2, unbiased=False) + 1e-8)], dim=1)
    if pooling == "gram":
        from .kernels import gram_matrix

        g = gram_matrix(f.float(), normalize=True)
        iu = torch.triu_indices(g.shape[1], g.shape[2], device=g.device)
        return g[:, iu[0], iu[1]]
    raise BadInputError(None, f"pooling must be one of {POOLINGS}, got {pooling!r}")


def resolve_device(device=None) -> torch.device:
    """``None`` or ``"auto"`` → CUDA when present, else CPU; anything else is passed to
    :class:`torch.device` (a CUDA device without CUDA is a :class:`BadInputError`)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(None, f"device {device!r} was asked for but CUDA is not available; "
                                  "use device='cpu' (--device cpu) or 'auto'")
    return dev


#: The last backbone built from a named weights source: building VGG19, and above all seeded
#: random weights, takes seconds, and a frozen VGG19 is ~80 MB, so one is kept per process.
_SHARED: dict = {}


def shared_backbone(weights="auto", taps=STYLE_TAPS, device=None, *,
                    channels_last: bool | None = None) -> VGG19Backbone:
    """A frozen :class:`VGG19Backbone`, shared between the encoders of one process.

    ``channels_last`` (default: on CUDA only, where cuDNN runs NHWC faster; oneDNN on CPU
    measured faster in NCHW for the texture-VAE) sets the weights' memory format. Weights
    given as a file path or a :class:`VGG19Weights` object are not cached.
    """
    dev = resolve_device(device)
    taps = check_taps(taps)
    cl = dev.type == "cuda" if channels_last is None else bool(channels_last)
    named = isinstance(weights, str) and not Path(weights).exists()
    key = (str(weights), taps, str(dev), cl)
    bb = _SHARED.get(key) if named else None
    if bb is None:
        bb = VGG19Backbone(weights=weights, taps=taps, device=dev)
        if cl:
            bb = bb.to(memory_format=torch.channels_last)
        if named:
            _SHARED.clear()
            _SHARED[key] = bb
    return bb


def check_weights(expected: dict | None, got: dict, *, encoder: str, weights) -> None:
    """Refuse weights other than the ones a fitted encoder was made with.

    Parameters
    ----------
    expected : the fitted encoder's weights record (``weights_info_``), or None (not fitted)
    got : the record of the weights ``weights`` resolves to now
    encoder : the encoder's name, for the message
    weights : the ``weights`` parameter, for the message

    Raises
    ------
    WeightsNotFoundError
        The two sha256 differ: its features would not be comparable.
    """
    want = (expected or {}).get("sha256")
    have = (got or {}).get("sha256")
    if want and want != have:
        raise WeightsNotFoundError(
            f"this {encoder} model was made with VGG19 weights {expected.get('name')!r} (sha256 "
            f"{str(want)[:12]}…), but weights={weights!r} now resolves to {got.get('name')!r} "
            f"(sha256 {str(have)[:12]}…); its features would not be comparable. Make the same "
            "weights available (matrep weights import PATH) or pass weights=<that file>")


def weights_provenance(info: dict | None, taps) -> dict:
    """The provenance entries of a VGG19-based encoder: the weights' full record under
    ``"weights"`` (name, sha256, source, preprocessing; the feature store writes
    ``weights_name`` and ``weights_sha256`` from it), ``"preprocessing"`` and ``"taps"``."""
    if not info:
        return {}
    return {"weights": dict(info), "preprocessing": info.get("preprocessing"),
            "taps": [str(t) for t in taps]}


class BackboneFeatures:
    """Per-patch VGG19 statistics, computed once for every encoder that asks for them.

    A study makes one for its patches, registers the :class:`matrep.encoder.BackboneRequest`
    of each VGG-based encoder, then hands it to :func:`matrep.pipeline.encode_patchset`:
    the first :meth:`get` runs VGG19 over all patches once per request key (weights sha256,
    downsampling, device) for the union of the registered statistics and keeps them (a few
    KiB per patch); each encoder then reads its own through ``transform_from_features``.
    Statistics registered after that first pass (a deeper tap, another pooling) cost one more
    pass, for the missing ones only.

    Parameters
    ----------
    patches : array of shape (n, H, W) in [0, 1]
    batch_size : int, default 32

    Attributes
    ----------
    passes : dict
        request key -> number of patches sent through VGG19 (the tests count them).
    """

    def __init__(self, patches, *, batch_size: int = 32):
        self.patches = patches
        self.batch_size = int(batch_size)
        self._wanted: dict = {}    # key -> {(tap, pooling): None} in registration order
        self._weights: dict = {}   # key -> the weights source to build the network from
        self._stats: dict = {}     # key -> {(tap, pooling): ndarray (n, k)}
        self.passes: dict = {}

    def register(self, request) -> None:
        """Announce what an encoder will read (before the first :meth:`get` of its key)."""
        self._wanted.setdefault(request.key, {}).update(dict.fromkeys(map(tuple, request.stats)))
        self._weights.setdefault(request.key, request.weights)

    def get(self, request, start: int, stop: int) -> dict:
        """The statistics of ``request`` for patches ``start:stop``: {(tap, pooling): (m, k)}."""
        self.register(request)
        have = self._stats.setdefault(request.key, {})
        missing = [s for s in self._wanted[request.key] if s not in have]
        if missing:
            have.update(self._compute(request.key, missing))
        return {tuple(s): have[tuple(s)][start:stop] for s in request.stats}

    def _compute(self, key, stats) -> dict:
        import numpy as np

        sha, factor, device = key
        taps = tuple(dict.fromkeys(t for t, _ in stats))
        taps = tuple(sorted(taps, key=lambda t: TAP_INDEX[t]))
        bb = shared_backbone(self._weights[key], taps, device)
        check_weights({"sha256": sha, "name": "(requested)"}, bb.weights_info,
                      encoder="VGG19-based", weights=self._weights[key])
        n = len(self.patches)
        out = {s: [] for s in stats}
        with torch.inference_mode():
            for i in range(0, n, self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(self.patches[i:i + self.batch_size],
                                                          dtype=np.float32))[:, None]
                x = x.to(bb._mul.device)
                if factor > 1:
                    x = torch.nn.functional.avg_pool2d(x, factor)
                feats = bb(bb.preprocess(x))
                for t, pooling in stats:
                    out[(t, pooling)].append(pool_map(feats[t], pooling).float().cpu().numpy())
        self.passes[key] = self.passes.get(key, 0) + n
        return {s: (np.concatenate(v) if v else np.zeros((0, 0), np.float32))
                for s, v in out.items()}
