r"""Judging trained models: texture similarity of reconstructions and meaning of latent dimensions.

Two library entry points, behind ``matrep evaluate`` and ``matrep interpret``:

:func:`evaluate_models`
    The paper's Table 1 on your data. ``n`` patches are drawn (seeded) from the given
    micrographs; every model reconstructs them and each metric compares patch and
    reconstruction. Two baselines on the *same* patches bracket the numbers:

    * **ceiling**: another patch of the same micrograph (not overlapping the first where the
      micrograph allows): the score of a perfect texture model, which reproduces the texture
      but not the pixels;
    * **floor**: a patch of another material: from ``other_images`` when given, otherwise a
      patch of a *different micrograph* of the same folder (a floor only if the folder holds
      different microstructures; pass ``other_images`` for a true other material).

    *Descriptor fidelity*: input and reconstruction are segmented the same way and measured
    (:mod:`matrep.metrics.morphology`); per descriptor (area fraction, particle density, mean
    diameter, nodularity) the Spearman rho across patches, undefined with a note when one
    side is constant. *Specificity*: own-vs-other style loss
    (:func:`matrep.metrics.specificity.own_vs_other`).

    Pass micrographs the models were not trained on: the patches are held out only when the
    images are. Or pass the training images with ``held_out=True``: the draw is restricted to
    the patches the models held out (``model.held_out_patches``).

:func:`interpret_model`
    For every latent dimension its Spearman correlation with each factor: numeric columns of a
    labels CSV (every patch inherits its micrograph's row) or, without labels, descriptors
    measured on each patch (dark phase by :func:`matrep.metrics.morphology.segment_dark_phase`,
    then :func:`matrep.datasets.descriptors.measure_mask`: graphite fraction, particle density,
    mean equivalent diameter, nodularity). It ranks the dimensions that track each factor,
    draws traversals of the top ones, and scores disentanglement by the Mutual Information Gap
    (Chen et al. 2018) and the Separated Attribute Predictability (Kumar et al. 2018), both
    defined in :mod:`matrep.metrics.disentanglement`.

    R. T. Q. Chen, X. Li, R. Grosse and D. Duvenaud, "Isolating sources of disentanglement in
    variational autoencoders", NeurIPS 2018.
    A. Kumar, P. Sattigeri and A. Balakrishnan, "Variational inference of disentangled latent
    concepts from unlabeled observations", ICLR 2018.

The models are encoders flagged ``generative`` (the declared interface
:class:`matrep.encoder.GenerativeEncoder`, which ``matrep.testing.check_encoder`` enforces):
``transform``, ``reconstruct`` (evaluate) and ``traverse`` (figures and the traversal ranking),
``latent_dim`` and ``patch_size_``; optionally ``style_distance`` (specificity) and
``held_out_patches`` (held-out draws).

:func:`traversal_effects` (behind ``interpret`` and ``matrep traverse --dims auto``) sets each
latent dimension of some base patches to -3..3, measures the descriptors of the decoded
images and ranks the dimensions per descriptor by monotonicity (Spearman of step vs
descriptor) and range moved relative to the data's inter-quartile range.

Modules
-------
* :mod:`~matrep.evaluation.reconstruction`: :func:`evaluate_models`, :func:`score_pairs`,
  :class:`EvaluationReport`
* :mod:`~matrep.evaluation.latents`: :func:`interpret_model`, :class:`InterpretReport`
* :mod:`~matrep.evaluation.traversal`: :func:`traversal_effects`, :class:`TraversalRanking`,
  :func:`spread_patches`
* :mod:`~matrep.evaluation.models` (the models judged) and
  :mod:`~matrep.evaluation.outputs` (writing the reports)

Spearman, MIG and SAP live in :mod:`matrep.metrics` (one implementation each); the names are
importable from here too, as before.
"""

from __future__ import annotations

# one implementation each, in matrep.metrics (re-exported here for the reports' users)
from ..metrics.correlation import Spearman, spearman, spearman_matrix
from ..metrics.disentanglement import mutual_information_gap, sap_score
from ..metrics.morphology import (DESCRIPTORS, MEASURED_DESCRIPTORS, MIN_CONTRAST,
                                  descriptor_array, fidelity_from_arrays, measure_descriptors,
                                  segment_dark_phase)
from ..figures import traversal_figure  # one implementation, in matrep.figures
from .latents import InterpretReport, interpret_model
from .reconstruction import (DEFAULT_METRICS, METRIC_INFO, EvaluationReport, evaluate_models,
                             score_pairs)
from .traversal import (GOAL_DESCRIPTORS, MIN_IQR_SHARE, MONOTONE_RHO, TRAVERSAL_VALUES,
                        TraversalRanking, spread_patches, traversal_effects)

__all__ = [
    "DEFAULT_METRICS", "DESCRIPTORS", "EvaluationReport", "GOAL_DESCRIPTORS",
    "InterpretReport", "MEASURED_DESCRIPTORS", "METRIC_INFO",
    "MIN_CONTRAST", "MIN_IQR_SHARE", "MONOTONE_RHO", "Spearman", "TRAVERSAL_VALUES",
    "TraversalRanking", "descriptor_array", "evaluate_models", "fidelity_from_arrays",
    "interpret_model", "measure_descriptors", "mutual_information_gap", "sap_score",
    "score_pairs", "segment_dark_phase", "spearman", "spearman_matrix", "spread_patches",
    "traversal_effects", "traversal_figure",
]
