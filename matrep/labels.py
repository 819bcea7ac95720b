"""Labels: a CSV with a file column, property columns and an optional group column.

Every patch inherits its micrograph's labels. A label row is matched to a micrograph by, in
order: the path in the file column resolved against the CSV's folder (or as given); the file
name; the file name without extension. Files without labels and labels without files are
reported by name.

A data set may declare which of its label columns are bookkeeping (identifiers, seeds, solver
diagnostics: never a factor or a target) in a sidecar next to the CSV, ``labels.csv`` ->
``labels.columns.json`` holding ``{"bookkeeping": ["seed", ...]}``
(:func:`bookkeeping_columns`; the built-in cast-iron set writes one).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text
from .errors import LabelsError


@dataclass
class LabelMatch:
    """Result of :func:`match_labels`.

    Attributes
    ----------
    table : pandas.DataFrame, one row per patch (same order as the PatchSet), the label
        columns (the file column dropped); NaN for patches whose micrograph has no label row.
    unlabelled_files : list of str — micrographs with no label row
    unmatched_labels : list of str — label rows (file values) that match no micrograph
    """

    table: "object"
    unlabelled_files: list
    unmatched_labels: list

    def describe(self) -> list[str]:
        """Human-readable lines about unmatched files/labels (empty when all match)."""
        out = []
        if self.unlabelled_files:
            out.append(f"{len(self.unlabelled_files)} image(s) have no label row: "
                       + ", ".join(Path(f).name for f in self.unlabelled_files[:10])
                       + (" ..." if len(self.unlabelled_files) > 10 else ""))
        if self.unmatched_labels:
            out.append(f"{len(self.unmatched_labels)} label row(s) match no image: "
                       + ", ".join(self.unmatched_labels[:10])
                       + (" ..." if len(self.unmatched_labels) > 10 else ""))
        return out


#: The sidecar of ``labels.csv`` declaring its bookkeeping columns is ``labels.columns.json``.
COLUMNS_SUFFIX = ".columns.json"


def columns_path(labels_path) -> Path:
    """Where the bookkeeping declaration of a labels CSV lives (``X.csv`` -> ``X.columns.json``)."""
    p = Path(labels_path)
    return p.with_name(p.stem + COLUMNS_SUFFIX)


def bookkeeping_columns(labels_path) -> list[str]:
    """The label columns a data set declares as bookkeeping, from the CSV's sidecar.

    Bookkeeping columns (identifiers, seeds, solver diagnostics) are never used as factors.
    Returns ``[]`` when the CSV has no sidecar (:func:`columns_path`).
    """
    side = columns_path(labels_path)
    if not side.is_file():
        return []
    try:
        decl = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LabelsError(f"{side}: not readable JSON ({type(exc).__name__}); expected "
                          '{"bookkeeping": [column names]}: fix or delete it') from None
    cols = decl.get("bookkeeping") if isinstance(decl, dict) else None
    if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
        raise LabelsError(f'{side}: expected {{"bookkeeping": [column names]}}, got '
                          f"{str(decl)[:80]}; fix or delete it")
    return cols


def write_bookkeeping_columns(labels_path, columns) -> Path:
    """Declare ``columns`` of the labels CSV at ``labels_path`` bookkeeping (atomically)."""
    side = columns_path(labels_path)
    atomic_write_text(side, json.dumps({"bookkeeping": [str(c) for c in columns]}, indent=1) + "\n")
    return side


def read_labels(path, *, file_column: str = "file"):
    """Read a labels CSV into a pandas DataFrame; check the file column exists and is unique.

    ``df.attrs`` records the CSV's ``path``, its ``file_column`` and the ``bookkeeping``
    columns its sidecar declares (:func:`bookkeeping_columns`).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"{path}: labels file not found")
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any parser failure is bad input
        raise LabelsError(f"{path}: not a readable CSV ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())})") from None
    if file_column not in df.columns:
        raise LabelsError(f"{path}: no column {file_column!r} naming the image files "
                          f"(columns are: {', '.join(map(str, df.columns))}); "
                          "pass --file-column to name it")
    dup = df[file_column][df[file_column].duplicated()].tolist()
    if dup:
        raise LabelsError(f"{path}: files listed more than once in column {file_column!r}: "
                          + ", ".join(map(str, dup[:5])))
    df.attrs["path"] = str(path)
    df.attrs["file_column"] = file_column
    df.attrs["bookkeeping"] = bookkeeping_columns(path)
    return df


def _keys(p: Path):
    return [p.name.lower(), p.stem.lower()]


