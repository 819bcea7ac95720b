"""TEMPORARY stand-in for matrep.backbone.VGG19Backbone until it lands (removed before merge)."""
from __future__ import annotations

import torch
from torch import nn

_NAMES = []
_b, _c = 1, 1
for _kind in ["C", "R", "C", "R", "P", "C", "R", "C", "R", "P", "C", "R", "C", "R", "C", "R", "C", "R", "P",
              "C", "R", "C", "R", "C", "R", "C", "R", "P", "C", "R", "C", "R", "C", "R", "C", "R", "P"]:
    if _kind == "C":
        _NAMES.append(f"conv{_b}_{_c}")
    elif _kind == "R":
        _NAMES.append(f"relu{_b}_{_c}")
        _c += 1
    else:
        _NAMES.append(f"pool{_b}")
        _b, _c = _b + 1, 1


class VGG19Backbone(nn.Module):
    def __init__(self, weights="auto", taps=("conv1_1", "pool1", "pool2", "pool3", "pool4"), device=None):
        super().__init__()
        import torchvision
        from matrep.weights import resolve_vgg19_weights

        w = resolve_vgg19_weights(weights)
        feats = torchvision.models.vgg19().features
        feats.load_state_dict(w.state_dict())
        self.taps = tuple(taps)
        depth = max(_NAMES.index(t) for t in self.taps) + 1
        self.features = feats[:depth].eval()
        for m in self.features:
            if isinstance(m, nn.ReLU):
                m.inplace = False
        self.requires_grad_(False)
        self._w = w
        self.weights_info = w.info()
        self.register_buffer("_mean", torch.tensor(w.mean).view(1, 3, 1, 1))
        self.register_buffer("_std", torch.tensor(w.std).view(1, 3, 1, 1))
        if device is not None:
            self.to(device)

    def preprocess(self, x01):
        x = x01.expand(-1, 3, -1, -1) * self._w.scale
        return (x - self._mean) / self._std

    def forward(self, x):
        out = {}
        for name, m in zip(_NAMES, self.features):
            x = m(x)
            if name in self.taps:
                out[name] = x
        return out
