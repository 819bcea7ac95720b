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
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text
from .errors import BadInputError, LabelsError, MatrepError

#: Built-in model names. Regression: ``linear`` = StandardScaler + LinearRegression,
#: ``svr`` = StandardScaler + SVR(RBF) with C, gamma, epsilon by inner CV (target
#: standardised). Classification: ``linear`` = StandardScaler + LogisticRegression,
#: ``svr`` = StandardScaler + SVC(RBF) with C, gamma by inner CV.
BUILTIN_MODELS = ("linear", "svr")
_ALIASES = {"linreg": "linear", "logistic": "linear", "logreg": "linear", "svm": "svr",
            "svc": "svr", "svr-rbf": "svr"}
#: Inner-CV grids. gamma is a multiple of 1/n_features (sklearn's "scale" for standardised
#: inputs); epsilon is in units of the (standardised) target's standard deviation.
SVR_GRID = {"C": [1.0, 10.0, 100.0], "gamma_scale": [0.1, 1.0, 10.0], "epsilon": [0.05, 0.2]}
SVC_GRID = {"C": [1.0, 10.0, 100.0], "gamma_scale": [0.1, 1.0, 10.0]}

STUDY_DIR = ".study"
#: The baseline row: its method name and its "model" per task.
BASELINE_METHOD = "baseline"
BASELINE_MODELS = {"regression": "mean", "classification": "majority"}
BASELINE_LABELS = {"mean": "training mean", "majority": "training majority class"}
#: The metric the verdict compares (higher is better).
PRIMARY_METRIC = {"regression": "r2", "classification": "accuracy"}


class StudyWarning(UserWarning):
    """Something about the study's input the user should know (it still runs)."""


# ---------------------------------------------------------------------------------------
# specifications
# ---------------------------------------------------------------------------------------
@dataclass
class MethodSpec:
    """One encoder of the study.

    Attributes
    ----------
    name : registered encoder name (``matrep encoders``)
    params : encoder parameters (``--param NAME.KEY=VALUE``)
    model : path of a saved fitted model (``--model NAME=PATH``), or None
    label : the row's name in the report (default ``name``); controls use e.g.
        ``"texturevae (untrained head)"``
    role : ``"method"`` (named by the user) or ``"control"`` (added by the study)
    control_of : label of the method a control stands beside, or None
    fit_all : fit once on all the study's patches (without labels) instead of inside each
        split: a control's feature standardisation, set on the same patches the given model
        is applied to
    note : how a control was made (for the report)
    """

    name: str
    params: dict = field(default_factory=dict)
    model: str | None = None
    label: str | None = None
    role: str = "method"
    control_of: str | None = None
    fit_all: bool = False
    note: str = ""

    @property
    def key(self) -> str:
        """The row's name: ``label``, or the encoder name."""
        return self.label or self.name

    def describe(self) -> dict:
        d = {"name": self.name, "params": self.params, "model": self.model}
        if self.key != self.name:
            d["label"] = self.key
        if self.fit_all:
            d["fit_all"] = True
        return d


@dataclass
class Split:
    """One train/test split of the patches.

    ``kind`` is ``"random"`` or ``"grouped"``; ``held_out`` names the test groups of a
    grouped split; ``seed`` is the random split's seed.
    """

    id: str
    kind: str
    train: np.ndarray
    test: np.ndarray
    seed: int | None = None
    held_out: list = field(default_factory=list)

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(self.id.encode())
        h.update(np.asarray(self.train, np.int64).tobytes())
        h.update(b"|")
        h.update(np.asarray(self.test, np.int64).tobytes())
        return h.hexdigest()


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------
def random_splits(n: int, *, seeds=5, test_size: float = 0.2, stratify=None) -> list[Split]:
    """Random train/test splits over ``n`` patches, one per seed.

    Parameters
    ----------
    n : number of patches
    seeds : int (seeds 0..seeds-1) or sequence of int
    test_size : float in (0, 1), default 0.2 (the paper's 20 % held out)
    stratify : array of shape (n,), optional — class labels to stratify on

    >>> s = random_splits(10, seeds=2)
    >>> [(x.id, len(x.train), len(x.test)) for x in s]
    [('random-s0', 8, 2), ('random-s1', 8, 2)]
    """
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise BadInputError(None, f"test_size must lie in (0, 1), got {test_size}")
    seeds = list(range(seeds)) if isinstance(seeds, (int, np.integer)) else list(seeds)
    if n < 2:
        raise BadInputError(None, f"a random split needs at least 2 patches, got {n}")
    idx = np.arange(n)
    out = []
    for s in seeds:
        strat = stratify
        if strat is not None:
            _, counts = np.unique(strat, return_counts=True)
            if counts.min() < 2 or round(n * test_size) < len(counts):
                strat = None  # too few of a class to stratify: plain random split
        tr, te = train_test_split(idx, test_size=test_size, random_state=int(s), stratify=strat)
        out.append(Split(f"random-s{s}", "random", np.sort(tr), np.sort(te), seed=int(s)))
    return out


def group_splits(groups, *, folds: int | None = None, max_groups: int | None = None,
                 seed: int = 0) -> list[Split]:
    """Grouped splits: each test set is whole groups, never seen in training.

    Parameters
    ----------
    groups : array of shape (n,) — the group of each patch
    folds : int or None — ``None``: leave one group out (one split per group); ``K``:
        ``GroupKFold(K)`` (each group held out exactly once, K splits)
    max_groups : int or None — leave-one-group-out for only this many groups, chosen at
        random (``seed``); the others are always in training. Ignored with ``folds``.

    >>> s = group_splits(np.array(["a", "a", "b", "c", "c"]))
    >>> [(x.id, x.test.tolist(), x.held_out) for x in s]
    [('group-a', [0, 1], ['a']), ('group-b', [2], ['b']), ('group-c', [3, 4], ['c'])]
    """
    groups = np.asarray(groups).astype(str)
    uniq = sorted(set(groups.tolist()), key=natural_key)
    if len(uniq) < 2:
        raise LabelsError(f"a grouped split needs at least 2 groups, got {len(uniq)} "
                          f"({', '.join(uniq)}); use --split random or another --group column")
    idx = np.arange(len(groups))
    out = []
    if folds is not None:
        from sklearn.model_selection import GroupKFold

        if folds < 2 or folds > len(uniq):
            raise BadInputError(None, f"--folds must lie in 2..{len(uniq)} (the number of "
                                      f"groups), got {folds}")
        try:
            gkf = GroupKFold(n_splits=int(folds), shuffle=True, random_state=seed)
        except TypeError:  # scikit-learn < 1.6: no shuffling, balanced folds in a fixed order
            gkf = GroupKFold(n_splits=int(folds))
        for k, (tr, te) in enumerate(gkf.split(idx, groups=groups)):
            held = sorted(set(groups[te].tolist()))
            out.append(Split(f"fold-{k}", "grouped", np.sort(tr), np.sort(te), held_out=held))
        return out
    chosen = uniq
    if max_groups is not None and max_groups < len(uniq):
        if max_groups < 1:
            raise BadInputError(None, f"--max-groups must be >= 1, got {max_groups}")
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(uniq, size=int(max_groups), replace=False).tolist())
    for g in chosen:
        te = idx[groups == g]
        tr = idx[groups != g]
        out.append(Split(f"group-{_safe_id(g)}", "grouped", tr, te, held_out=[g]))
    return out


