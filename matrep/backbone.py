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

Example
-------
>>> from matrep.backbone import tap_shapes
>>> tap_shapes(128)["pool4"]
(512, 8, 8)
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import BadInputError
from .taps import STYLE_TAPS, TAP_CHANNELS, TAP_INDEX, TAP_NAMES, check_taps, tap_shapes
from .weights import VGG19Weights, resolve_vgg19_weights

__all__ = ["VGG19Backbone", "STYLE_TAPS", "TAP_CHANNELS", "TAP_INDEX", "TAP_NAMES", "check_taps",
           "tap_shapes"]


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
