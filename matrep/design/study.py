"""The design study: K targets x n designs, judged by physics, beside the random baseline.

Targets are spread evenly over the 5th-95th percentile of the patch-level values of one
property. For each target the design loop and the random-prior baseline each spend the same
solver budget; the numbers reported, for both:

* **accuracy** -- median of |achieved - target| / target over all designs (achieved = physics
  value of the design), and the share of designs within 3 %;
* **distinctness** -- for each target, the pairwise style distances of its designs against the
  median style distance between two patches of one micrograph (share of pairs above it, and
  the smallest pair);
* the same accuracy numbers for the large designs, and for the mean physics value of each
  design's other noise draws (its latent's texture rather than the one chosen patch).
"""

from __future__ import annotations

import time

import numpy as np

from .inverse import relative_error


def study_targets(values, n_targets: int = 6, lo: float = 5.0, hi: float = 95.0) -> np.ndarray:
    """``n_targets`` values evenly spaced between the ``lo``-th and ``hi``-th percentiles.

    >>> study_targets(np.arange(101.0), 3).tolist()
    [5.0, 50.0, 95.0]
    """
    a, b = np.percentile(np.asarray(values, dtype=np.float64), [lo, hi])
    return np.linspace(a, b, int(n_targets)) if n_targets > 1 else np.array([(a + b) / 2])


def _accuracy(results, prop, within=0.03, large=False, draws=False) -> dict:
    errs = []
    for r in results:
        if draws:
            t = r.targets[prop]
            means = [c.draw_values(prop).mean() for c in r.designs if c.draws]
            errs += [abs(relative_error(v, t)) for v in means]
        elif large:
            for lg in r.large:
                if lg is not None and lg["physics"] is not None:
                    t = r.targets[prop]
                    errs.append(abs(relative_error(lg["physics"].values[prop], t)))
        else:
            errs += [abs(e) for e in r.design_errors(prop) if np.isfinite(e)]
    errs = np.array(errs)
    if not len(errs):
        return {"n": 0}
    made = sorted({lg.get("method", "blended tiles") for r in results for lg in r.large
                   if lg is not None}) if large else []
    return {"n": int(len(errs)), **({"made_by": ", ".join(made)} if made else {}),
            "median_abs_rel_error": float(np.median(errs)),
            "mean_abs_rel_error": float(np.mean(errs)),
            "share_within_3pct": float(np.mean(errs <= within)),
            "max_abs_rel_error": float(np.max(errs))}


def _distinctness(results, ref) -> dict:
    per, above, total = [], 0, 0
    for r in results:
        sd = r.style_distances
        if sd is None or len(sd) < 2:
            continue
        d = sd[np.triu_indices(len(sd), 1)]
        per.append({"target": list(r.targets.values())[0], "min_pairwise": float(d.min()),
                    "median_pairwise": float(np.median(d)),
                    "share_above_reference": float(np.mean(d > ref)) if ref else None})
        if ref:
            above += int((d > ref).sum())
            total += len(d)
    return {"reference_within_micrograph_median": ref,
            "share_of_pairs_above_reference": above / total if total else None,
            "targets_all_pairs_above": (sum(1 for p in per if p["min_pairwise"] > ref)
                                        if ref else None),
            "per_target": per}


