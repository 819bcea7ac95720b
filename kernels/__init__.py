"""Gram matrices and the Gatys style loss: a fused Triton kernel next to its torch reference.

Public API
----------
``gram_matrix(x, *, normalize=False, backend="auto", input_precision="ieee")``
    ``x`` of shape (B, C, H, W), float32/bfloat16/float16 (float64 with the torch backend);
    returns ``G = F F^T`` of shape (B, C, C) in float32 (F = x viewed as (B, C, H*W)),
    unnormalised, or divided by ``M = H*W`` with ``normalize=True``.
``style_loss(inputs, targets, weights=None, *, reduction="mean", backend="auto", input_precision="ieee")``
    ``inputs``/``targets``: sequences of feature maps, one per layer, equal shapes and dtypes
    pairwise. Returns a 0-dim float32 tensor, the batch mean over images of
    ``sum_l w_l / (4 C_l^2 M_l^2) * sum_ij (Gh_ij - G_ij)^2`` (Gatys et al. 2015, eq. 2-4), or
    with ``reduction="none"`` that loss for each image (shape (B,)).
    Differentiable w.r.t. ``inputs``, and w.r.t. ``targets`` when they require grad.
``style_loss_from_grams(inputs, target_grams, weights=None, *, reduction="mean", backend="auto", input_precision="ieee")``
    The same loss against target Gram matrices computed once with ``gram_matrix`` (each of shape
    (B, C_l, C_l), float32). The target Grams are constants (no gradient flows into them). This
    is the entry point for the texture-VAE: the VGG features of the input patches are frozen, so
    their Grams can be cached across epochs and the target half of every Gram is skipped::

        with torch.no_grad():
            target_grams = [gram_matrix(f) for f in vgg(patches)]    # once, cache on the device
        loss = style_loss_from_grams(vgg(reconstruction), target_grams)

Backends
--------
``"torch"``: :mod:`matrep.kernels.reference`, any device, also float64.
``"triton"``: fused kernels in :mod:`matrep.kernels.gram_triton`; CUDA tensors, or CPU tensors when
the environment has ``TRITON_INTERPRET=1`` (read at call time); anything else raises ValueError.
``"auto"``: Triton for CUDA tensors of a supported dtype when Triton imports; torch otherwise.

``input_precision`` (float32 inputs on the Triton backend): ``"ieee"`` (exact fp32 products, the
default), ``"tf32"`` (tensor cores, ~1e-3 relative error of G), ``"tf32x3"`` (three TF32 products,
close to ieee at lower cost). 16-bit inputs always multiply exactly into float32 accumulators;
the torch backend honours ``torch.backends.cuda.matmul.allow_tf32`` instead.

Behaviour at the edges (both backends): non-contiguous inputs are read through their strides
when H and W merge (e.g. channels_last, channel slices), otherwise copied once; C = 1 or
H*W = 1 work; an empty batch, an empty layer list, mismatched shapes, dtypes or devices raise
ValueError; NaN/inf in features propagate to the loss (no host-side check).
"""

from __future__ import annotations

import torch

from ._checks import (KERNEL_DTYPES, REDUCTIONS, check_grams, check_layers, check_reduction,
                      check_single)
from .reference import gram_matrix_reference, style_loss_from_grams_reference, style_loss_reference

__all__ = [
    "gram_matrix",
    "style_loss",
    "style_loss_from_grams",
    "gram_matrix_reference",
    "style_loss_reference",
    "style_loss_from_grams_reference",
    "resolve_backend",
    "BACKENDS",
    "PRECISIONS",
    "REDUCTIONS",
]

