"""Plain-torch reference for the Gram matrix and the Gatys style loss.

These functions define what the Triton kernels compute; tests compare the kernels against them
(in float64 on CPU) and the benchmarks import them, so tests and benchmarks never drift apart.

The Gram matrix and the difference of Gram matrices are always computed in float32 (float64
for float64 inputs), whatever the feature dtype and whatever autocast context is active:
rounding G to bfloat16 makes the loss of a near-perfect reconstruction wrong by orders of
magnitude (see ``docs/kernels.md``).

.. math::

    G^l_{ij} = \\sum_k F^l_{ik} F^l_{jk}, \\qquad
    \\mathcal{L} = \\frac{1}{B} \\sum_b \\sum_l \\frac{w_l}{4 C_l^2 M_l^2}
                   \\sum_{ij} (\\hat G^l_{bij} - G^l_{bij})^2

(Gatys, Ecker & Bethge 2015, "Texture synthesis using convolutional neural networks", eq. 2-4,
with the batch mean added.)
"""

from __future__ import annotations

import torch

from ._checks import check_grams, check_layers, check_single


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram_matrix_reference(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Gram matrices ``G = F F^T`` of feature maps.

    Parameters
    ----------
    x : torch.Tensor of shape (B, C, H, W)
        float16, bfloat16, float32 or float64 feature maps.

    Returns
    -------
    torch.Tensor of shape (B, C, C)
        float32 (float64 for float64 input), differentiable.
    """
    check_single(x, name="x", allow_float64=True)
    B, C, H, W = x.shape
    acc = _acc_dtype(x.dtype)
    F = x.reshape(B, C, H * W).to(acc)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.bmm(F, F.transpose(1, 2))


def _layer_scale(weight: float, C: int, M: int) -> float:
    return float(weight) / (4.0 * C * C * M * M)


def style_loss_reference(inputs, targets, weights=None) -> torch.Tensor:
    """Gatys style loss between two lists of feature maps (batch mean over images).

    Parameters
    ----------
    inputs, targets : sequence of torch.Tensor, each of shape (B, C_l, H_l, W_l)
        One feature map per layer; shapes and dtypes equal pairwise.
    weights : sequence of float, optional
        One weight per layer (default 1).

    Returns
    -------
    torch.Tensor
        0-dim float32 (float64 for float64 input), differentiable w.r.t. both sides.
    """
    inputs, targets, weights = check_layers(inputs, targets, weights, allow_float64=True)
    total = None
    for x, t, w in zip(inputs, targets, weights):
        B, C, H, W = x.shape
        d = gram_matrix_reference(x) - gram_matrix_reference(t)
        term = _layer_scale(w, C, H * W) * d.square().sum(dim=(1, 2)).mean()
        total = term if total is None else total + term
    return total


def style_loss_from_grams_reference(inputs, target_grams, weights=None) -> torch.Tensor:
    """Style loss against precomputed target Gram matrices.

    ``target_grams[l]`` is ``gram_matrix_reference(targets[l])`` (shape (B, C_l, C_l), float32);
    it is treated as a constant (no gradient flows into it).
    """
    inputs, target_grams, weights = check_grams(inputs, target_grams, weights, allow_float64=True)
    total = None
    for x, g, w in zip(inputs, target_grams, weights):
        B, C, H, W = x.shape
        gh = gram_matrix_reference(x)
        d = gh - g.detach().to(gh.dtype)
        term = _layer_scale(w, C, H * W) * d.square().sum(dim=(1, 2)).mean()
        total = term if total is None else total + term
    return total