def run_study(designer, prop: str, *, n_targets: int = 6, n_designs: int = 4,
              baseline: bool = True, log=None) -> tuple:
    """Run the study on a ready :class:`~matrep.design.inverse.Designer`.

    Returns
    -------
    result : DesignResult (all targets)
    summary : dict — accuracy, distinctness and timings of the designed and baseline routes
    """
    from .inverse import DesignResult

    log = log or (lambda s: None)
    t0 = time.perf_counter()
    targets = study_targets(designer.data.values[prop], n_targets)
    results, bases = [], []
    for i, t in enumerate(targets):
        log(f"target {i + 1}/{len(targets)}: {prop}={t:.4g}")
        results.append(designer.design({prop: float(t)}, n=n_designs))
        if baseline and designer.solver is not None:
            bases.append(designer.baseline({prop: float(t)}, n=n_designs))
            a = _accuracy(results[-1:], prop)
            b = _accuracy(bases[-1:], prop)
            log(f"  designed median error {100 * a.get('median_abs_rel_error', np.nan):.2f} %, "
                f"baseline {100 * b.get('median_abs_rel_error', np.nan):.2f} %")
    ref = designer.reference_distance
    summary = {
        "property": prop, "targets": targets.tolist(), "designs_per_target": n_designs,
        "solver_calls_per_target": designer.settings.budget,
        "designed": {"accuracy": _accuracy(results, prop),
                     "accuracy_large": _accuracy(results, prop, large=True),
                     "accuracy_other_draws": _accuracy(results, prop, draws=True),
                     "distinctness": _distinctness(results, ref),
                     "solver_calls": int(sum(r.solver_calls for r in results))},
        "baseline": {"accuracy": _accuracy(bases, prop),
                     "accuracy_other_draws": _accuracy(bases, prop, draws=True),
                     "distinctness": _distinctness(bases, ref),
                     "solver_calls": int(sum(r.solver_calls for r in bases))},
        "seconds_designing": time.perf_counter() - t0,
    }
    res = DesignResult(results=results, baselines=bases, settings=designer.settings,
                       properties=[prop], sources=designer.data.sources,
                       notes=list(designer.data.notes), info={})
    return res, summary


def _pct(v):
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.2f} %"


def summary_markdown(summary: dict) -> str:
    """The study's headline table."""
    d, b = summary["designed"], summary["baseline"]
    da, ba = d["accuracy"], b["accuracy"]
    dl = d["accuracy_large"]
    dd, bd = d["distinctness"], b["distinctness"]
    ref = dd["reference_within_micrograph_median"]

    def share(x):
        return "n/a" if x is None else f"{100 * x:.0f} %"

    rows = [
        ("median abs. rel. error (goal <= 2 %)", _pct(da.get("median_abs_rel_error")),
         _pct(ba.get("median_abs_rel_error"))),
        ("share within 3 % (goal >= 75 %)", share(da.get("share_within_3pct")),
         share(ba.get("share_within_3pct"))),
        ("max abs. rel. error", _pct(da.get("max_abs_rel_error")), _pct(ba.get("max_abs_rel_error"))),
        ("pairs of designs above the within-micrograph median style distance",
         share(dd["share_of_pairs_above_reference"]), share(bd["share_of_pairs_above_reference"])),
        ("targets whose designs are all pairwise above it",
         f"{dd['targets_all_pairs_above']}/{len(summary['targets'])}"
         if dd["targets_all_pairs_above"] is not None else "n/a",
         f"{bd['targets_all_pairs_above']}/{len(summary['targets'])}"
         if bd["targets_all_pairs_above"] is not None else "n/a"),
        ("solver calls", str(d["solver_calls"]), str(b["solver_calls"])),
    ]
    lines = [f"## Study: {len(summary['targets'])} targets x {summary['designs_per_target']} "
             f"designs, {summary['property']}", "",
             "targets: " + ", ".join(f"{t:.4g}" for t in summary["targets"]), "",
             "| | designed | random prior, best of the same budget |", "|---|---|---|"]
    lines += [f"| {a} | {x} | {y} |" for a, x, y in rows]
    if dl.get("n"):
        lines += ["", f"Large designs ({dl.get('made_by', 'blended tiles')}; physics on the "
                      f"whole image): median abs. rel. error "
                      f"{_pct(dl['median_abs_rel_error'])}, within 3 %: "
                      f"{100 * dl['share_within_3pct']:.0f} % of {dl['n']}."]
    dr, br = d.get("accuracy_other_draws", {}), b.get("accuracy_other_draws", {})
    if dr.get("n"):
        lines += ["", f"Each design's latent decoded with other noise seeds at the patch size "
                      f"(the latent's texture, not the one draw chosen for being on target), the "
                      f"mean physics value of the draws: median abs. rel. error "
                      f"{_pct(dr['median_abs_rel_error'])}, within 3 %: "
                      f"{100 * dr['share_within_3pct']:.0f} % of {dr['n']} designs"
                      + (f" (baseline {_pct(br['median_abs_rel_error'])}, "
                         f"{100 * br['share_within_3pct']:.0f} %)." if br.get("n") else ".")]
    if ref is not None:
        lines += ["", f"Reference style distance (median over pairs of patches of one "
                      f"micrograph): {ref:.4g}."]
    return "\n".join(lines)
