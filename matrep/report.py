"""The study's report: ``report.md``, ``report.json``, ``predictions.csv`` and figures.

:func:`write_report` writes, into the study's folder, every file atomically (a reader sees the
previous complete file or the new one):

* ``report.md`` — the verdict (when a method has controls), the data, the encoders'
  provenance and versions, the controls and the baseline, Table 2 (random 80/20 splits,
  mean ± std over seeds) and Table 3 (grouped splits, held-out patches pooled), each with
  a baseline row, a per-group table of predictions, and links to the figures;
* ``report.json`` — the same in machine-readable form (``baseline``, ``verdict``,
  ``mixed_groups``), with per-split metrics and the hyperparameters the inner
  cross-validation chose;
* ``predictions.csv`` — every test prediction: method, regressor, split, patch (file,
  micrograph, group, corner), true and predicted value;
* ``figures/parity_<method>.png`` — predicted against true per regressor and split kind
  (confusion matrices for classification);
* ``figures/groups_<method>_<regressor>.png`` — per held-out group, a histogram of its patch
  predictions with the true value marked (the paper's Fig. 7); for classification, the
  counts of predicted classes with the true class marked.

Figures use matplotlib's Agg canvas (no display needed).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from pathlib import Path

import numpy as np

from .atomic import atomic_path, atomic_write_text
from .study import METRIC_NAMES, describe_mixed, model_label, pooled_records

#: Most groups drawn in one per-group figure (the rest are in predictions.csv).
MAX_GROUP_PANELS = 48

_HEAD = {"r2": "R²", "mape": "MAPE (%)", "mae": "MAE", "accuracy": "accuracy",
         "f1_macro": "macro-F1"}


def _fmt(v, k=None) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if k == "mape":
        return f"{v:.2f}"
    if k in ("r2", "accuracy", "f1_macro"):
        return f"{v:.3f}"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _md_table(head, rows) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def summary_rows(result, kind: str) -> tuple[list, list]:
    """Header and rows of the summary table of one split kind (``random`` or ``grouped``)."""
    task = result.data.task
    names = METRIC_NAMES[task]
    head = ["method", "regressor" if task == "regression" else "classifier"]
    head += [_HEAD[k] for k in names]
    rows = []
    for r in result.summary:
        if r["kind"] != kind:
            continue
        row = [r["method"], model_label(r["regressor"])]
        if kind == "random":
            row += [f"{_fmt(r[k], k)} ± {_fmt(r[k + '_std'], k)}" for k in names]
        else:
            row += [_fmt(r[k], k) for k in names]
        rows.append(row)
    if kind == "grouped" and rows:
        extra = "group-mean MAPE (%)" if task == "regression" else "group-vote accuracy"
        key = "group_mean_mape" if task == "regression" else "group_vote_accuracy"
        head.append(extra)
        grouped = [r for r in result.summary if r["kind"] == "grouped"]
        for row, r in zip(rows, grouped):
            row.append(_fmt(r[key], "mape" if task == "regression" else "accuracy"))
    return head, rows


def format_summary(result) -> str:
    """The summary tables as plain text for the terminal."""
    out = []
    for kind, title in (("random", "random 80/20 splits (mean ± std over seeds)"),
                        ("grouped", f"grouped splits: unseen {result.data.group_column or 'micrograph'}"
                                    " (held-out patches pooled)")):
        head, rows = summary_rows(result, kind)
        if not rows:
            continue
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        out.append(title)
        out.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
        out.append("")
    if result.verdict:
        import textwrap

        out.append(textwrap.fill("verdict: " + result.verdict["text"], width=100))
    return "\n".join(out).rstrip()


# ---------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------
def _versions() -> dict:
    from importlib import metadata

    from ._version import __version__

    v = {"matrep": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "scipy", "scikit-learn", "h5py", "torch", "torchvision"):
        if pkg in ("torch", "torchvision") and pkg not in sys.modules:
            continue  # only report the deep-learning stack when an encoder used it
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return v


def predictions_table(result):
    """Every prediction as a pandas DataFrame (one row per test patch per model and split)."""
    import pandas as pd

    ps = result.data.patchset
    frames = []
    for r in result.records:
        te = np.asarray(r["test"], dtype=np.int64)
        frames.append(pd.DataFrame({
            "method": r["method"], "regressor": model_label(r["regressor"]), "split": r["split"],
            "split_kind": r["kind"], "seed": r["seed"] if r["seed"] is not None else "",
            "patch": te, "source": ps.sources[te], "micrograph": ps.micrograph_ids[te],
            "group": r["groups"], "y0": ps.coords[te, 0], "x0": ps.coords[te, 1],
            "true": r["true"], "pred": r["pred"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _json_report(result) -> dict:
    recs = [{k: v for k, v in r.items() if k not in ("test", "true", "pred", "groups")}
            for r in result.records]
    return {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(), "data": result.data.describe(),
            "notes": result.data.notes, "settings": result.settings,
            "methods": result.methods, "baseline": result.baseline,
            "verdict": result.verdict, "mixed_groups": result.data.mixed_groups,
            "summary": result.summary, "splits": recs}


def _save_fig(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def _new_fig(w, h):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def parity_figure(result, method: str, path: Path) -> Path:
    """Predicted vs true (regression) or confusion matrices (classification) of one method."""
    task = result.data.task
    regs = result.regressors
    kinds = [k for k in ("random", "grouped") if any(r["kind"] == k for r in result.records)]
    fig = _new_fig(4.2 * len(kinds), 3.9 * len(regs))
    axes = fig.subplots(len(regs), len(kinds), squeeze=False)
    classes = result.data.classes
    for i, reg in enumerate(regs):
        for j, kind in enumerate(kinds):
            ax = axes[i][j]
            rs = [r for r in result.records if r["method"] == method and r["regressor"] == reg
                  and r["kind"] == kind]
            if not rs:
                ax.set_axis_off()
                continue
            yt = np.concatenate([np.asarray(r["true"]) for r in rs])
            yp = np.concatenate([np.asarray(r["pred"]) for r in rs])
            what = "all seeds" if kind == "random" else "held-out groups"
            if task == "regression":
                yt, yp = yt.astype(float), yp.astype(float)
                ax.scatter(yt, yp, s=6, alpha=0.35, edgecolors="none")
                lo, hi = float(min(yt.min(), yp.min())), float(max(yt.max(), yp.max()))
                ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
                ax.set_xlabel(f"true {result.data.target}")
                ax.set_ylabel(f"predicted {result.data.target}")
                ax.legend(loc="upper left", fontsize=7)
            else:
                idx = {c: k for k, c in enumerate(classes)}
                cm = np.zeros((len(classes), len(classes)), int)
                for a, b in zip(yt, yp):
                    if a in idx and b in idx:
                        cm[idx[a], idx[b]] += 1
                ax.imshow(cm, cmap="Blues")
                ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=6)
                ax.set_yticks(range(len(classes)), classes, fontsize=6)
                for a in range(len(classes)):
                    for b in range(len(classes)):
                        if cm[a, b]:
                            ax.text(b, a, str(cm[a, b]), ha="center", va="center", fontsize=6)
                ax.set_xlabel(f"predicted {result.data.target}")
                ax.set_ylabel(f"true {result.data.target}")
            ax.set_title(f"{method} + {model_label(reg)}: {kind} ({what})", fontsize=9)
    fig.tight_layout()
    _save_fig(fig, path)
    return path


def groups_figure(result, method: str, reg: str, path: Path) -> Path | None:
    """Per held-out group: histogram of its patch predictions, true value marked (Fig. 7)."""
    task = result.data.task
    row = next((r for r in result.summary if r["method"] == method and r["regressor"] == reg
                and r["kind"] == "grouped"), None)
    if row is None:
        return None
    rs = [r for r in result.records if r["method"] == method and r["regressor"] == reg
          and r["kind"] == "grouped"]
    # a group of mixed classes votes per micrograph: its panels are "group / micrograph"
    yt, yp, gr = pooled_records(rs, result.data.patchset.micrograph_ids,
                                result.data.mixed_groups)
    groups = [g["group"] for g in row["groups"]][:MAX_GROUP_PANELS]
    n = len(groups)
    cols = min(6, n)
    nrows = int(np.ceil(n / cols))
    fig = _new_fig(2.6 * cols, 2.2 * nrows + 0.4)
    axes = fig.subplots(nrows, cols, squeeze=False)
    if task == "regression":
        lo = float(min(yt.astype(float).min(), yp.astype(float).min()))
        hi = float(max(yt.astype(float).max(), yp.astype(float).max()))
        bins = np.linspace(lo, hi, 25) if hi > lo else 10
    for k, ax in enumerate(axes.ravel()):
        if k >= n:
            ax.set_axis_off()
            continue
        g = groups[k]
        m = gr == g
        info = next(x for x in row["groups"] if x["group"] == g)
        if task == "regression":
            ax.hist(yp[m].astype(float), bins=bins, color="tab:blue", alpha=0.8)
            ax.axvline(info["true"], color="tab:red", lw=2, label="true")
            ax.set_title(f"{g}: MAPE {info['mape']:.1f}%", fontsize=7)
            ax.set_xlabel(f"predicted {result.data.target}", fontsize=7)
        else:
            classes = result.data.classes
            counts = [int(np.sum(yp[m] == c)) for c in classes]
            colors = ["tab:red" if c == info["true"] else "tab:blue" for c in classes]
            ax.bar(range(len(classes)), counts, color=colors)
            ax.set_xticks(range(len(classes)), classes, rotation=70, ha="right", fontsize=5)
            ax.set_title(f"{g}: true {info['true']} (red)", fontsize=7)
        ax.set_ylabel("patches", fontsize=7)
        ax.tick_params(labelsize=6)
    title = (f"{method} + {model_label(reg)}: predictions for each unseen "
             f"{result.data.group_column or 'micrograph'}")
    if len(row["groups"]) > MAX_GROUP_PANELS:
        title += f" (first {MAX_GROUP_PANELS} of {len(row['groups'])})"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save_fig(fig, path)
    return path


def _file_id(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def _group_table(result) -> str:
    """Per held-out group: true value and each model's mean ± std prediction."""
    task = result.data.task
    rows_g = [r for r in result.summary if r["kind"] == "grouped"]
    if not rows_g:
        return ""
    head = ["group", "patches", "true"] + [f"{r['method']} + {model_label(r['regressor'])}"
                                           for r in rows_g]
    groups = [g["group"] for g in rows_g[0]["groups"]]
    lines = []
    for gname in groups:
        infos = [next(x for x in r["groups"] if x["group"] == gname) for r in rows_g]
        first = infos[0]
        true = _fmt(first["true"]) if task == "regression" else first["true"]
        cells = []
        for x in infos:
            if task == "regression":
                cells.append(f"{x['pred_mean']:.4g} ± {x['pred_std']:.2g}")
            else:
                cells.append(f"{x['majority']} ({100 * x['accuracy']:.0f}% right)")
        lines.append([gname, first["n"], true] + cells)
    return _md_table(head, lines)


