"""Plain-torch reference for the Gram matrix and the Gatys style loss.

These functions define what the Triton kernels compute; tests compare the kernels against them
(in float64 on CPU) and the benchmarks import them, so tests and benchmarks never drift apart.

The Gram matrix and the difference of Gram matrices are always computed in float32 (float64
for float64 inputs), whatever the feature dtype and whatever autocast context is active:
rounding G to bfloat16 makes the loss of a near-perfect reconstruction wrong by orders of
magnitude (see ``docs/kernels.md``).

.. math::

    G^l_{ij} = \\sum_k F^l_{ik} F^l_{jk}, \\qquad
    \\mathcal{L}_b = \\sum_l \\frac{w_l}{4 C_l^2 M_l^2}
                   \\sum_{ij} (\\hat G^l_{bij} - G^l_{bij})^2, \\qquad
    \\mathcal{L} = \\frac{1}{B} \\sum_b \\mathcal{L}_b

(Gatys, Ecker & Bethge 2015, "Texture synthesis using convolutional neural networks", eq. 2-4,
with the batch mean added; ``reduction="none"`` returns the per-image :math:`\\mathcal{L}_b`.)
"""

from __future__ import annotations

import torch

from ._checks import check_grams, check_layers, check_reduction, check_single


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram_matrix_reference(x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Gram matrices ``G = F F^T`` of feature maps (divided by ``M = H W`` if ``normalize``).

    Parameters
    ----------
    x : torch.Tensor of shape (B, C, H, W)
        float16, bfloat16, float32 or float64 feature maps.
    normalize : bool, default False
        Divide by the number of positions ``M = H W`` (the mean product per position, which
        does not grow with the image size). The style loss uses the unnormalised G.

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
        G = torch.bmm(F, F.transpose(1, 2))
    return G / (H * W) if normalize else G


def _layer_scale(weight: float, C: int, M: int) -> float:
    return float(weight) / (4.0 * C * C * M * M)


def _reduce(per_image: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_image.mean() if reduction == "mean" else per_image


def style_loss_reference(inputs, targets, weights=None, reduction="mean") -> torch.Tensor:
    """Gatys style loss between two lists of feature maps (batch mean, or one per image).

    Parameters
    ----------
    inputs, targets : sequence of torch.Tensor, each of shape (B, C_l, H_l, W_l)
        One feature map per layer; shapes and dtypes equal pairwise.
    weights : sequence of float, optional
        One weight per layer (default 1).
    reduction : {"mean", "none"}, default "mean"
        Batch mean (0-dim) or the loss of each image (shape (B,)).

    Returns
    -------
    torch.Tensor
        float32 (float64 for float64 input), differentiable w.r.t. both sides.
    """
    check_reduction(reduction)
    inputs, targets, weights = check_layers(inputs, targets, weights, allow_float64=True)
    total = None
    for x, t, w in zip(inputs, targets, weights):
        B, C, H, W = x.shape
        d = gram_matrix_reference(x) - gram_matrix_reference(t)
        term = _layer_scale(w, C, H * W) * _reduce(d.square().sum(dim=(1, 2)), reduction)
        total = term if total is None else total + term
    return total


def style_loss_from_grams_reference(inputs, target_grams, weights=None,
                                    reduction="mean") -> torch.Tensor:
    """Style loss against precomputed target Gram matrices.

    ``target_grams[l]`` is ``gram_matrix_reference(targets[l])`` (shape (B, C_l, C_l), float32);
    it is treated as a constant (no gradient flows into it). ``reduction`` as for
    :func:`style_loss_reference`.
    """
    check_reduction(reduction)
    inputs, target_grams, weights = check_grams(inputs, target_grams, weights, allow_float64=True)
    total = None
    for x, g, w in zip(inputs, target_grams, weights):
        B, C, H, W = x.shape
        gh = gram_matrix_reference(x)
        d = gh - g.detach().to(gh.dtype)
        term = _layer_scale(w, C, H * W) * _reduce(d.square().sum(dim=(1, 2)), reduction)
        total = term if total is None else total + term
    return total
