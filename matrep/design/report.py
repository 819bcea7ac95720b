"""Writing a design run: designs.json, the designs grid, target vs achieved, images, summary.

Every file goes through :mod:`matrep.atomic` (a reader sees the old file or the new one).
Figures use matplotlib's Agg canvas (no display needed).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, atomic_write_text
from ..seeds import array_seed
from .inverse import relative_error


def _f(v, nd=4):
    return None if v is None or not np.isfinite(v) else round(float(v), nd)


def _cand_dict(c, targets, draws=True) -> dict:
    # the latent as stored (float32, exact) and the decoder's noise seed: decoding them with
    # ``model.decode([latent], seeds=[noise_seed])`` gives the design's image again
    d = {"latent": [float(x) for x in c.latent], "noise_seed": int(array_seed(c.latent)),
         "predicted": {p: {"mean": _f(m), "std": _f(s)} for p, (m, s) in c.predicted.items()
                       if p in targets},
         "round": int(c.round), "source": c.source}
    if c.physics is not None:
        d["physics"] = {p: _f(c.physics.values[p], 6) for p in targets}
        d["error_relative"] = {p: _f(e, 6) for p, e in c.errors(targets).items()}
        d["solver_residual"] = float(c.physics.residual)
        d["solver_converged"] = bool(c.physics.converged)
        d["solver_iterations"] = int(c.physics.iterations)
        d["phase_fraction"] = _f(c.physics.fraction, 5)
    if draws and c.draws:
        # the same latent decoded with other noise seeds, each draw checked by physics
        d["other_draws"] = {"noise_seeds": [int(v) for v in c.draw_seeds], "physics": {}}
        for p, t in targets.items():
            v = c.draw_values(p)
            d["other_draws"]["physics"][p] = {
                "values": [_f(x, 6) for x in v], "mean": _f(v.mean(), 6), "std": _f(v.std(), 6),
                "error_relative_of_mean": _f(relative_error(v.mean(), t), 6)}
    return d


def target_dict(r, prefix: str) -> dict:
    """JSON of one TargetResult; image files named ``prefix_NN.png``."""
    out = {"targets": r.targets, "extrapolation": r.extrapolation, "method": r.method,
           "solver_calls": int(r.solver_calls), "budget_per_target": int(r.budget),
           "seconds": round(r.seconds, 2), "designs": []}
    if r.search_quantile is not None:
        out["search_mass"] = float(r.search_quantile)  # the (widened) search ball's mass
    for k, c in enumerate(r.designs):
        d = _cand_dict(c, r.targets)
        d["image"] = f"{prefix}_{k:02d}.png"
        d["distinct"] = bool(r.distinct[k])
        if r.large and k < len(r.large) and r.large[k] is not None:
            lg = r.large[k]
            size = lg["image"].shape[0]
            d["large"] = {"size": size, "image": f"{prefix}_{k:02d}_{size}.png",
                          "made_by": lg.get("method", "blended tiles")}
            if lg["physics"] is not None:
                ph = lg["physics"]
                d["large"]["physics"] = {p: _f(ph.values[p], 6) for p in r.targets}
                d["large"]["error_relative"] = {
                    p: _f(relative_error(ph.values[p], t), 6)
                    for p, t in r.targets.items()}
                d["large"]["solver_residual"] = float(ph.residual)
        out["designs"].append(d)
    if r.style_distances is not None:
        sd = r.style_distances
        iu = np.triu_indices(len(sd), 1)
        out["pairwise_style_distance"] = [_f(v, 6) for v in sd[iu]]
    # every candidate the solver checked; a design's other draws are under "designs" only
    out["checked"] = [_cand_dict(c, r.targets, draws=False) for c in r.candidates]
    return out


def _write_png(img, path: Path) -> None:
    from PIL import Image

    a = np.clip(np.asarray(img, dtype=np.float32), 0, 1)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray((a * 255 + 0.5).astype(np.uint8)).save(tmp, format="PNG")


def _fig(w, h):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def _fmt_value(v):
    return f"{v:.4g}" if v is not None and np.isfinite(v) else "n/a"


def _caption(c, targets) -> str:
    lines = []
    for p, t in targets.items():
        m, s = c.predicted[p]
        lines.append(f"{p}\ntarget {t:.4g}\npred {m:.4g} ± {s:.2g}")
        if c.physics is not None:
            e = c.errors(targets)[p]
            lines.append(f"physics {c.physics.values[p]:.4g} ({100 * e:+.1f} %)")
    return "\n".join(lines)


def designs_grid(rows, path: Path, *, title: str = "") -> Path:
    """Grid figure: one row per TargetResult, one column per design, values under each image."""
    rows = [r for r in rows if r.designs]
    ncol = max(len(r.designs) for r in rows) if rows else 1
    nprop = max(len(r.targets) for r in rows) if rows else 1
    fig = _fig(2.3 * ncol, (2.3 + 0.75 * nprop + 0.5) * max(1, len(rows)))
    axes = fig.subplots(max(1, len(rows)), ncol, squeeze=False)
    for i, r in enumerate(rows):
        for j in range(ncol):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(r.designs):
                ax.axis("off")
                continue
            c = r.designs[j]
            ax.imshow(c.image, cmap="gray", vmin=0, vmax=1)
            ax.set_xlabel(_caption(c, r.targets) + ("" if r.distinct[j] else "\n(not distinct)"),
                          fontsize=7)
            if j == 0:
                ax.set_ylabel(r.method, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def target_vs_achieved(results, baselines, prop: str, path: Path, *, band: float = 0.03) -> Path:
    """Target (x) against the physics value of each design (y), designs and baseline."""
    fig = _fig(4.6, 4.4)
    ax = fig.subplots()
    allv = []
    for rs, style, label in ((results, dict(marker="o", color="C0"), "designed (physics)"),
                             (baselines, dict(marker="x", color="C3"), "random prior, best of budget")):
        xs, ys = [], []
        for r in rs:
            for c in r.designs:
                if c.physics is not None and prop in r.targets:
                    xs.append(r.targets[prop])
                    ys.append(c.physics.values[prop])
        if xs:
            ax.scatter(xs, ys, s=22, alpha=0.8, label=label, **style)
            allv += xs + ys
    px, py, pe = [], [], []
    for r in results:
        for c in r.designs:
            if prop in r.targets:
                px.append(r.targets[prop])
                py.append(c.predicted[prop][0])
                pe.append(c.predicted[prop][1])
    if px:
        off = 0.004 * (max(px) - min(px) + 1e-9)
        ax.errorbar(np.array(px) + off, py, yerr=pe, fmt=".", color="C2", alpha=0.6,
                    label="designed, predicted ± std")
        allv += px + py
    if allv:
        lo, hi = min(allv), max(allv)
        pad = 0.05 * (hi - lo + 1e-9)
        g = np.linspace(lo - pad, hi + pad, 2)
        ax.plot(g, g, "k-", lw=0.8, label="achieved = target")
        ax.fill_between(g, g * (1 - band), g * (1 + band), color="0.85", zorder=0,
                        label=f"± {100 * band:.0f} %")
        ax.set_xlim(g[0], g[1])
    ax.set_xlabel(f"target {prop}")
    ax.set_ylabel(f"achieved {prop}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (np.floating, float)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    return o


def result_dict(result, extra: dict | None = None) -> dict:
    """The JSON of a DesignResult (designs.json)."""
    from dataclasses import asdict

    S = result.settings
    out = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "settings": asdict(S), "properties": result.properties,
           "training_values": result.sources, "notes": result.notes, "info": result.info,
           "budget": {"solver_calls_per_target": S.budget,
                      "designed": int(sum(r.solver_calls for r in result.results)),
                      "baseline": int(sum(r.solver_calls for r in result.baselines))},
           "targets": [target_dict(r, f"design_t{i}") for i, r in enumerate(result.results)],
           "baseline": [target_dict(r, f"baseline_t{i}") for i, r in enumerate(result.baselines)]}
    if extra:
        out.update(extra)
    return _jsonable(out)


def summary_rows(result) -> list[list[str]]:
    """One row per design: target, method, predicted, physics, error, residual, large."""
    rows = []
    for group in (result.results, result.baselines):
        for r in group:
            for k, c in enumerate(r.designs):
                for p, t in r.targets.items():
                    m, s = c.predicted[p]
                    ph = c.physics.values[p] if c.physics is not None else None
                    err = c.errors(r.targets).get(p)
                    lg = r.large[k]["physics"] if r.large and k < len(r.large) else None
                    rows.append([f"{p}={t:.4g}" + (" (extrapolated)" if r.extrapolation.get(p) else ""),
                                 r.method, str(k), f"{m:.4g} ± {s:.2g}", _fmt_value(ph),
                                 f"{100 * err:+.2f} %" if err is not None else "n/a",
                                 f"{c.physics.residual:.1e}" if c.physics is not None else "n/a",
                                 "yes" if r.distinct[k] else "no",
                                 (f"{lg.values[p]:.4g} ({100 * relative_error(lg.values[p], t):+.2f} %)"
                                  if lg is not None else "n/a"),
                                 _draws_cell(c.draw_values(p), t)])
    return rows


def _draws_cell(v, t) -> str:
    """``mean ± std (error of the mean)`` of a design's other draws, or n/a."""
    if not len(v):
        return "n/a"
    return f"{v.mean():.4g} ± {v.std():.2g} ({100 * relative_error(v.mean(), t):+.2f} %)"