def match_labels(patchset, labels, *, file_column: str | None = None, warn: bool = True) -> LabelMatch:
    """Give every patch of ``patchset`` its micrograph's label row.

    Parameters
    ----------
    patchset : matrep.io.PatchSet
    labels : pandas.DataFrame from :func:`read_labels`, or a path to a CSV
    """
    import pandas as pd

    if not hasattr(labels, "columns"):
        labels = read_labels(labels, file_column=file_column or "file")
    file_column = file_column or labels.attrs.get("file_column", "file")
    base = Path(labels.attrs["path"]).resolve().parent if "path" in labels.attrs else None

    by_path, by_name, by_stem = {}, {}, {}
    for i, v in enumerate(labels[file_column].astype(str)):
        p = Path(v)
        if base is not None:
            by_path[str((base / p).resolve())] = i
        by_name.setdefault(p.name.lower(), i)
        by_stem.setdefault(p.stem.lower(), i)

    files = list(dict.fromkeys(patchset.sources.tolist()))
    row_of_file, used, unlabelled = {}, set(), []
    for f in files:
        fp = Path(f)
        i = by_path.get(str(fp.resolve()))
        if i is None:
            i = by_name.get(fp.name.lower())
        if i is None:
            i = by_stem.get(fp.stem.lower())
        if i is None:
            unlabelled.append(f)
        else:
            row_of_file[f] = i
            used.add(i)
    unmatched = [str(v) for i, v in enumerate(labels[file_column]) if i not in used]
    if not row_of_file:
        raise LabelsError(f"{labels.attrs.get('path', 'labels')}: no label row matches any image "
                          f"(first images: {', '.join(Path(f).name for f in files[:3])}; first "
                          f"labels: {', '.join(map(str, labels[file_column].head(3)))}); check "
                          f"the {file_column!r} column")
    rows = np.array([row_of_file.get(f, -1) for f in patchset.sources.tolist()])
    cols = [c for c in labels.columns if c != file_column]
    table = labels[cols].reindex(np.where(rows >= 0, rows, -1)).reset_index(drop=True) \
        if len(labels) else pd.DataFrame(index=range(len(rows)), columns=cols)
    table.loc[rows < 0, :] = np.nan
    match = LabelMatch(table, unlabelled, unmatched)
    if warn:
        for line in match.describe():
            warnings.warn(line, stacklevel=2)
    return match


def _plain(v):
    """``np.float64(5.0)`` -> ``5.0``: numpy scalars shown as Python values."""
    return v.item() if isinstance(v, np.generic) else v


def _rows(table, mask, values, k: int = 5) -> str:
    """``row 4 (m3.png): 'oops', ...`` for the first ``k`` rows where ``mask`` holds."""
    file_column = table.attrs.get("file_column")
    idx = np.flatnonzero(np.asarray(mask))
    parts = []
    for i in idx[:k]:
        name = ""
        if file_column in table.columns:
            name = f" ({Path(str(table[file_column].iloc[i])).name})"
        parts.append(f"row {i + 1}{name}: {_plain(values.iloc[i])!r}")
    more = f" ... ({len(idx)} rows in all)" if len(idx) > k else ""
    return ", ".join(parts) + more


def target_values(table, column: str, *, source: str = "labels", task: str = "auto"):
    """Column ``column`` of a label table as an array, refusing targets that cannot be learned.

    Refused with a :class:`LabelsError` naming the rows (data rows, 1 = the first row after
    the header, with the file of the row): a missing, empty or constant column; for
    ``task="regression"`` any value that is not a number; for ``task="auto"`` a column of
    mostly numbers with some other values (a typo such as ``oops`` would otherwise turn a
    regression into a classification); infinite values unless ``task="classification"``.
    """
    import pandas as pd

    if column not in table.columns:
        raise LabelsError(f"{source}: no target column {column!r} (columns are: "
                          f"{', '.join(map(str, table.columns))})")
    col = table[column]
    if col.isna().all():
        raise LabelsError(f"{source}: target column {column!r} is empty")
    if task != "classification" and not pd.api.types.is_bool_dtype(col):
        num = pd.to_numeric(col, errors="coerce")
        text = (col.notna() & num.isna()).to_numpy()
        if text.any() and (task == "regression" or num.notna().sum() >= text.sum()):
            raise LabelsError(f"{source}: target column {column!r} has {int(text.sum())} "
                              f"value(s) that are not numbers: {_rows(table, text, col)}; fix "
                              "them, or use --task classification for a categorical target")
        if task == "regression" or not text.any():
            inf = np.isinf(num.to_numpy(dtype=np.float64, na_value=np.nan))
            if inf.any():
                raise LabelsError(f"{source}: target column {column!r} has {int(inf.sum())} "
                                  f"infinite value(s): {_rows(table, inf, col)}; a property "
                                  "value must be finite: fix them or leave them empty")
    if col.dropna().nunique() < 2:
        raise LabelsError(f"{source}: target column {column!r} is constant "
                          f"({_plain(col.dropna().iloc[0])!r}); nothing to learn")
    return col.to_numpy()