def natural_key(value) -> tuple:
    """Sort key putting "2" before "10" and numbers before text.

    >>> sorted(["10", "2", "b", "a1"], key=natural_key)
    ['2', '10', 'a1', 'b']
    """
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _safe_id(value: str) -> str:
    s = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(value))
    return s[:60] or "_"


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
def detect_task(values, task: str = "auto") -> str:
    """``"regression"`` for a numeric target, ``"classification"`` otherwise.

    >>> detect_task([1.0, 2.5]), detect_task(["ferrite", "pearlite"])
    ('regression', 'classification')
    """
    if task in ("regression", "classification"):
        return task
    if task != "auto":
        raise BadInputError(None, f"task must be auto, regression or classification, got {task!r}")
    import pandas as pd

    s = pd.Series(values).dropna()
    if pd.api.types.is_bool_dtype(s):
        return "classification"
    if pd.api.types.is_numeric_dtype(s):
        return "regression"
    return "regression" if pd.to_numeric(s, errors="coerce").notna().all() else "classification"


@dataclass
class StudyData:
    """Patches with their target and group, ready for the study.

    Attributes
    ----------
    patchset : matrep.io.PatchSet — only patches with a target value
    y : ndarray of shape (n,) — float64 (regression) or str (classification)
    groups : ndarray of shape (n,) str — the group of each patch
    target, group_column : names (group_column ``None`` means "micrograph")
    task : ``"regression"`` or ``"classification"``
    labels_path : the labels CSV
    notes : list of str — warnings given while preparing (also in the report)
    """

    patchset: object
    y: np.ndarray
    groups: np.ndarray
    target: str
    group_column: str | None
    task: str
    labels_path: str = ""
    notes: list = field(default_factory=list)

    @property
    def classes(self) -> list:
        return sorted(set(self.y.tolist())) if self.task == "classification" else []

    @property
    def mixed_groups(self) -> dict:
        """Groups whose micrographs carry different classes (see :func:`mixed_class_groups`);
        empty for regression and when each micrograph is its own group."""
        if self.task != "classification" or self.group_column is None:
            return {}
        return mixed_class_groups(self.y, self.groups, self.patchset.micrograph_ids)

    def digest(self) -> str:
        from .store import images_digest

        h = hashlib.sha256(images_digest(self.patchset).encode())
        h.update(self.target.encode())
        h.update(str(self.group_column).encode())
        h.update(self.task.encode())
        h.update(np.asarray(self.y).astype(str).tobytes())
        h.update(np.asarray(self.groups).astype(str).tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        ps = self.patchset
        files = ps.files
        d = {"images": len(files), "patches": int(len(ps)), **ps.settings(),
             "target": self.target, "task": self.task,
             "group": self.group_column or "micrograph",
             "groups": int(len(set(self.groups.tolist()))),
             "labels": self.labels_path,
             "image_folder": str(Path(files[0]).parent) if files else ""}
        if getattr(ps, "scale", None) is not None:  # matrep.scale: the scale distribution
            d["pixel_sizes"] = ps.scale.summary(files)
        if self.task == "regression":
            y = self.y.astype(float)
            per_img = {}
            for s, v in zip(ps.sources.tolist(), y):
                per_img[s] = v
            vals = np.array(list(per_img.values()))
            d.update({"target_min": float(y.min()), "target_max": float(y.max()),
                      "target_mean": float(y.mean()), "target_std": float(y.std()),
                      "target_distinct": int(len(np.unique(vals)))})
        else:
            u, c = np.unique(self.y, return_counts=True)
            d["class_counts"] = {str(k): int(v) for k, v in zip(u, c)}
        return d


def _warn(notes: list, msg: str, warn) -> None:
    notes.append(msg)
    if warn is not None:
        warn(msg)
    else:
        warnings.warn(msg, StudyWarning, stacklevel=3)


def _first(names, k=5) -> str:
    names = [Path(str(n)).name for n in names]
    return ", ".join(names[:k]) + (f" ... ({len(names)} in all)" if len(names) > k else "")


def prepare_data(images, labels, target: str, *, group: str | None = None,
                 file_column: str = "file", task: str = "auto", patch: int = 128,
                 stride: int = 50, crop=None, crop_bottom: int = 0, skip_bad: bool = False,
                 max_images: int | None = None, max_patches_per_image: int | None = None,
                 seed: int = 0, warn=None, progress=None, scale=None) -> StudyData:
    """Read the labelled micrographs, cut patches and attach target and group to each patch.

    Only images whose label row has a value in ``target`` are read (the others are named in
    a warning). Errors (:class:`~matrep.errors.LabelsError`) name the column or file: a
    target column that is missing, empty or constant; labels that match no image; a group
    column that is missing or has empty cells; fewer than two groups. A group with a single
    patch gives a warning (its "distribution" of predictions is one value).

    Parameters
    ----------
    images : folder, glob or list of them
    labels : path of the labels CSV (or a DataFrame from :func:`matrep.labels.read_labels`)
    target : the property column
    group : label column grouping micrographs (e.g. ``sample_key``); ``None``: each
        micrograph is its own group
    task : ``"auto"`` (numeric → regression, otherwise classification), ``"regression"``,
        ``"classification"``
    max_images : int or None — a seeded random subset of the labelled micrographs
    warn : callable(str) receiving warnings; default :func:`warnings.warn`
    """
    import pandas as pd

    from .io import list_images, load_patches
    from .labels import match_labels, read_labels, target_values

    notes: list[str] = []
    df = labels if hasattr(labels, "columns") else read_labels(labels, file_column=file_column)
    src = df.attrs.get("path", "labels")
    file_column = df.attrs.get("file_column", file_column)
    # checks on the label table itself, before reading any image
    if target not in df.columns:
        raise LabelsError(f"{src}: no target column {target!r} (columns are: "
                          f"{', '.join(map(str, df.columns))})")
    target_values(df, target, source=src, task=task)
    if group is not None and group not in df.columns:
        raise LabelsError(f"{src}: no group column {group!r} (columns are: "
                          f"{', '.join(map(str, df.columns))})")

    files = [str(f) for f in (list_images(list(images)) if isinstance(images, (list, tuple))
                              else list_images(images))]

    class _Files:  # what match_labels needs of a PatchSet
        sources = np.array(files)

    m = match_labels(_Files, df, file_column=file_column, warn=False)
    if m.unmatched_labels:
        _warn(notes, f"{src}: {len(m.unmatched_labels)} label row(s) in column "
                     f"{file_column!r} match no image: {_first(m.unmatched_labels)}", warn)
    if m.unlabelled_files:
        _warn(notes, f"{len(m.unlabelled_files)} image(s) have no row in {src} and are not "
                     f"used: {_first(m.unlabelled_files)}", warn)
    tab = m.table
    has_target = tab[target].notna().to_numpy()
    unlabelled = set(m.unlabelled_files)
    no_target = [f for f, ok in zip(files, has_target) if not ok and f not in unlabelled]
    if no_target:
        _warn(notes, f"{len(no_target)} labelled image(s) have no value in target column "
                     f"{target!r} and are not used: {_first(no_target)}", warn)
    if group is not None:
        has_group = tab[group].notna().to_numpy()
        no_group = [f for f, ok, g in zip(files, has_target, has_group) if ok and not g]
        if no_group:
            _warn(notes, f"{len(no_group)} image(s) have no value in group column {group!r} "
                         f"and are not used: {_first(no_group)}", warn)
        has_target = has_target & has_group
    keep = [f for f, ok in zip(files, has_target) if ok]
    if not keep:
        raise LabelsError(f"{src}: no image has a value in target column {target!r}")
    if max_images is not None and max_images < len(keep):
        rng = np.random.default_rng(seed)
        keep = sorted(rng.choice(keep, size=int(max_images), replace=False).tolist())
        notes.append(f"using a random subset of {max_images} labelled images (seed {seed})")

    if scale is not None and getattr(scale, "labels", "given") is None:  # pixel sizes from labels
        scale = scale.replace(labels=df, file_column=file_column)
    ps = load_patches(keep, patch=patch, stride=stride, crop=crop, crop_bottom=crop_bottom,
                      scale=scale,
                      skip_bad=skip_bad, max_patches_per_image=max_patches_per_image,
                      seed=seed, progress=progress)
    if ps.skipped:
        _warn(notes, f"{len(ps.skipped)} image(s) skipped: "
                     + "; ".join(f"{Path(s).name}: {p}" for s, p in ps.skipped[:5]), warn)
    pm = match_labels(ps, df, file_column=file_column, warn=False)
    col = pm.table[target]
    values = target_values(pm.table, target, source=src)
    task = detect_task(col, task)
    if task == "regression":
        y = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(y).any():
            bad = sorted(set(ps.sources[np.isnan(y)].tolist()))
            raise LabelsError(f"{src}: target column {target!r} has non-numeric values for "
                              f"{_first(bad)}; use --task classification for a categorical target")
        if np.unique(y).size < 2:
            raise LabelsError(f"{src}: target column {target!r} is constant over the used "
                              f"images ({float(y[0]):g}); nothing to learn")
    else:
        y = np.array([str(v) for v in values])
        if len(set(y.tolist())) < 2:
            raise LabelsError(f"{src}: target column {target!r} has a single class "
                              f"({str(y[0])!r}) over the used images; nothing to learn")
    if group is None:
        groups = ps.micrograph_ids.astype(str)
    else:
        gcol = pm.table[group]
        if gcol.isna().any():
            bad = sorted(set(ps.sources[gcol.isna().to_numpy()].tolist()))
            raise LabelsError(f"{src}: group column {group!r} is empty for {_first(bad)}; "
                              "fill it in or leave --group out (group by micrograph)")
        groups = np.array([_group_str(v) for v in gcol])
    u, c = np.unique(groups, return_counts=True)
    single = u[c == 1].tolist()
    if single:
        _warn(notes, f"group column {group or 'micrograph'!r}: {len(single)} group(s) with one "
                     f"member (a single patch): {_first(single)}; their held-out "
                     "prediction distribution is one value", warn)
    if len(u) < 2:
        raise LabelsError(f"{src}: group column {group or 'micrograph'!r} has a single group "
                          f"({str(u[0])!r}); a grouped split needs at least 2")
    if task == "classification" and group is not None:
        mixed = mixed_class_groups(y, groups, ps.micrograph_ids)
        if mixed:
            _warn(notes, f"group column {group!r}: {len(mixed)} group(s) hold micrographs of "
                         f"different classes of {target!r}: {describe_mixed(mixed)}; their "
                         "held-out vote is scored per micrograph, not against the group's "
                         "majority class", warn)
    if task == "regression" and np.any(y == 0):
        _warn(notes, f"target column {target!r} has zeros: MAPE is undefined for them "
                     "(reported as computed by scikit-learn, which divides by a tiny epsilon)",
              warn)
    return StudyData(ps, y, groups, target, group, task, str(src), notes)


def mixed_class_groups(y, groups, micrographs) -> dict:
    """Groups whose micrographs carry different classes.

    Parameters
    ----------
    y, groups, micrographs : arrays of shape (n,) — class, group and micrograph of each patch

    Returns
    -------
    dict group -> {class: sorted list of its micrographs}, only for groups with two or more
    classes, in natural group order.

    >>> mixed_class_groups(["a", "a", "b", "a"], ["s0", "s0", "s0", "s1"], ["m0", "m0", "m1", "m2"])
    {'s0': {'a': ['m0'], 'b': ['m1']}}
    """
    y = np.asarray(y).astype(str)
    groups = np.asarray(groups).astype(str)
    micrographs = np.asarray(micrographs).astype(str)
    out = {}
    for g in sorted(set(groups.tolist()), key=natural_key):
        m = groups == g
        if len(set(y[m].tolist())) < 2:
            continue
        per: dict = {}
        for c, mg in zip(y[m].tolist(), micrographs[m].tolist()):
            per.setdefault(c, set()).add(mg)
        out[g] = {c: sorted(v, key=natural_key) for c, v in sorted(per.items())}
    return out


def describe_mixed(mixed: dict, k: int = 5) -> str:
    """One line naming mixed-class groups and their micrographs per class."""
    parts = []
    for g, per in list(mixed.items())[:k]:
        parts.append(f"{g} (" + "; ".join(f"{c}: {_first(ms, 3)}" for c, ms in per.items()) + ")")
    more = f" ... ({len(mixed)} in all)" if len(mixed) > k else ""
    return ", ".join(parts) + more


def vote_units(groups, micrographs=None, mixed=None) -> np.ndarray:
    """The unit each held-out patch votes in: its group, or ``"group / micrograph"`` when
    its group is in ``mixed`` (a group whose micrographs carry different classes).

    >>> vote_units(["s0", "s0", "s1"], ["m0", "m1", "m2"], {"s0": {}}).tolist()
    ['s0 / m0', 's0 / m1', 's1']
    """
    groups = np.asarray(groups).astype(str)
    if not mixed or micrographs is None:
        return groups
    micrographs = np.asarray(micrographs).astype(str)
    return np.array([f"{g} / {m}" if g in mixed else g
                     for g, m in zip(groups.tolist(), micrographs.tolist())])


def _group_str(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


# ---------------------------------------------------------------------------------------
# regressors / classifiers
# ---------------------------------------------------------------------------------------
def parse_model_spec(spec: str) -> tuple[str, dict]:
    """``"svr"`` or ``"sklearn.ensemble.RandomForestRegressor:n_estimators=200,max_depth=8"``.

    >>> parse_model_spec("sklearn.linear_model.Ridge:alpha=0.5")
    ('sklearn.linear_model.Ridge', {'alpha': 0.5})
    """
    name, _, rest = str(spec).partition(":")
    name = _ALIASES.get(name.strip().lower(), name.strip()) if "." not in name else name.strip()
    params = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        if "=" not in part:
            raise BadInputError(None, f"regressor parameter must be KEY=VALUE, got {part!r} "
                                      f"in {spec!r}")
        k, v = part.split("=", 1)
        try:
            params[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            params[k.strip()] = v
    if "." not in name and name not in BUILTIN_MODELS:
        raise BadInputError(None, f"unknown regressor {spec!r}: use one of "
                                  f"{', '.join(BUILTIN_MODELS)} or a dotted scikit-learn class "
                                  "path such as sklearn.ensemble.RandomForestRegressor")
    return name, params


def model_label(spec: str) -> str:
    """Short name of a model spec for tables: ``linear``, ``svr``, ``RandomForestRegressor``
    (the baseline's ``mean`` and ``majority``: what it predicts)."""
    if spec in BASELINE_LABELS:
        return BASELINE_LABELS[spec]
    name, params = parse_model_spec(spec)
    base = name.rsplit(".", 1)[-1]
    return base + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")


def import_estimator(path: str):
    """The class named by a dotted path, checked to be a scikit-learn style estimator."""
    mod, _, cls = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(mod), cls)
    except (ImportError, AttributeError, ValueError) as exc:
        raise BadInputError(None, f"cannot import regressor {path!r} ({type(exc).__name__}: "
                                  f"{exc}); name a class such as "
                                  "sklearn.ensemble.RandomForestRegressor") from None
    if not isinstance(obj, type) or not all(callable(getattr(obj, m, None))
                                            for m in ("fit", "predict", "get_params")):
        raise BadInputError(None, f"{path!r} is not a scikit-learn estimator class (needs fit, "
                                  "predict and get_params)")
    return obj


def make_model(spec: str, task: str, *, n_features: int, cv=None, seed: int = 0,
               n_jobs: int = 1):
    """An unfitted scikit-learn model for ``spec`` (see :data:`BUILTIN_MODELS`).

    Every model standardises its inputs inside a Pipeline, so the scaler is fitted on the
    training rows only; hyperparameter searches use ``cv`` (inner cross-validation on the
    training rows, with groups passed to ``fit``).
    """
    from sklearn.base import is_classifier, is_regressor
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, SVR

    name, params = parse_model_spec(spec)
    nf = max(int(n_features), 1)
    if name == "linear":
        if task == "regression":
            return Pipeline([("scale", StandardScaler()), ("model", LinearRegression(**params))])
        kw = {"max_iter": 5000, **params}
        return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(**kw))])
    if name == "svr":
        if task == "regression":
            pipe = TransformedTargetRegressor(
                regressor=Pipeline([("scale", StandardScaler()), ("model", SVR(kernel="rbf"))]),
                transformer=StandardScaler())
            grid = {"regressor__model__C": SVR_GRID["C"],
                    "regressor__model__gamma": [g / nf for g in SVR_GRID["gamma_scale"]],
                    "regressor__model__epsilon": SVR_GRID["epsilon"]}
            scoring = "neg_mean_squared_error"
        else:
            pipe = Pipeline([("scale", StandardScaler()), ("model", SVC(kernel="rbf"))])
            grid = {"model__C": SVC_GRID["C"],
                    "model__gamma": [g / nf for g in SVC_GRID["gamma_scale"]]}
            scoring = "accuracy"
        grid = {k: v for k, v in grid.items() if k.rsplit("__", 1)[-1] not in params}
        for k, v in params.items():
            pipe.set_params(**{("regressor__model__" if task == "regression" else "model__") + k: v})
        return GridSearchCV(pipe, grid, cv=cv, scoring=scoring, n_jobs=n_jobs, refit=True,
                            error_score="raise")
    cls = import_estimator(name)
    est = cls(**params)
    if "random_state" in est.get_params() and "random_state" not in params:
        est.set_params(random_state=seed)
    if task == "regression" and is_classifier(est):
        raise BadInputError(None, f"{name} is a classifier, but the target is numeric "
                                  "(regression); name a regressor or pass --task classification")
    if task == "classification" and is_regressor(est):
        raise BadInputError(None, f"{name} is a regressor, but the target is categorical "
                                  "(classification); name a classifier, e.g. "
                                  "sklearn.ensemble.RandomForestClassifier")
    return Pipeline([("scale", StandardScaler()), ("model", est)])


