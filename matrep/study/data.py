"""A study's data: labelled micrographs cut into patches, each with its target and group."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError, LabelsError
from .splits import natural_key


class StudyWarning(UserWarning):
    """Something about the study's input the user should know (it still runs)."""


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
        from ..store import images_digest

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

    from ..io import list_images, load_patches
    from ..labels import match_labels, read_labels, target_values

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
