"""Scores of a study's predictions: per split, per held-out group, and pooled into summary rows."""

from __future__ import annotations

import numpy as np

from .data import vote_units
from .splits import natural_key

#: The metric the verdict compares (higher is better).
PRIMARY_METRIC = {"regression": "r2", "classification": "accuracy"}


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
