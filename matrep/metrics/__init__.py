"""Texture-similarity metrics: STSIM-2 (Zujovic et al. 2013) and DISTS (Ding et al. 2020).

Both take two batches of images as torch tensors of shape (N, 1, H, W) with values in [0, 1]
and return N similarities in [0, 1] (1 = same texture), on CPU or GPU::

    from matrep.metrics import stsim2, dists
    s = stsim2(x, y)          # no weights needed
    d = dists(x, y)           # needs ImageNet VGG16 weights and the published alpha/beta;
                              # raises WeightsNotFoundError saying how to provide them

Importing this package does not import torch; the functions do.

Beside them: :mod:`.correlation` (Spearman rho that says when it is undefined),
:mod:`.morphology` (graphite segmentation, descriptors and descriptor fidelity),
:mod:`.specificity` (own-vs-other distance of reconstructions) and :mod:`.disentanglement`
(MIG, SAP).
"""

from __future__ import annotations


def stsim2(x, y, **kwargs):
    """STSIM-2 similarity; see :func:`matrep.metrics.stsim.stsim2`."""
    from .stsim import stsim2 as _f

    return _f(x, y, **kwargs)


def dists(x, y, **kwargs):
    """DISTS similarity (1 - distance); see :func:`matrep.metrics.dists.dists`."""
    from .dists import dists as _f

    return _f(x, y, **kwargs)


def dists_missing(vgg16_weights=None, dists_weights=None) -> list[str]:
    """What DISTS lacks (empty when it can run); see :func:`matrep.metrics.dists.missing_ingredients`."""
    from .dists import missing_ingredients

    return missing_ingredients(vgg16_weights, dists_weights)


#: name -> callable, in the order reports show them
METRICS = {"stsim2": stsim2, "dists": dists}

__all__ = ["stsim2", "dists", "dists_missing", "METRICS"]