def write_report(result, out=None) -> dict:
    """Write the report files of a :class:`matrep.study.StudyResult`; return their paths."""
    out = Path(out or result.out)
    figdir = out / "figures"
    data = result.data
    files = {}

    preds = predictions_table(result)
    with atomic_path(out / "predictions.csv", suffix=".csv") as tmp:
        preds.to_csv(tmp, index=False)
    files["predictions"] = out / "predictions.csv"

    rep = _json_report(result)
    atomic_write_text(out / "report.json", json.dumps(rep, indent=2, default=str))
    files["json"] = out / "report.json"

    figs = []
    methods = list(result.methods)
    for method in methods:
        p = parity_figure(result, method, figdir / f"parity_{_file_id(method)}.png")
        figs.append((f"{method}: predicted vs true", p))
    group_figs = []
    for method in methods:
        for reg in result.regressors:
            p = groups_figure(result, method, reg,
                              figdir / f"groups_{_file_id(method)}_{_file_id(model_label(reg))}.png")
            if p is not None:
                group_figs.append((f"{method} + {model_label(reg)}", p))
    files["figures"] = [p for _, p in figs + group_figs]

    md = _markdown(result, rep, figs, group_figs, out)
    atomic_write_text(out / "report.md", md)
    files["markdown"] = out / "report.md"
    return files