def inner_cv(split: Split, groups_train, task: str, y_train, *, folds: int = 3, seed: int = 0):
    """The inner cross-validation of a split, as a list of (train, test) index pairs, and a note.

    Grouped splits: ``GroupKFold`` over the training groups (``StratifiedGroupKFold`` for
    classes), so hyperparameters are chosen for unseen groups too; with fewer than 2
    training groups, ``KFold`` over patches. Random splits: ``KFold`` (``StratifiedKFold``
    for classes) over the training patches. For classes, inner folds whose training part
    holds a single class are dropped (a classifier cannot be fitted on them); if fewer than
    two folds remain, stratified folds over patches are used instead.
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    y_train = np.asarray(y_train)
    groups_train = np.asarray(groups_train)
    n = len(y_train)
    dummy = np.zeros(n)
    n_groups = len(set(groups_train.tolist()))
    pairs, note = None, ""
    if split.kind == "grouped" and n_groups >= 2:
        k = min(folds, n_groups)
        if task == "classification":
            cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            note = f"StratifiedGroupKFold({k}) on training groups"
        else:
            cv = GroupKFold(n_splits=k)
            note = f"GroupKFold({k}) on training groups"
        pairs = list(cv.split(dummy, y_train, groups_train))
        if task == "classification":
            pairs = [(a, b) for a, b in pairs if len(set(y_train[a].tolist())) >= 2]
            if len(pairs) < 2:
                pairs = None
    if pairs is None:
        k = max(2, min(folds, n))
        cv = KFold(k, shuffle=True, random_state=seed)
        note = f"KFold({k}) on training patches"
        if task == "classification":
            _, counts = np.unique(y_train, return_counts=True)
            kk = min(k, int(counts.max()))
            if counts.min() >= kk >= 2:
                cv, note = StratifiedKFold(kk, shuffle=True, random_state=seed), \
                    f"StratifiedKFold({kk}) on training patches"
        if split.kind == "grouped":
            note += " (too few training groups for grouped folds)"
        pairs = list(cv.split(dummy, y_train))
        if task == "classification":
            pairs = [(a, b) for a, b in pairs if len(set(y_train[a].tolist())) >= 2]
    return pairs, note


def fit_predict(spec: str, task: str, X_train, y_train, X_test, *, cv=None, seed: int = 0,
                n_jobs: int = 1):
    """Fit the model ``spec`` on the training rows and predict the test rows.

    Returns
    -------
    pred : ndarray of shape (n_test,)
    info : dict — ``best_params`` (hyperparameters picked by the inner CV, if any)
    """
    from sklearn.model_selection import GridSearchCV

    if task == "classification" and len(set(np.asarray(y_train).tolist())) < 2:
        only = np.asarray(y_train)[0]
        return np.full(len(X_test), only), {
            "note": f"the training part holds one class ({only!r}); it is predicted for all"}
    model = make_model(spec, task, n_features=X_train.shape[1], cv=cv, seed=seed, n_jobs=n_jobs)
    kw = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        warnings.filterwarnings("ignore", message=".*(converge|least populated).*")
        model.fit(X_train, y_train, **kw)
        pred = model.predict(X_test)
    info = {}
    if isinstance(model, GridSearchCV):
        info["best_params"] = {k.rsplit("__", 1)[-1]: _plain(v)
                               for k, v in model.best_params_.items()}
    return np.asarray(pred), info


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def baseline_predict(task: str, y_train, n_test: int) -> np.ndarray:
    """The baseline's prediction for ``n_test`` rows, from the training targets only.

    Regression: the mean of ``y_train`` (scikit-learn's ``DummyRegressor(strategy="mean")``).
    Classification: the most frequent class of ``y_train``, ties to the first in sorted order
    (``DummyClassifier(strategy="most_frequent")``).

    >>> baseline_predict("regression", [1.0, 2.0, 6.0], 2).tolist()
    [3.0, 3.0]
    >>> baseline_predict("classification", ["b", "a", "b", "a"], 1).tolist()
    ['a']
    """
    y_train = np.asarray(y_train)
    if len(y_train) == 0:
        raise BadInputError(None, "the baseline needs at least one training row, got none")
    if task == "regression":
        return np.full(int(n_test), float(np.mean(y_train.astype(float))))
    vals, counts = np.unique(y_train.astype(str), return_counts=True)
    return np.full(int(n_test), vals[counts.argmax()], dtype=object).astype(str)


# ---------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------
def regression_metrics(y_true, y_pred) -> dict:
    """R², MAPE (%) and MAE.

    >>> regression_metrics([1.0, 2.0, 4.0], [1.0, 2.0, 3.0])["mae"]
    0.3333333333333333
    """
    from sklearn.metrics import (mean_absolute_error, mean_absolute_percentage_error,
                                 r2_score)

    y_true = np.asarray(y_true, float)
    y_pred = np.asarray(y_pred, float)
    r2 = float(r2_score(y_true, y_pred)) if len(y_true) > 1 and np.ptp(y_true) > 0 else float("nan")
    return {"r2": r2, "mape": float(100 * mean_absolute_percentage_error(y_true, y_pred)),
            "mae": float(mean_absolute_error(y_true, y_pred)), "n": int(len(y_true))}


def classification_metrics(y_true, y_pred) -> dict:
    """Accuracy and macro-averaged F1 (over the classes present in truth or prediction)."""
    from sklearn.metrics import accuracy_score, f1_score

    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "n": int(len(y_true))}


def metrics(task: str, y_true, y_pred) -> dict:
    return (regression_metrics if task == "regression" else classification_metrics)(y_true, y_pred)


METRIC_NAMES = {"regression": ("r2", "mape", "mae"), "classification": ("accuracy", "f1_macro")}


def group_summary(task: str, y_true, y_pred, groups) -> list[dict]:
    """Per held-out group: the distribution of its patch predictions against the true value."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    groups = np.asarray(groups).astype(str)
    out = []
    for g in sorted(set(groups.tolist()), key=natural_key):
        m = groups == g
        t, p = y_true[m], y_pred[m]
        if task == "regression":
            t = t.astype(float)
            p = p.astype(float)
            true = float(np.mean(t))
            mean = float(p.mean())
            out.append({"group": g, "n": int(m.sum()), "true": true, "pred_mean": mean,
                        "pred_median": float(np.median(p)), "pred_std": float(p.std()),
                        "pred_p05": float(np.percentile(p, 5)),
                        "pred_p95": float(np.percentile(p, 95)),
                        "mape": float(100 * np.mean(np.abs(p - t) / np.maximum(np.abs(t), 1e-12))),
                        "mean_ape": float(100 * abs(mean - true) / max(abs(true), 1e-12))})
        else:
            vals, counts = np.unique(t, return_counts=True)
            true = str(vals[counts.argmax()])
            pv, pc = np.unique(p, return_counts=True)
            out.append({"group": g, "n": int(m.sum()), "true": true,
                        "accuracy": float(np.mean(p == t)),
                        "majority": str(pv[pc.argmax()]),
                        "pred_counts": {str(k): int(c) for k, c in zip(pv, pc)}})
    return out


def pooled_records(records: list[dict], micrographs=None, mixed=None):
    """True values, predictions and vote units of records pooled (grouped splits).

    Parameters
    ----------
    records : study records (each with ``true``, ``pred``, ``groups``, ``test``)
    micrographs : array of shape (n_patches,), the micrograph of every patch of the study
    mixed : dict of mixed-class groups (:func:`mixed_class_groups`); their patches vote per
        micrograph (:func:`vote_units`)

    Returns
    -------
    y_true, y_pred, units : arrays of shape (n_pooled,)
    """
    yt = np.concatenate([np.asarray(r["true"]) for r in records])
    yp = np.concatenate([np.asarray(r["pred"]) for r in records])
    gr = np.concatenate([np.asarray(r["groups"]) for r in records]).astype(str)
    mg = None
    if mixed and micrographs is not None:
        te = np.concatenate([np.asarray(r["test"], dtype=np.int64) for r in records])
        mg = np.asarray(micrographs)[te]
    return yt, yp, vote_units(gr, mg, mixed)


def aggregate(task: str, records: list[dict], *, micrographs=None, mixed=None) -> list[dict]:
    """Summary rows per (method, regressor, split kind).

    Random splits: mean and standard deviation over seeds of each metric. Grouped splits:
    metrics of all held-out patches pooled (each patch predicted by the model that did not
    see its group), plus the MAPE of each group's mean prediction (regression) or the
    accuracy of the per-group majority vote (classification). A group in ``mixed`` (its
    micrographs carry different classes) votes per micrograph: each of its micrographs'
    majority prediction against that micrograph's class (pass ``micrographs``, the
    micrograph of every patch, with it).
    """
    names = METRIC_NAMES[task]
    mixed = mixed if task == "classification" else None
    rows = []
    keys = list(dict.fromkeys((r["method"], r["regressor"], r["kind"]) for r in records))
    for method, reg, kind in keys:
        rs = [r for r in records if (r["method"], r["regressor"], r["kind"]) == (method, reg, kind)]
        row = {"method": method, "regressor": reg, "kind": kind, "splits": len(rs),
               "n_test": int(sum(len(r["pred"]) for r in rs))}
        if kind == "random":
            for k in names:
                v = np.array([r["metrics"][k] for r in rs], float)
                row[k] = float(np.mean(v))
                row[k + "_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        else:
            yt, yp, units = pooled_records(rs, micrographs, mixed)
            m = metrics(task, yt, yp)
            row.update({k: m[k] for k in names})
            gs = group_summary(task, yt, yp, units)
            if task == "regression":
                row["group_mean_mape"] = float(np.mean([g["mean_ape"] for g in gs]))
            else:
                row["group_vote_accuracy"] = float(np.mean([g["majority"] == g["true"] for g in gs]))
                if mixed:
                    gr = np.concatenate([np.asarray(r["groups"]) for r in rs]).astype(str)
                    of = dict(zip(units.tolist(), gr.tolist()))
                    for g in gs:
                        if of.get(g["group"], g["group"]) != g["group"]:
                            g["mixed_group"] = of[g["group"]]
                    row["mixed_groups"] = [g for g in mixed if g in set(gr.tolist())]
            row["groups"] = gs
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------
@dataclass
class StudyResult:
    """What :meth:`Study.run` returns (and :mod:`matrep.report` writes).

    ``records`` and ``summary`` hold the baseline's rows too (method ``"baseline"``);
    ``summary`` rows carry a ``role`` (``"method"``, ``"control"`` or ``"baseline"``), and
    ``verdict`` is :func:`verdict` of the result (None without a controlled method).
    """

    data: StudyData
    methods: dict          # label -> {"spec", "provenance", "fitting", "role", ...}
    regressors: list
    splits: list
    records: list          # one dict per (method, split, regressor), then the baseline's
    settings: dict
    out: Path
    summary: list = field(default_factory=list)
    baseline: dict = field(default_factory=dict)
    verdict: dict | None = None

    def __post_init__(self):
        if not self.summary:
            self.summary = aggregate(self.data.task, self.records,
                                     micrographs=self.data.patchset.micrograph_ids,
                                     mixed=self.data.mixed_groups)
        for row in self.summary:
            row.setdefault("role", "baseline" if row["method"] == BASELINE_METHOD else
                           self.methods.get(row["method"], {}).get("role", "method"))
        if self.verdict is None:
            self.verdict = verdict(self)


def _summary_row(result, method: str, reg: str, kind: str):
    return next((r for r in result.summary if r["method"] == method and r["regressor"] == reg
                 and r["kind"] == kind), None)


def verdict(result) -> dict | None:
    """Does each method with controls beat its controls and the baseline?

    For every method that has controls (a texture-VAE given with ``--model``), split kind
    (unseen group first, then random) and regressor, the primary metric (R² for regression,
    accuracy for classification; higher is better) of the method is compared with each
    control's and the baseline's, with the same regressor and the same splits. On random
    splits a margin smaller than the larger standard deviation over seeds is flagged.

    Returns
    -------
    None when no method has controls; otherwise a dict with ``text`` (the sentences of the
    report), ``metric`` and ``comparisons`` (one dict per method, kind and regressor:
    ``values`` per row, ``beats`` per competitor, ``beats_all``, and for random splits
    ``within_std``).
    """
    task = result.data.task
    metric = PRIMARY_METRIC[task]
    head = {"r2": "R²", "accuracy": "accuracy"}[metric]
    base_model = BASELINE_MODELS[task]
    group = result.data.group_column or "micrograph"
    controlled = [k for k, m in result.methods.items() if m.get("role", "method") == "method"
                  and any(c.get("control_of") == k for c in result.methods.values())]
    if not controlled:
        return None
    comparisons, sentences = [], []
    for name in controlled:
        controls = [k for k, m in result.methods.items() if m.get("control_of") == name]
        for kind in ("grouped", "random"):
            unseen = ("unseen micrographs" if result.data.group_column is None
                      else f"unseen {group} groups")
            where = (f"{unseen} (held-out patches pooled)" if kind == "grouped"
                     else "random 80/20 splits (mean over seeds)")
            parts, wins = [], []  # wins: (regressor, beats all)
            for reg in result.regressors:
                own = _summary_row(result, name, reg, kind)
                if own is None:
                    continue
                others = {c: _summary_row(result, c, reg, kind) for c in controls}
                others[BASELINE_METHOD] = _summary_row(result, BASELINE_METHOD, base_model, kind)
                others = {k: v for k, v in others.items() if v is not None}
                mine = own[metric]
                vals = {k: v[metric] for k, v in others.items()}
                beats = {k: bool(np.isfinite(mine) and (not np.isfinite(v) or mine > v))
                         for k, v in vals.items()}
                comp = {"method": name, "kind": kind, "regressor": reg, "metric": metric,
                        "values": {name: mine, **vals}, "beats": beats,
                        "beats_all": all(beats.values())}
                if kind == "random":
                    comp["within_std"] = sorted(
                        k for k, v in others.items() if beats[k] and mine - v[metric]
                        < max(own.get(metric + "_std", 0.0), v.get(metric + "_std", 0.0)))
                comparisons.append(comp)
                wins.append((reg, comp["beats_all"]))
                nums = f"{name} {_num(mine)} vs " + ", ".join(f"{k} {_num(v)}"
                                                               for k, v in vals.items())
                notes = []
                if not comp["beats_all"]:
                    lost = [k for k, b in beats.items() if not b]
                    notes.append(" and ".join(lost) + " as good or better")
                if comp.get("within_std"):
                    notes.append("margin over " + " and ".join(comp["within_std"])
                                 + " within one standard deviation over seeds")
                parts.append(f"With {model_label(reg)}: {nums}"
                             + (f" ({'; '.join(notes)})" if notes else "") + ".")
            if not parts:
                continue
            n_ctrl = {0: "the baseline", 1: "its control and the baseline"}.get(
                len(controls), "both controls and the baseline" if len(controls) == 2
                else "its controls and the baseline")
            won = [model_label(r) for r, w in wins if w]
            lost = [model_label(r) for r, w in wins if not w]
            how = (f"beats {n_ctrl} with every model" if not lost else
                   f"does not beat {n_ctrl} with any model" if not won else
                   f"beats {n_ctrl} with {' and '.join(won)} but not with {' and '.join(lost)}")
            sentences.append(f"On {where}, the trained {name} {how} ({head}). " + " ".join(parts))
    return {"metric": metric, "text": " ".join(sentences), "comparisons": comparisons}


def _num(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


# ---------------------------------------------------------------------------------------
# controls
# ---------------------------------------------------------------------------------------
def texturevae_controls(spec: MethodSpec, encoder) -> tuple[list[MethodSpec], list[str]]:
    """The two controls of a trained texture-VAE given as a fitted model.

    * ``"<label> (untrained head)"``: the model's own configuration (``get_params``, so the
      same seed) with ``epochs=0``, fitted once on all the study's patches. Fitting sets the
      feature standardisation from those patches and builds the head from the seed, exactly
      as training starts, and takes no gradient step: the trained model's starting point
      when it was trained on these patches.
    * ``"vgg19 (style mean/std)"``: the ``vgg19`` encoder on the texture-VAE's encoder taps
      with its pooling (per-channel mean and standard deviation by default) and its weights:
      the very statistics the head maps to the latent code.

    Parameters
    ----------
    spec : the texture-VAE's MethodSpec (with ``model``)
    encoder : the loaded model (``matrep.load_model``)

    Returns
    -------
    controls : list of MethodSpec
    notes : list of str — controls that could not be made, and why
    """
    p = dict(encoder.get_params(deep=False))
    seed = p.get("seed", "?")
    out, notes = [], []
    out.append(MethodSpec(
        spec.name, {**p, "epochs": 0}, label=f"{spec.key} (untrained head)", role="control",
        control_of=spec.key, fit_all=True,
        note=(f"control for {spec.key}: its configuration (seed {seed}) with epochs=0, fitted "
              "once on all the study's patches (no labels): the feature standardisation is set "
              "from them and the head keeps its seeded initialisation; no gradient step")))
    pooling = {"meanstd": "meanstd", "mean": "mean"}.get(p.get("pooling", "meanstd"))
    taps = list(p.get("encoder_taps") or ())
    if pooling is None or not taps:
        notes.append(f"no vgg19 control for {spec.key}: its pooling {p.get('pooling')!r} / "
                     f"taps {taps} have no vgg19 equivalent")
        return out, notes
    where = "style" if tuple(taps) == ("conv1_1", "pool1", "pool2", "pool3", "pool4") \
        else "+".join(taps)
    what = "mean/std" if pooling == "meanstd" else "mean"
    params = {"layer": taps, "pooling": pooling, "weights": p.get("weights", "auto")}
    ds = int(p.get("downsample", 1) or 1)
    if ds > 1:  # the model reads its patches at 1/ds resolution: so does its control
        params["downsample"] = ds
    out.append(MethodSpec(
        "vgg19", params, label=f"vgg19 ({where} {what})", role="control", control_of=spec.key,
        note=(f"control for {spec.key}: frozen VGG19 per-channel {what} of its encoder taps "
              f"({', '.join(taps)}), the statistics its head maps to the latent code, with "
              "the same weights" + (f", patches downsampled {ds}x like the model's" if ds > 1
                                    else ""))))
    return out, notes


#: Controls added beside a method given as a fitted model, by registered encoder name.
CONTROLS = {"texturevae": texturevae_controls}


class Study:
    """Run encoders x regressors x splits on one :class:`StudyData`, resumably.

    Parameters
    ----------
    data : StudyData
    methods : list of MethodSpec
    out : report folder (caches go in it: ``features.h5``, ``features/``, ``.study/``)
    regressors : model specs (:func:`make_model`), default ``("linear", "svr")``
    split : ``"both"``, ``"random"`` or ``"grouped"``
    seeds : int — random splits with seeds 0..seeds-1
    test_size : float — random splits' held-out fraction
    folds, max_groups : see :func:`group_splits`
    inner_folds : int — folds of the inner CV for hyperparameters
    resume : bool — reuse finished results; ``False`` discards them first
    n_jobs : int — parallel jobs of the inner grid search
    controls : bool — add the controls of methods given as fitted models (:data:`CONTROLS`,
        e.g. :func:`texturevae_controls`); the baseline row is always computed
    log : callable(str); progress : callable(total=, desc=) → bar, optional
    """

    def __init__(self, data: StudyData, methods, out, *, regressors=("linear", "svr"),
                 split: str = "both", seeds: int = 5, test_size: float = 0.2,
                 folds: int | None = None, max_groups: int | None = None, inner_folds: int = 3,
                 resume: bool = True, n_jobs: int = 1, chunk: int = 256,
                 controls: bool = True, log=None, progress=None):
        if split not in ("both", "random", "grouped"):
            raise BadInputError(None, f"split must be both, random or grouped, got {split!r}")
        if not methods:
            raise BadInputError(None, "name at least one encoder (see `matrep encoders`)")
        labels = [m.key for m in methods]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise BadInputError(None, f"encoder(s) named twice: {', '.join(dup)}")
        if BASELINE_METHOD in labels:
            raise BadInputError(None, f"{BASELINE_METHOD!r} names the study's own baseline row; "
                                      "register the encoder under another name")
        for r in regressors:
            parse_model_spec(r)
        if inner_folds < 2:
            raise BadInputError(None, f"inner_folds must be >= 2, got {inner_folds}")
        self.data = data
        self.methods = list(methods)
        self.out = Path(out)
        self.regressors = list(dict.fromkeys(regressors))
        self.split = split
        self.seeds = seeds
        self.test_size = test_size
        self.folds = folds
        self.max_groups = max_groups
        self.inner_folds = inner_folds
        self.resume = resume
        self.n_jobs = n_jobs
        self.chunk = chunk
        self.log = log or (lambda msg: None)
        self.progress = progress
        self._prov_cache: dict = {}
        self.control_notes: list[str] = []
        if controls:
            self.methods += self._controls()

    # -- splits ---------------------------------------------------------------------------
    def make_splits(self) -> list[Split]:
        d = self.data
        out = []
        if self.split in ("both", "random"):
            out += random_splits(len(d.y), seeds=self.seeds, test_size=self.test_size,
                                 stratify=d.y if d.task == "classification" else None)
        if self.split in ("both", "grouped"):
            out += group_splits(d.groups, folds=self.folds, max_groups=self.max_groups)
        return out

    def settings(self) -> dict:
        return {"split": self.split, "seeds": self.seeds, "test_size": self.test_size,
                "folds": self.folds, "max_groups": self.max_groups,
                "inner_folds": self.inner_folds, "regressors": self.regressors,
                "svr_grid": SVR_GRID if self.data.task == "regression" else SVC_GRID}

    # -- paths ----------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.out / STUDY_DIR

    def _result_path(self, digest: str) -> Path:
        return self.state_dir / "results" / f"{digest[:32]}.json"

    # -- encoders -------------------------------------------------------------------------
    def _controls(self) -> list[MethodSpec]:
        """Control specs for the methods given as fitted models (see :data:`CONTROLS`)."""
        from . import registry

        out = []
        have = {m.key for m in self.methods}
        for spec in list(self.methods):
            make = CONTROLS.get(spec.name)
            if not spec.model or make is None:
                continue
            specs, notes = make(spec, self._new_encoder(spec))
            self.control_notes += notes
            for c in specs:
                if c.key in have:
                    continue
                try:
                    registry.encoder_class(c.name)
                except MatrepError as exc:
                    self.control_notes.append(f"control {c.key!r} not computed: {exc}")
                    continue
                have.add(c.key)
                out.append(c)
        return out

    def _new_encoder(self, spec: MethodSpec):
        from . import registry

        if spec.model:
            enc = registry.load_model(spec.model)
            if enc.name != spec.name:
                raise BadInputError(spec.model, f"holds a {enc.name!r} model, but it was given "
                                                f"for {spec.name!r}")
            if spec.params:
                enc.set_params(**spec.params)
            return enc
        return registry.get_encoder(spec.name, **spec.params)

    def _per_split(self, spec: MethodSpec) -> bool:
        from . import registry

        return bool(getattr(registry.encoder_class(spec.name), "trainable", False)) \
            and not spec.model and not spec.fit_all

    def _spec_provenance(self, spec: MethodSpec) -> dict:
        if spec.key not in self._prov_cache:
            self._prov_cache[spec.key] = self._compute_provenance(spec)
        return self._prov_cache[spec.key]

    def _compute_provenance(self, spec: MethodSpec) -> dict:
        enc = self._new_encoder(spec)
        try:
            prov = enc.provenance()
        except Exception as exc:  # noqa: BLE001 - an unfitted encoder may not know everything
            prov = {"encoder": spec.name, "params": enc.get_params(deep=False),
                    "provenance_error": f"{type(exc).__name__}: {exc}"}
        if spec.model:
            from .store import state_digest

            # a model retrained in the same folder must not reuse the old results
            prov["model"] = str(spec.model)
            prov["model_state_sha256"] = state_digest(enc)
        return prov

    def _shared_features(self, spec: MethodSpec):
        """Features of all patches from an encoder that learns nothing from the study."""
        from .pipeline import encode_patchset

        enc = self._new_encoder(spec)
        res = encode_patchset(enc, self.data.patchset, self.out / "features.h5", chunk=self.chunk,
                              resume=self.resume, progress=self.progress,
                              log=self.log)
        from .store import FeatureStore

        X, attrs = FeatureStore(self.out / "features.h5").read(res.key)
        self.log(f"{spec.key}: {'reused' if res.reused else 'computed'} features "
                 f"{X.shape[0]} x {X.shape[1]} (features.h5:{res.key})")
        return X, {"store": "features.h5", "key": res.key,
                   "provenance": attrs.get("provenance", {}), "reused": res.reused}

    def _split_features(self, spec: MethodSpec, split: Split):
        """Features of all patches from an encoder fitted on this split's training patches."""
        from .pipeline import encode_patchset
        from .store import FeatureStore

        ps = self.data.patchset
        folder = self.out / "features" / _safe_id(spec.key)
        store = folder / f"{split.id}.h5"
        side = folder / f"{split.id}.json"
        fit_digest = _sha({"spec": spec.describe(), "prov": self._spec_provenance(spec),
                           "data": self.data.digest(), "split": split.digest()})
        if self.resume and side.exists() and store.exists():
            try:
                meta = json.loads(side.read_text())
                if meta.get("fit_digest") == fit_digest:
                    X, attrs = FeatureStore(store).read(meta["key"])
                    return X, {"store": str(store.relative_to(self.out)), "key": meta["key"],
                               "reused": True, "provenance": attrs.get("provenance", {})}
            except (OSError, json.JSONDecodeError, KeyError, MatrepError):
                pass
        enc = self._new_encoder(spec)
        train = ps.subset(split.train)
        kw = {}
        sig = inspect.signature(enc.fit).parameters
        if "micrograph_ids" in sig:
            kw["micrograph_ids"] = train.micrograph_ids
        if "coords" in sig:
            kw["coords"] = train.coords
        if "run_dir" in sig:
            kw["run_dir"] = self.state_dir / "fit" / _safe_id(spec.key) / split.id
            if "resume" in sig:
                # continue an interrupted fit; a fresh folder has no checkpoint to resume
                # (the run-folder layout of `matrep fit`)
                kw["resume"] = (kw["run_dir"] / "checkpoint").is_dir()
        self.log(f"{spec.key}: fitting on the {len(train)} training patches of {split.id}"
                 if split.kind != "all" else
                 f"{spec.key}: fitting once on all {len(train)} patches (no labels)")
        t0 = time.perf_counter()
        enc.fit(train.patches, **kw)
        fit_s = time.perf_counter() - t0
        res = encode_patchset(enc, ps, store, chunk=self.chunk, resume=self.resume,
                              progress=self.progress, log=self.log)
        X, attrs = FeatureStore(store).read(res.key)
        atomic_write_text(side, json.dumps({"fit_digest": fit_digest, "key": res.key,
                                            "fit_seconds": fit_s, "split": split.id}))
        return X, {"store": str(store.relative_to(self.out)), "key": res.key, "reused": False,
                   "provenance": attrs.get("provenance", {}), "fit_seconds": fit_s}

    # -- running --------------------------------------------------------------------------
    def run(self) -> StudyResult:
        """Run every (method, split, regressor) not already finished; return all results."""
        d = self.data
        if not self.resume and self.state_dir.exists():
            shutil.rmtree(self.state_dir)
            shutil.rmtree(self.out / "features", ignore_errors=True)
        self.out.mkdir(parents=True, exist_ok=True)
        splits = self.make_splits()
        data_digest = d.digest()
        records = []
        methods = {}
        total = len(self.methods) * len(splits) * len(self.regressors)
        bar = self.progress(total=total, desc="study") if self.progress else None
        done_new = done_old = 0
        for spec in self.methods:
            per_split = self._per_split(spec)
            prov = self._spec_provenance(spec)
            shared = None
            if spec.fit_all:
                shared = self._split_features(spec, self._all_split())
            elif not per_split:
                # computed (or found by digest) first: the results' keys then depend on the
                # features actually used (weights, fitted state), not only on the parameters
                shared = self._shared_features(spec)
            spec_digest = _sha({"spec": spec.describe(), "prov": prov, "per_split": per_split,
                                "features": shared[1]["key"] if shared else None})
            methods[spec.key] = {"spec": spec.describe(), "provenance": prov,
                                 "fitting": ("fitted inside each split on its training patches"
                                             if per_split else
                                             "fitted once on all the study's patches, without "
                                             "labels" if spec.fit_all else
                                             "given fitted model (trained outside the study)"
                                             if spec.model else "not trainable (nothing fitted)"),
                                 "role": spec.role, "features": []}
            if spec.role == "control":
                methods[spec.key].update(control_of=spec.control_of, note=spec.note)
            if shared is not None:
                methods[spec.key]["features"].append(shared[1])
            for split in splits:
                todo, have = [], {}
                for reg in self.regressors:
                    key = _sha({"data": data_digest, "method": spec_digest, "split": split.digest(),
                                "regressor": reg, "inner_folds": self.inner_folds,
                                "grid": self.settings()["svr_grid"]})
                    path = self._result_path(key)
                    rec = _load_record(path, key) if self.resume else None
                    if rec is not None:
                        have[reg] = rec
                    else:
                        todo.append((reg, key, path))
                if todo:
                    if per_split:
                        X, finfo = self._split_features(spec, split)
                        methods[spec.key]["features"].append({"split": split.id, **finfo})
                    else:
                        X, finfo = shared
                    if not np.isfinite(X).all():
                        raise MatrepError(f"encoder {spec.key!r} produced NaN or inf features "
                                          f"({finfo['store']}:{finfo['key']})")
                for reg in self.regressors:
                    if reg in have:
                        rec = have[reg]
                        done_old += 1
                    else:
                        _, key, path = next(t for t in todo if t[0] == reg)
                        rec = self._run_one(spec, split, reg, X, key)
                        atomic_write_text(path, json.dumps(rec))
                        done_new += 1
                    records.append(rec)
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        if done_old:
            self.log(f"resumed: {done_old} of {total} results were already computed")
        for spec in self.methods:
            if not methods[spec.key]["features"]:
                methods[spec.key]["features"] = [{"reused": True, "note": "all results resumed"}]
        # the baseline: once per split, whatever the encoders (cheap: never cached)
        records += [self._baseline_one(split) for split in splits]
        settings = self.settings()
        settings["resumed_results"] = done_old
        settings["computed_results"] = done_new
        if self.control_notes:
            settings["control_notes"] = list(self.control_notes)
        return StudyResult(d, methods, self.regressors, splits, records, settings, self.out,
                           baseline=self.baseline_info())

    def _all_split(self) -> Split:
        """Every patch as "training" data: how a ``fit_all`` control is fitted (no labels)."""
        n = len(self.data.y)
        return Split("all", "all", np.arange(n), np.arange(0))

    def baseline_info(self) -> dict:
        """What the baseline row is, for the report."""
        task = self.data.task
        model = BASELINE_MODELS[task]
        what = ("the mean of the training part's targets" if task == "regression" else
                "the most frequent class of the training part (ties: first in sorted order)")
        return {"method": BASELINE_METHOD, "regressor": model, "label": model_label(model),
                "description": f"predicts {what} for every test patch, using no features; "
                               "computed once per split and scored with the same metrics"}

    def _baseline_one(self, split: Split) -> dict:
        d = self.data
        tr, te = split.train, split.test
        pred = baseline_predict(d.task, d.y[tr], len(te))
        pred_list = pred.astype(float).tolist() if d.task == "regression" else \
            [str(p) for p in pred]
        true_list = d.y[te].astype(float).tolist() if d.task == "regression" else \
            [str(v) for v in d.y[te]]
        return {"key": None, "method": BASELINE_METHOD, "regressor": BASELINE_MODELS[d.task],
                "split": split.id, "kind": split.kind, "seed": split.seed,
                "held_out": split.held_out, "test": te.tolist(), "n_train": int(len(tr)),
                "true": true_list, "pred": pred_list, "groups": d.groups[te].tolist(),
                "metrics": metrics(d.task, true_list, pred_list), "inner_cv": "",
                "seconds": 0.0}

    def _run_one(self, spec: MethodSpec, split: Split, reg: str, X, key: str) -> dict:
        d = self.data
        tr, te = split.train, split.test
        cv, cv_note = inner_cv(split, d.groups[tr], d.task, d.y[tr], folds=self.inner_folds,
                               seed=split.seed or 0)
        t0 = time.perf_counter()
        pred, info = fit_predict(reg, d.task, X[tr], d.y[tr], X[te], cv=cv,
                                 seed=split.seed or 0, n_jobs=self.n_jobs)
        secs = time.perf_counter() - t0
        pred_list = pred.astype(float).tolist() if d.task == "regression" else \
            [str(p) for p in pred]
        true_list = d.y[te].astype(float).tolist() if d.task == "regression" else \
            [str(v) for v in d.y[te]]
        rec = {"key": key, "method": spec.key, "regressor": reg, "split": split.id,
               "kind": split.kind, "seed": split.seed, "held_out": split.held_out,
               "test": te.tolist(), "n_train": int(len(tr)), "true": true_list,
               "pred": pred_list, "groups": d.groups[te].tolist(),
               "metrics": metrics(d.task, true_list, pred_list), "inner_cv": cv_note,
               "seconds": secs, **info}
        m = rec["metrics"]
        self.log(f"{spec.key} / {model_label(reg)} / {split.id}: "
                 + ", ".join(f"{k}={m[k]:.3g}" for k in METRIC_NAMES[d.task]
                             if np.isfinite(m[k])))
        return rec


def _load_record(path: Path, key: str):
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec if rec.get("key") == key else None


def run_study(data: StudyData, methods, out, **kw) -> StudyResult:
    """Shortcut: ``Study(data, methods, out, **kw).run()``."""
    return Study(data, methods, out, **kw).run()