def to_markdown(result, heading: str = "Designs") -> str:
    head = ["target", "method", "#", "predicted", "physics", "error", "residual", "distinct",
            f"large {result.settings.size}² physics" if result.settings.size else "large",
            f"{result.settings.draws} other draws: physics mean ± std (error)"
            if result.settings.draws else "other draws"]
    lines = [f"## {heading}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in summary_rows(result)]
    lines.append("")
    lines += [f"- {n}" for n in result.notes]
    ref = result.info.get("reference_style_distance")
    if ref is not None:
        lines.append(f"- distinct: pairwise style distance >= {ref:.4g}, the median distance "
                     "between two patches of one micrograph")
    return "\n".join(lines)


def write_design(result, out, *, extra: dict | None = None, markdown_extra: str = "") -> dict:
    """Write a DesignResult into the folder ``out``; return the paths written by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for group, prefix in ((result.results, "design"), (result.baselines, "baseline")):
        for i, r in enumerate(group):
            for k, c in enumerate(r.designs):
                _write_png(c.image, out / f"{prefix}_t{i}_{k:02d}.png")
                if r.large and k < len(r.large) and r.large[k] is not None:
                    img = r.large[k]["image"]
                    _write_png(img, out / f"{prefix}_t{i}_{k:02d}_{img.shape[0]}.png")
    paths["grid"] = designs_grid(result.results + result.baselines, out / "designs.png",
                                 title="target, surrogate prediction (before the check) and "
                                       "physics value of each design")
    for p in result.properties:
        if any(c.physics is not None for r in result.results for c in r.designs):
            paths[f"target_vs_achieved_{p}"] = target_vs_achieved(
                result.results, result.baselines, p, out / f"target_vs_achieved_{p}.png")
    js = result_dict(result, extra)
    atomic_write_text(out / "designs.json", json.dumps(js, indent=1))
    paths["json"] = out / "designs.json"
    md = to_markdown(result) + ("\n\n" + markdown_extra if markdown_extra else "") + "\n"
    atomic_write_text(out / "designs.md", md)
    paths["markdown"] = out / "designs.md"
    return paths