def _markdown(result, rep, figs, group_figs, out: Path) -> str:
    d = rep["data"]
    task = result.data.task
    s = result.settings
    L = [f"# Structure-property study: {d['target']}", "",
         f"Created {rep['created']} by matrep {rep['versions']['matrep']}. Every prediction is "
         "in `predictions.csv`; the numbers below are also in `report.json`.", ""]
    if result.verdict:
        L += ["## Verdict", "", result.verdict["text"], "",
              "Every row uses the same patches and splits, the controls with the same models "
              "as the method; the controls and the baseline are described under Encoders.", ""]
    L += ["## Data", ""]
    L.append(f"- Images: {d['images']} micrographs from `{d['image_folder']}`, labels from "
             f"`{d['labels']}`.")
    L.append(f"- Patches: {d['patches']} of {d['patch']}x{d['patch']} pixels, stride "
             f"{d['stride']}, crop {d['crop']}, bottom rows removed {d['crop_bottom']}; each patch "
             "inherits its micrograph's label.")
    if d.get("pixel_sizes"):
        from .scale import format_summary

        L.append(f"- Scale: {format_summary(d['pixel_sizes'])}.")
    if task == "regression":
        L.append(f"- Target `{d['target']}` (regression): {d['target_min']:.4g} to "
                 f"{d['target_max']:.4g}, mean {d['target_mean']:.4g}, std {d['target_std']:.4g} "
                 f"over patches; {d['target_distinct']} distinct values over micrographs.")
    else:
        L.append(f"- Target `{d['target']}` (classification): "
                 + ", ".join(f"{k} {v}" for k, v in d["class_counts"].items()) + " patches.")
    L.append(f"- Groups for the grouped split: `{d['group']}`, {d['groups']} groups.")
    for note in rep["notes"]:
        L.append(f"- Note: {note}")
    L += ["", "## Encoders", ""]
    for name, m in result.methods.items():
        prov = m.get("provenance") or {}
        feats = [f for f in m.get("features", []) if f.get("provenance")]
        fprov = feats[0]["provenance"] if feats else prov
        line = (f"- **{name}**: {fprov.get('distribution', '?')} {fprov.get('version', '?')}, "
                f"class `{fprov.get('class', '?')}`; {m['fitting']}.")
        params = fprov.get("params", {})
        if params:
            line += " Parameters: " + ", ".join(f"`{k}={v}`" for k, v in params.items()) + "."
        w = fprov.get("weights")
        b = fprov.get("backbone")
        if isinstance(w, dict) and w:
            line += f" Weights: {w.get('name', '?')} (sha256 {str(w.get('sha256', '?'))[:16]}...)."
        elif isinstance(b, dict) and b:
            line += (f" Backbone: {b.get('name', '?')} with {b.get('weights', '?')} weights "
                     f"(sha256 {str(b.get('sha256', '?'))[:16]}...).")
        keys = [f"{f['store']}:{f['key']}" for f in m.get("features", []) if f.get("key")]
        if keys:
            line += (f" Features: `{keys[0]}`" + (f" and {len(keys) - 1} more" if len(keys) > 1
                                                  else "") + ".")
        if m["spec"].get("model"):
            line += (f" Model: `{m['spec']['model']}` — trained outside the study; if its training "
                     "patches include test micrographs the grouped results are optimistic.")
        if m.get("role") == "control" and m.get("note"):
            line += f" {m['note'][0].upper()}{m['note'][1:]}."
        L.append(line)
    b = result.baseline
    if b:
        L.append(f"- **{b['method']}** ({b['label']}): {b['description']}.")
    for note in s.get("control_notes", []):
        L.append(f"- Note: {note}.")
    L.append("")
    L.append("Versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items()) + ".")

    regs = ", ".join(model_label(r) for r in result.regressors)
    L += ["", "## Models and splits", "",
          f"Models: {regs}. `linear` = StandardScaler + "
          + ("LinearRegression" if task == "regression" else "LogisticRegression")
          + "; `svr` = StandardScaler + "
          + ("SVR (RBF kernel, standardised target), C, gamma, epsilon" if task == "regression"
             else "SVC (RBF kernel), C and gamma")
          + f" chosen by {s['inner_folds']}-fold inner cross-validation on the training part "
            f"only (grid {s['svr_grid']}, gamma_scale in units of 1/n_features). Everything "
            "fitted (encoder when fitted per split, scalers, model) sees the training patches "
            "only.", ""]
    head, rows = summary_rows(result, "random")
    if rows:
        L += [f"## Random 80/20 split over patches (like the paper's Table 2)", "",
              f"{int(round(100 * s['test_size']))}% of the patches held out at random, "
              f"{len([x for x in result.splits if x.kind == 'random'])} seeds; mean ± standard "
              "deviation over seeds. Patches of one micrograph are correlated, so this measures "
              "interpolation within known micrographs, not generalisation.", "",
              _md_table(head, rows), ""]
    head, rows = summary_rows(result, "grouped")
    if rows:
        ng = len([x for x in result.splits if x.kind == "grouped"])
        how = (f"GroupKFold({s['folds']})" if s.get("folds") else
               f"leave-one-group-out over {ng} held-out groups"
               + (f" (a random {s['max_groups']} of {d['groups']})" if s.get("max_groups")
                  and s["max_groups"] < d["groups"] else ""))
        L += [f"## Unseen {d['group']} (like the paper's Table 3)", "",
              f"Grouped by `{d['group']}`: {how}; every patch of a held-out group is predicted "
              "by a model that never saw the group. Metrics over all held-out patches pooled; "
              + ("group-mean MAPE is the mean over groups of |mean prediction - true| / true."
                 if task == "regression" else
                 "group-vote accuracy is the fraction of groups whose majority prediction is "
                 "right."), "", _md_table(head, rows), "",
              "### Per held-out group", "",
              ("Mean ± standard deviation of the patch predictions of each held-out group."
               if task == "regression" else
               "Majority prediction of each held-out group's patches and the share predicted "
               "right."), ""]
        mixed = result.data.mixed_groups
        if mixed:
            L += [f"{len(mixed)} group(s) hold micrographs of different classes: "
                  f"{describe_mixed(mixed)}. Each of their micrographs votes on its own (rows "
                  "`group / micrograph`, scored against that micrograph's class), instead of "
                  "voting against the group's majority class; the group-vote accuracy counts "
                  "these micrographs as units.", ""]
        L += [_group_table(result), ""]
    L += ["## Figures", ""]
    for title, p in figs:
        L += [f"### {title}", "", f"![{title}]({p.relative_to(out).as_posix()})", ""]
    for title, p in group_figs:
        what = ("histogram of the patch predictions, true value in red (like the paper's Fig. 7)"
                if task == "regression" else "predicted classes, true class in red")
        L += [f"### {title}: each unseen {d['group']}", "", what + ".", "",
              f"![{title}]({p.relative_to(out).as_posix()})", ""]
    L += ["## Reproducing", ""]
    if s.get("command"):
        L += ["```", s["command"], "```", ""]
    L += [f"Results computed now: {s.get('computed_results', '?')}; reused from an earlier "
          f"(interrupted) run: {s.get('resumed_results', '?')}. Cached features: "
          "`features.h5` (encoders that learn nothing from the study) and `features/` "
          "(encoders fitted per split); per-result files in `.study/`.", ""]
    return "\n".join(L)