BACKENDS = ("auto", "torch", "triton")
PRECISIONS = ("ieee", "tf32", "tf32x3")


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    import os
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def resolve_backend(backend: str, tensors) -> str:
    """Return ``"torch"`` or ``"triton"`` for ``backend`` and the tensors it will run on."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    tensors = list(tensors)
    on_cuda = all(t.is_cuda for t in tensors)
    dtype_ok = all(t.dtype in KERNEL_DTYPES for t in tensors)
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if on_cuda and dtype_ok and _triton_importable() else "torch"
    # backend == "triton"
    if not _triton_importable():
        raise ValueError("backend='triton' needs the triton package (pip install triton); "
                         "use backend='torch' or 'auto'")
    if not dtype_ok:
        bad = sorted({str(t.dtype) for t in tensors if t.dtype not in KERNEL_DTYPES})
        raise ValueError(f"backend='triton' supports float16, bfloat16 and float32, got {bad}; "
                         "use backend='torch' for float64")
    if not on_cuda and not _interpreting():
        raise ValueError("backend='triton' needs CUDA tensors; on CPU it runs only in Triton's "
                         "interpreter (set TRITON_INTERPRET=1 before running). Use "
                         "backend='torch' or 'auto' for CPU tensors")
    return "triton"


def _check_precision(p):
    if p not in PRECISIONS:
        raise ValueError(f"input_precision must be one of {PRECISIONS}, got {p!r}")


def gram_matrix(x, *, normalize=False, backend="auto", input_precision="ieee"):
    """Gram matrices ``G = F F^T`` in float32, unnormalised unless ``normalize``.

    Parameters
    ----------
    x : torch.Tensor of shape (B, C, H, W)
        Feature maps, float32/bfloat16/float16 (float64 with ``backend="torch"``).
    normalize : bool, default False
        Divide G by ``M = H * W`` (the mean product per position: independent of the image
        size, as a feature; the style loss uses the unnormalised G).
    backend : {"auto", "torch", "triton"}
    input_precision : {"ieee", "tf32", "tf32x3"}
        Product precision of float32 inputs on the Triton backend.

    Returns
    -------
    torch.Tensor of shape (B, C, C)
        float32 (float64 for float64 input on the torch backend); differentiable.
    """
    _check_precision(input_precision)
    check_single(x, name="x", allow_float64=True)
    B, C, H, W = x.shape
    if resolve_backend(backend, [x]) == "torch" or B == 0 or H * W == 0:
        # torch backend, or nothing to launch: (B, C, C) zeros/empty
        return gram_matrix_reference(x, normalize=normalize)
    from .gram_triton import gram_matrix_triton
    G = gram_matrix_triton(x, precision=input_precision)
    return G / (H * W) if normalize else G


def style_loss(inputs, targets, weights=None, *, reduction="mean", backend="auto",
               input_precision="ieee"):
    """Gatys style loss, batch mean over images (see the module docstring for the formula).

    Parameters
    ----------
    inputs, targets : sequence of torch.Tensor of shape (B, C_l, H_l, W_l)
        One feature map per layer (a single tensor counts as one layer); equal shapes and dtypes
        pairwise, all on one device, one batch size B >= 1.
    weights : sequence of float, optional
        Layer weights ``w_l`` (default 1 each).
    reduction : {"mean", "none"}, default "mean"
        ``"mean"``: the batch mean (0-dim, the training loss); ``"none"``: the loss of each
        image, shape (B,) (e.g. a style distance between pairs of patches).
    backend : {"auto", "torch", "triton"}
    input_precision : {"ieee", "tf32", "tf32x3"}
        Product precision of float32 inputs on the Triton backend.

    Returns
    -------
    torch.Tensor
        0-dim, or shape (B,) for ``reduction="none"``; float32 (float64 for float64 inputs on
        the torch backend).
    """
    _check_precision(input_precision)
    check_reduction(reduction)
    inputs, targets, weights = check_layers(inputs, targets, weights, allow_float64=True)
    if resolve_backend(backend, [*inputs, *targets]) == "torch":
        return style_loss_reference(inputs, targets, weights, reduction=reduction)
    from .gram_triton import style_loss_triton
    return style_loss_triton(inputs, targets, weights, target=1, precision=input_precision,
                             reduction=reduction)


def style_loss_from_grams(inputs, target_grams, weights=None, *, reduction="mean",
                          backend="auto", input_precision="ieee"):
    """Style loss against precomputed target Gram matrices (constants).

    Parameters
    ----------
    inputs : sequence of torch.Tensor of shape (B, C_l, H_l, W_l)
    target_grams : sequence of torch.Tensor of shape (B, C_l, C_l), float32
        ``gram_matrix(targets[l])``, typically computed once under ``torch.no_grad()`` and cached.
    weights, reduction, backend, input_precision
        As for :func:`style_loss`.
    """
    _check_precision(input_precision)
    check_reduction(reduction)
    inputs, target_grams, weights = check_grams(inputs, target_grams, weights, allow_float64=True)
    if resolve_backend(backend, inputs) == "torch" or any(g.dtype != torch.float32
                                                          for g in target_grams):
        return style_loss_from_grams_reference(inputs, target_grams, weights, reduction=reduction)
    from .gram_triton import style_loss_triton
    grams = [g.detach() for g in target_grams]
    return style_loss_triton(inputs, grams, weights, target=2, precision=input_precision,
                             reduction=reduction)
