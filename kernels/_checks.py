"""Argument checks shared by the torch reference and the Triton path.

Misuse raises ``ValueError`` (or ``TypeError`` for non-tensors) with what was expected, what
came, and what to do. Values are never inspected (no NaN check): that would need a host
synchronisation; NaN and inf propagate to the loss instead.
"""

from __future__ import annotations

import math

import torch

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
REDUCTIONS = ("mean", "none")


def check_reduction(reduction):
    """Check ``reduction`` of the style loss: ``"mean"`` (over the batch) or ``"none"`` (per image)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS} (batch mean or one loss per "
                         f"image), got {reduction!r}")
    return reduction


def _as_layer_list(seq, name):
    if isinstance(seq, torch.Tensor):
        return [seq]  # one layer given as a bare tensor
    if not isinstance(seq, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of feature maps (one per layer), "
                        f"got {type(seq).__name__}")
    return list(seq)


def check_single(x, *, name="x", allow_float64=False):
    """Check one feature map of shape (B, C, H, W)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got shape {tuple(x.shape)}; "
                         "add a batch axis with x[None] for a single image")
    allowed = KERNEL_DTYPES + ((torch.float64,) if allow_float64 else ())
    if x.dtype not in allowed:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in allowed]}, got {x.dtype}"
                         + ("; float64 needs backend='torch'" if x.dtype == torch.float64 else ""))
    return x


def _check_weights(weights, n):
    if weights is None:
        return [1.0] * n
    if isinstance(weights, torch.Tensor):
        # documented: weights are host numbers; a tensor is read once here
        weights = weights.detach().cpu().tolist()
    weights = list(weights)
    if len(weights) != n:
        raise ValueError(f"weights must have one entry per layer ({n}), got {len(weights)}")
    out = []
    for w in weights:
        w = float(w)
        if not math.isfinite(w):
            raise ValueError(f"weights must be finite numbers, got {w}")
        out.append(w)
    return out


def _check_common(inputs, name):
    if len(inputs) == 0:
        raise ValueError(f"{name} is empty: pass at least one feature map")
    dev = inputs[0].device if isinstance(inputs[0], torch.Tensor) else None
    B = inputs[0].shape[0] if isinstance(inputs[0], torch.Tensor) and inputs[0].ndim == 4 else None
    return dev, B


def _check_layer(x, l, name, dev, B, allow_float64):
    check_single(x, name=f"{name}[{l}]", allow_float64=allow_float64)
    if x.device != dev:
        raise ValueError(f"all feature maps must be on one device: {name}[{l}] is on {x.device}, "
                         f"{name}[0] on {dev}")
    if x.shape[0] != B:
        raise ValueError(f"all layers must have the same batch size: {name}[{l}] has "
                         f"{x.shape[0]}, {name}[0] has {B}")
    Bx, C, H, W = x.shape
    if Bx == 0:
        raise ValueError("empty batch (B = 0): the style loss is a mean over images and is "
                         "undefined for none; skip the step instead")
    if C == 0 or H * W == 0:
        raise ValueError(f"{name}[{l}] has shape {tuple(x.shape)}: C and H*W must be >= 1")


def check_layers(inputs, targets, weights, *, allow_float64=False):
    """Check (inputs, targets, weights) for ``style_loss``; return them as lists."""
    inputs = _as_layer_list(inputs, "inputs")
    targets = _as_layer_list(targets, "targets")
    if len(inputs) != len(targets):
        raise ValueError(f"inputs and targets must have one feature map per layer each, got "
                         f"{len(inputs)} inputs and {len(targets)} targets")
    dev, B = _check_common(inputs, "inputs")
    for l, (x, t) in enumerate(zip(inputs, targets)):
        _check_layer(x, l, "inputs", dev, B, allow_float64)
        check_single(t, name=f"targets[{l}]", allow_float64=allow_float64)
        if t.shape != x.shape:
            raise ValueError(f"targets[{l}] must have the shape of inputs[{l}] "
                             f"{tuple(x.shape)}, got {tuple(t.shape)}")
        if t.dtype != x.dtype:
            raise ValueError(f"targets[{l}] must have the dtype of inputs[{l}] ({x.dtype}), got "
                             f"{t.dtype}; cast one side with .to(dtype)")
        if t.device != x.device:
            raise ValueError(f"targets[{l}] is on {t.device} but inputs[{l}] on {x.device}")
    return inputs, targets, _check_weights(weights, len(inputs))


def check_grams(inputs, target_grams, weights, *, allow_float64=False):
    """Check (inputs, target_grams, weights) for ``style_loss_from_grams``."""
    inputs = _as_layer_list(inputs, "inputs")
    target_grams = _as_layer_list(target_grams, "target_grams")
    if len(inputs) != len(target_grams):
        raise ValueError(f"inputs and target_grams must have one entry per layer each, got "
                         f"{len(inputs)} and {len(target_grams)}")
    dev, B = _check_common(inputs, "inputs")
    for l, (x, g) in enumerate(zip(inputs, target_grams)):
        _check_layer(x, l, "inputs", dev, B, allow_float64)
        Bx, C = x.shape[:2]
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"target_grams[{l}] must be a torch.Tensor, got {type(g).__name__}")
        if tuple(g.shape) != (Bx, C, C):
            raise ValueError(f"target_grams[{l}] must have shape (B, C, C) = {(Bx, C, C)} to match "
                             f"inputs[{l}], got {tuple(g.shape)}; compute it with gram_matrix()")
        want = (torch.float32, torch.float64) if allow_float64 else (torch.float32,)
        if g.dtype not in want:
            raise ValueError(f"target_grams[{l}] must be float32 (as gram_matrix returns), got "
                             f"{g.dtype}")
        if g.device != x.device:
            raise ValueError(f"target_grams[{l}] is on {g.device} but inputs[{l}] on {x.device}")
    return inputs, target_grams, _check_weights(weights, len(inputs))
