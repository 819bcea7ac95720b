"""What a study returns, and its verdict: does a trained model beat its controls and the baseline?"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import StudyData
from .models import BASELINE_METHOD, BASELINE_MODELS, model_label
from .scoring import PRIMARY_METRIC, aggregate


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
