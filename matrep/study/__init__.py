"""The structure-property study: encoders x regressors x honest splits, resumable.

This is the functional core behind ``matrep compare`` (the report lives in
:mod:`matrep.report`). The study answers the paper's question (Sardeshmukh et al. 2021, Tables 2
and 3, Fig. 7): do an encoder's features of patches predict a property of the micrograph
they come from, and do they still predict it for a micrograph the model has never seen?

Splits
------
* ``random``: 80/20 over patches, once per seed (the paper's Table 2). Patches of one
  micrograph are correlated, so this measures interpolation, not generalisation.
* ``grouped``: leave one group out (group = micrograph, or a label column such as the UHCS
  ``sample_key``), predicting every patch of the unseen group (Table 3, Fig. 7). With many
  groups, ``folds=K`` uses ``GroupKFold(K)`` and ``max_groups=N`` holds out only N groups
  (seeded choice), each in turn, training on all the others.

No leakage
----------
Everything fitted — a trainable encoder (PCA, thresholds, a VAE), the standard scaler, the
target scaler and the regressor with its inner cross-validation — sees the training patches
of a split only. A trainable encoder without a given model is fitted inside each split;
non-trainable encoders and given fitted models (``--model``) are applied once to all
patches (they learn nothing from the study's data; a given model's own training data is the
user's responsibility and is recorded as such in the report). Hyperparameters are chosen by
inner cross-validation on the training part: ``GroupKFold`` on the training groups for
grouped splits, ``KFold`` (``StratifiedKFold`` for classes) for random splits.

Baseline, controls, verdict
---------------------------
Every study also scores a **baseline** once per split, whatever the encoders: the mean of the
training part's targets (regression) or its most frequent class (classification), predicted
for every test patch and scored with the same metrics. A texture-VAE given as a fitted model
(``--model texturevae=PATH``) gets two **controls**, on the same patches and splits (see
:func:`texturevae_controls`): the same configuration with an untrained head, and ``vgg19`` on
the encoder's own input statistics. :func:`verdict` says whether the trained model beats both
controls and the baseline.

Groups of mixed classes
-----------------------
In classification, a group whose micrographs carry different classes is named in the notes,
and its vote is scored per micrograph (each micrograph's majority prediction against its own
class) instead of against the group's majority class (:func:`mixed_class_groups`).

Resuming
--------
Each (method, split, regressor) result is written atomically to
``OUT/.study/results/<digest>.json`` as soon as it finishes; the digest covers the data, the
encoder specification, the split's indices, the regressor and the inner CV. Per-split
features of encoders fitted per split are kept in ``OUT/features/<method>/<split>.h5`` (an
ordinary :class:`matrep.store.FeatureStore`) with a sidecar naming the digest of what was
fitted. A study interrupted at any moment resumes from these files.

Modules
-------
* :mod:`~matrep.study.data`: :func:`prepare_data` and :class:`StudyData` (patches, target, groups)
* :mod:`~matrep.study.splits`: :func:`random_splits`, :func:`group_splits`
* :mod:`~matrep.study.methods`: :class:`MethodSpec` and the controls (:data:`CONTROLS`)
* :mod:`~matrep.study.models`: regressors, inner cross-validation, the baseline's prediction
* :mod:`~matrep.study.scoring`: metrics per split and per group, :func:`aggregate`
* :mod:`~matrep.study.result`: :class:`StudyResult` and :func:`verdict`
* :mod:`~matrep.study.runner`: :class:`Study` and :func:`run_study`

Everything public is importable from ``matrep.study`` itself.
"""

from __future__ import annotations

from .data import (StudyData, StudyWarning, describe_mixed, detect_task, mixed_class_groups,
                   prepare_data, vote_units)
from .methods import CONTROLS, MethodSpec, texturevae_controls
from .models import (BASELINE_LABELS, BASELINE_METHOD, BASELINE_MODELS, BUILTIN_MODELS,
                     SVC_GRID, SVR_GRID, baseline_predict, fit_predict, import_estimator,
                     inner_cv, make_model, model_label, parse_model_spec)
from .result import StudyResult, verdict
from .runner import STUDY_DIR, Study, run_study
from .scoring import (METRIC_NAMES, PRIMARY_METRIC, aggregate, classification_metrics,
                      group_summary, metrics, pooled_records, regression_metrics)
from .splits import Split, group_splits, natural_key, random_splits

__all__ = [
    "BASELINE_LABELS", "BASELINE_METHOD", "BASELINE_MODELS", "BUILTIN_MODELS", "CONTROLS",
    "METRIC_NAMES", "PRIMARY_METRIC", "STUDY_DIR", "SVC_GRID", "SVR_GRID", "MethodSpec",
    "Split", "Study", "StudyData", "StudyResult", "StudyWarning", "aggregate",
    "baseline_predict", "classification_metrics", "describe_mixed", "detect_task",
    "fit_predict", "group_splits", "group_summary", "import_estimator", "inner_cv",
    "make_model", "metrics", "mixed_class_groups", "model_label", "natural_key",
    "parse_model_spec", "pooled_records", "prepare_data", "random_splits",
    "regression_metrics", "run_study", "texturevae_controls", "verdict", "vote_units",
]
