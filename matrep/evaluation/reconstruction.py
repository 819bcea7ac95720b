"""Texture similarity, descriptor fidelity and specificity of reconstructions (Table 1).

:func:`evaluate_models`, behind ``matrep evaluate``; see :mod:`matrep.evaluation`.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError, MatrepError
from ..metrics.morphology import (DESCRIPTORS, MEASURED_DESCRIPTORS, MIN_CONTRAST,
                                  descriptor_array, fidelity_from_arrays)
from .models import _held_out_pool, _latent_dim, _patch_size, _resolve_model
from .outputs import _write_outputs

#: metric key -> (column title, description)
METRIC_INFO = {
    "stsim2": ("STSIM-2", "STSIM-2 (Zujovic et al. 2013), 7x7 sliding window as in the "
                          "implementation the texture-VAE paper used"),
    "stsim2_global": ("STSIM-2 global", "STSIM-2 with one statistic per subband over the whole "
                                        "patch (shift invariant)"),
    "dists": ("DISTS", "DISTS similarity 1 - D (Ding et al. 2020), published alpha/beta"),
}
DEFAULT_METRICS = ("stsim2", "stsim2_global", "dists")


def _device(device):
    if device not in (None, "auto"):
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _as_tensor(a, device):
    import torch

    return torch.as_tensor(np.asarray(a, dtype=np.float32))[:, None].to(device)


def _summary(v: np.ndarray) -> dict:
    v = np.asarray(v, dtype=float)
    n = len(v)
    return {"mean": float(v.mean()) if n else float("nan"),
            "std": float(v.std(ddof=1)) if n > 1 else float("nan"),
            "sem": float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
            "median": float(np.median(v)) if n else float("nan"),
            "n": n}


def score_pairs(x, y, metrics=DEFAULT_METRICS, *, device=None, vgg16_weights=None,
                dists_weights=None, batch_size: int = 16) -> dict:
    """Scores of patch pairs per metric.

    Parameters
    ----------
    x, y : arrays of shape (n, P, P) in [0, 1]
    metrics : names from :data:`METRIC_INFO`

    Returns
    -------
    dict name -> ndarray of shape (n,), or a string saying why the metric is not available
    (e.g. ``"n/a (missing: ImageNet VGG16 weights)"``).
    """
    import torch

    from ..metrics.dists import load_dists, missing_ingredients
    from ..metrics.stsim import stsim2_variants

    unknown = [m for m in metrics if m not in METRIC_INFO]
    if unknown:
        raise BadInputError(None, f"unknown metric(s) {', '.join(unknown)}; choose from "
                                  f"{', '.join(METRIC_INFO)}")
    dev = _device(device)
    out = {}
    windows = [w for m, w in (("stsim2", 7), ("stsim2_global", None)) if m in metrics]
    if windows:
        acc = {w: [] for w in windows}
        for i in range(0, len(x), batch_size):
            v = stsim2_variants(_as_tensor(x[i:i + batch_size], dev),
                                _as_tensor(y[i:i + batch_size], dev), windows=tuple(windows))
            for w in windows:
                acc[w].append(v[w].cpu().numpy())
        for m, w in (("stsim2", 7), ("stsim2_global", None)):
            if m in metrics:
                out[m] = np.concatenate(acc[w]) if acc[w] else np.zeros(0)
    if "dists" in metrics:
        missing = missing_ingredients(vgg16_weights, dists_weights)
        if missing:
            out["dists"] = f"n/a (missing: {', '.join(missing)})"
        else:
            d = load_dists(vgg16_weights, dists_weights, device=dev)
            with torch.no_grad():
                out["dists"] = d.similarity(_as_tensor(x, dev), _as_tensor(y, dev),
                                            batch_size=batch_size).cpu().numpy()
    return {m: out[m] for m in metrics}


def _pick_patches(ps, n: int, rng, pool=None) -> np.ndarray:
    """Up to ``n`` patch indices drawn without replacement (from ``pool`` when given)."""
    pool = np.arange(len(ps)) if pool is None else np.asarray(pool)
    k = min(int(n), len(pool))
    return np.sort(rng.choice(pool, k, replace=False))


def _ceiling_partners(ps, idx, rng) -> np.ndarray:
    """For each chosen patch, another patch of the same micrograph (non-overlapping if any)."""
    out = np.empty(len(idx), dtype=np.int64)
    P = ps.patch
    for j, i in enumerate(idx):
        same = np.flatnonzero(ps.micrograph_ids == ps.micrograph_ids[i])
        same = same[same != i]
        if len(same) == 0:
            raise BadInputError(ps.sources[i], "has a single patch: the same-micrograph baseline "
                                               "needs at least two (use a smaller --stride)")
        d = np.abs(ps.coords[same] - ps.coords[i]).max(axis=1)
        apart = same[d >= P]
        out[j] = rng.choice(apart if len(apart) else same)
    return out


def _md_table(rows) -> list[str]:
    """Markdown lines of a table given as rows of cells (the first row is the header)."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return lines + ["| " + " | ".join(c.replace("|", "/") for c in row) + " |"
                    for row in rows[1:]]


def _rho_cells(row, per_descriptor, notes) -> list[str]:
    """One cell per descriptor of a ``{descriptor: {"rho", "n", "note"}}`` dict: the signed rho
    (with the patch count when it differs from the row's), or "undefined [i]" with its note
    appended to ``notes``."""
    cells = []
    for k in MEASURED_DESCRIPTORS:
        f = per_descriptor[k]
        if f["rho"] is None:
            notes.append(f"{row['name']}, {DESCRIPTORS[k][0]}: {f['note']}")
            cells.append(f"undefined [{len(notes)}]")
        else:
            ci = f.get("interval")
            cells.append(f"{f['rho']:+.2f}"
                         + ("" if ci is None else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]")
                         + (f" (n={f['n']})" if f["n"] != row["n"] else ""))
    return cells


@dataclass
class EvaluationReport:
    """Result of :func:`evaluate_models`: one row per model and per baseline.

    ``rows``: list of dicts with ``name``, ``kind`` (``"model"``, ``"ceiling"``, ``"floor"``),
    ``latent_dim``, ``patch``, ``n``, per metric either a summary dict (mean, std, sem,
    median, n) or a string saying why it is not available, ``fidelity`` (descriptor ->
    ``{"rho", "p", "n", "note"}``, rho None with the note when undefined; None for a floor
    without partners), ``graphite_found`` (``{"input", "compared"}``: patches whose mask is not
    empty) and, for models, ``code_fidelity`` (the same shape as ``fidelity``: how well a
    cross-validated ridge regression on the latent code predicts each input descriptor; None
    for a model without ``transform``) and ``specificity`` (dict from
    :func:`matrep.metrics.specificity.own_vs_other` without the per-patch arrays, or a string
    saying why not). ``scores`` keeps the raw per-patch values (row name -> metric -> list),
    ``patches`` the patches drawn (patch size -> list of [micrograph id, y, x]).
    """

    rows: list
    metrics: tuple
    settings: dict
    scores: dict = field(default_factory=dict)
    patches: dict = field(default_factory=dict)

    def table(self) -> list[list[str]]:
        head = ["model", "latent", "patch", "n"] + [METRIC_INFO[m][0] for m in self.metrics]
        body = []
        for r in self.rows:
            cells = [r["name"], "-" if r.get("latent_dim") is None else str(r["latent_dim"]),
                     str(r["patch"]), str(r["n"])]
            for m in self.metrics:
                v = r[m]
                cells.append(v if isinstance(v, str) else f"{v['mean']:.4f} ± {v['std']:.4f}")
            body.append(cells)
        return [head] + body

    def fidelity_table(self) -> tuple[list[list[str]], list[str]]:
        """Rows of the descriptor-fidelity table and the notes of its undefined cells."""
        head = ["model", "n", "graphite found"] \
            + [DESCRIPTORS[k][0] for k in MEASURED_DESCRIPTORS] + ["specificity"]
        body, notes = [head], []
        for r in self.rows:
            fid = r.get("fidelity")
            if fid is None:
                continue
            g = r.get("graphite_found") or {}
            cells = [r["name"], str(r["n"]), f"{g.get('input', '?')} → {g.get('compared', '?')}"]
            cells += _rho_cells(r, fid, notes)
            sp = r.get("specificity")
            cells.append("-" if sp is None else sp if isinstance(sp, str) else
                         f"{100 * sp['frac_own_lower']:.0f} % (own/other {sp['ratio']:.2f})")
            body.append(cells)
        return body, notes

    def to_markdown(self) -> str:
        lines = _md_table(self.table())
        notes = [f"- {METRIC_INFO[m][0]}: {METRIC_INFO[m][1]}." for m in self.metrics]
        s = self.settings
        notes.append(f"- mean ± standard deviation over n patches drawn with seed {s['seed']} "
                     f"from {s['images']} (stride {s['stride']})"
                     + (", only patches the model(s) held out from training" if s.get("held_out")
                        else "") + "; 1 = same texture.")
        notes.append("- ceiling: another patch of the same micrograph (non-overlapping where "
                     "possible); floor: " + s["floor_source"] + ".")
        if s.get("pixel_sizes"):
            from ..scale import format_summary

            notes.append(f"- scale: {format_summary(s['pixel_sizes'])}.")
        out = ("# Reconstruction texture similarity\n\n" + "\n".join(lines) + "\n\n"
               + "\n".join(notes) + "\n")
        ft, undefined = self.fidelity_table()
        if len(ft) > 1:
            lines = _md_table(ft)
            fnotes = [
                "- Spearman rho across the n patches between each descriptor measured on the "
                "input patch and on its reconstruction (baselines: on the partner patch), both "
                "segmented the same way: graphite = pixels at or below the image's Otsu "
                f"threshold, none when its two classes differ by less than "
                f"{s.get('min_contrast', MIN_CONTRAST)} in grey level "
                "(`matrep.metrics.morphology`); descriptors of "
                "`matrep.datasets.descriptors.measure_mask` in pixel units, particles under "
                f"{s.get('min_diameter_px', 3.0):g} px left out. (n=k): patches where the "
                "descriptor is defined on both sides (mean diameter and nodularity need a "
                "particle). In brackets: a 90 % bootstrap interval of rho (the patches "
                "resampled, `matrep.metrics.correlation.spearman_interval`): how far rho from "
                "these n patches may be from that of the data they stand for. graphite found: "
                "patches with graphite in the input → in the reconstruction (or partner patch).",
                "- specificity: share of patches whose own reconstruction is closer in style "
                "loss than the reconstruction of a patch of another micrograph; own/other: "
                "ratio of the mean style losses."]
            fnotes += [f"- [{i}] {u}" for i, u in enumerate(undefined, start=1)]
            out += ("\n## Descriptor fidelity\n\n" + "\n".join(lines) + "\n\n"
                    + "\n".join(fnotes) + "\n")
        ct, cundef = self.code_table()
        if len(ct) > 1:
            lines = _md_table(ct)
            cnotes = [
                "- Spearman rho across the same patches between each input descriptor and its "
                f"prediction from the model's latent code: a ridge regression on the posterior "
                f"means, predicted out of fold ({CODE_FOLDS}-fold). Read it beside the "
                "reconstruction's fidelity above: a descriptor the code carries and the "
                "reconstruction loses is lost by the decoder."]
            cnotes += [f"- [{i}] {u}" for i, u in enumerate(cundef, start=1)]
            out += ("\n## What the latent code carries\n\n" + "\n".join(lines) + "\n\n"
                    + "\n".join(cnotes) + "\n")
        return out

    def code_table(self) -> tuple[list[list[str]], list[str]]:
        """Rows of the code-fidelity table (models with a latent code) and its notes."""
        head = ["model", "n"] + [DESCRIPTORS[k][0] for k in MEASURED_DESCRIPTORS]
        body, notes = [head], []
        for r in self.rows:
            cf = r.get("code_fidelity")
            if not cf:
                continue
            body.append([r["name"], str(r["n"])] + _rho_cells(r, cf, notes))
        return body, notes

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        head = ["name", "kind", "latent_dim", "patch", "n"]
        for m in self.metrics:
            head += [f"{m}_mean", f"{m}_std", f"{m}_sem", f"{m}_note"]
        for k in MEASURED_DESCRIPTORS:
            head += [f"fidelity_rho_{k}", f"fidelity_low_{k}", f"fidelity_high_{k}",
                     f"fidelity_n_{k}", f"fidelity_note_{k}"]
        head += [f"code_rho_{k}" for k in MEASURED_DESCRIPTORS]
        head += ["graphite_found_input", "graphite_found_compared"]
        head += ["specificity_frac_own_lower", "specificity_ratio", "specificity_note"]
        w.writerow(head)
        for r in self.rows:
            row = [r["name"], r["kind"], r.get("latent_dim") if r.get("latent_dim") is not None
                   else "", r["patch"], r["n"]]
            for m in self.metrics:
                v = r[m]
                row += ["", "", "", v] if isinstance(v, str) else \
                    [f"{v['mean']:.6f}", f"{v['std']:.6f}", f"{v['sem']:.6f}", ""]
            fid = r.get("fidelity") or {}
            for k in MEASURED_DESCRIPTORS:
                f = fid.get(k)
                ci = None if f is None else f.get("interval")
                row += ["", "", "", "", ""] if f is None else \
                    ["" if f["rho"] is None else f"{f['rho']:.6f}",
                     "" if ci is None else f"{ci[0]:.4f}", "" if ci is None else f"{ci[1]:.4f}",
                     f["n"], f["note"] or ""]
            cf = r.get("code_fidelity") or {}
            row += ["" if cf.get(k, {}).get("rho") is None else f"{cf[k]['rho']:.6f}"
                    for k in MEASURED_DESCRIPTORS]
            g = r.get("graphite_found") or {}
            row += [g.get("input", ""), g.get("compared", "")]
            sp = r.get("specificity")
            row += ["", "", sp] if isinstance(sp, str) else ["", "", ""] if sp is None else \
                [f"{sp['frac_own_lower']:.6f}", f"{sp['ratio']:.6f}", ""]
            w.writerow(row)
        return buf.getvalue()

    def to_dict(self) -> dict:
        return {"rows": self.rows, "metrics": list(self.metrics), "settings": self.settings,
                "metric_info": {m: METRIC_INFO[m][1] for m in self.metrics},
                "scores": self.scores, "patches": self.patches}

    def write(self, out_dir) -> dict:
        """Write evaluation.json, evaluation.csv and evaluation.md into ``out_dir`` (atomically)."""
        return _write_outputs(self, out_dir, "evaluation.json", "evaluation.csv", "evaluation.md")


def evaluate_models(models, images, *, n: int = 100, other_images=None, stride: int = 50,
                    crop=None, crop_bottom: int = 0, seed: int = 0, metrics=DEFAULT_METRICS,
                    held_out: bool = False, device=None, vgg16_weights=None, dists_weights=None,
                    batch_size: int = 16, min_diameter_px: float = 3.0,
                    log=None, scale=None) -> EvaluationReport:
    """Texture similarity, descriptor fidelity and specificity of reconstructions (Table 1).

    Parameters
    ----------
    models : list of model folders or fitted encoders with ``reconstruct``
    images : folder, glob or list of micrographs (held out from training, or the training
        images with ``held_out=True``)
    n : int, default 100 — patches per model (fewer if the images have fewer)
    other_images : folder/glob/list, optional — another material for the floor baseline;
        without it, the floor pairs each patch with a patch of a different micrograph in
        ``images``
    stride, crop, crop_bottom : patching of the images (see :func:`matrep.io.load_patches`)
    seed : int, default 0 — patch choice, baseline partners and specificity partners
    metrics : names from :data:`METRIC_INFO`
    held_out : bool, default False
        Draw the patches only from those every model held out from training
        (``model.held_out_patches(patchset)``, the run's validation split). ``images`` and the
        patching must then be those of training; a run folder's ``fit.json`` is checked.
    device : "auto", "cpu", "cuda", ... (metrics only; models use their own device setting)
    vgg16_weights, dists_weights : DISTS ingredients (see :mod:`matrep.metrics.dists`)
    min_diameter_px : particles narrower than this are left out of the descriptors
    log : callable(str), optional — progress messages
    scale : matrep.scale.ScaleOptions, optional — pixel sizes and resampling of ``images`` and
        ``other_images`` (default: the scale the first model folder was trained at, if any)

    Returns
    -------
    EvaluationReport
        Per model, besides the texture metrics: ``fidelity`` (descriptor -> Spearman rho of
        the descriptor measured on input and reconstruction, :mod:`matrep.metrics.morphology`;
        ``None`` with a note when undefined) and ``specificity`` (own-vs-other distance,
        :func:`matrep.metrics.specificity.own_vs_other`, with the model's ``style_distance``).
        The ceiling and floor rows carry the fidelity of their partner patches.
    """
    from ..io import load_patches
    from ..scale import ScaleOptions, model_scale
    from ..scale.resampling import warn_unscaled_models

    if scale is None:
        scale = ScaleOptions(model_scale=next((s for m in models if isinstance(m, (str, Path))
                                               and (s := model_scale(m)) is not None), None))
    else:
        warn_unscaled_models(models, scale)

    log = log or (lambda s: None)
    metrics = tuple(metrics)
    loaded = [_resolve_model(m) for m in models]
    if not loaded:
        raise BadInputError(None, "no model given; pass at least one --model")
    rows, scores = [], {}
    sets, picked = {}, {}
    floor_source = None
    sizes = sorted({_patch_size(m) for _, m in loaded})
    for P in sizes:
        ps = load_patches(images, patch=P, stride=stride, crop=crop, crop_bottom=crop_bottom,
                          scale=scale)
        rng = np.random.default_rng(seed)
        pool = None
        if held_out:
            pool = _held_out_pool(ps, [(nm, m) for nm, m in loaded if _patch_size(m) == P],
                                  images, stride, crop, crop_bottom)
            log(f"{len(pool)} held-out patches of {len(ps)}")
        idx = _pick_patches(ps, n, rng, pool)
        x = ps.patches[idx]
        tag = "" if len(sizes) == 1 else f" ({P} px)"
        log(f"measuring descriptors of {len(idx)} patches{tag}")
        dx = descriptor_array(x, min_diameter_px=min_diameter_px)
        sets[P] = (x, ps.micrograph_ids[idx], dx)
        picked[str(P)] = [[str(ps.micrograph_ids[i]), int(ps.coords[i][0]), int(ps.coords[i][1])]
                          for i in idx]
        # ceiling
        partners = _ceiling_partners(ps, idx, rng)
        # floor
        if other_images is not None:
            other = load_patches(other_images, patch=P, stride=stride, scale=scale)
            fl = other.patches[rng.choice(len(other), len(idx), replace=len(other) < len(idx))]
            floor_source = f"a random patch of {other_images}"
        else:
            fl = []
            for i in idx:
                cand = np.flatnonzero(ps.micrograph_ids != ps.micrograph_ids[i])
                fl.append(None if len(cand) == 0 else ps.patches[rng.choice(cand)])
            floor_source = ("a random patch of a different micrograph in the same folder "
                            "(pass --other-images for another material)")
            if any(f is None for f in fl):
                fl = None
            else:
                fl = np.stack(fl)
        log(f"scoring the same-micrograph baseline on {len(idx)} patches{tag}")
        sc = score_pairs(x, ps.patches[partners], metrics, device=device,
                         vgg16_weights=vgg16_weights, dists_weights=dists_weights,
                         batch_size=batch_size)
        rows.append(_row(f"baseline: same micrograph (ceiling){tag}", "ceiling", None, P, len(idx),
                         sc, metrics))
        _fidelity(rows[-1], dx, ps.patches[partners], min_diameter_px, "other patch")
        scores[rows[-1]["name"]] = sc
        if fl is None:
            sc = {m: "n/a (only one micrograph; pass --other-images)" for m in metrics}
        else:
            log(f"scoring the other-material baseline on {len(idx)} patches{tag}")
            sc = score_pairs(x, fl, metrics, device=device,
                             vgg16_weights=vgg16_weights, dists_weights=dists_weights,
                             batch_size=batch_size)
        rows.append(_row(f"baseline: other material (floor){tag}", "floor", None, P, len(idx),
                         sc, metrics))
        if fl is None:
            rows[-1]["fidelity"] = None
        else:
            _fidelity(rows[-1], dx, fl, min_diameter_px, "other patch")
        scores[rows[-1]["name"]] = sc
    model_rows = []
    for name, model in loaded:
        P = _patch_size(model)
        x, ids, dx = sets[P]
        log(f"reconstructing {len(x)} patches with {name}")
        rec = np.asarray(model.reconstruct(x), dtype=np.float32)
        if rec.shape != x.shape:
            raise MatrepError(f"{name}: reconstruct returned shape {rec.shape}, expected {x.shape}")
        rec = np.clip(rec, 0.0, 1.0)
        sc = score_pairs(x, rec, metrics, device=device, vgg16_weights=vgg16_weights,
                         dists_weights=dists_weights, batch_size=batch_size)
        row = _row(name, "model", _latent_dim(model), P, len(x), sc, metrics)
        log(f"descriptor fidelity, code probe and specificity of {name}")
        _fidelity(row, dx, rec, min_diameter_px, "reconstruction")
        row["code_fidelity"] = _code_fidelity(model, x, dx, seed)
        row["specificity"] = _specificity(model, x, rec, ids, seed)
        model_rows.append(row)
        scores[name] = sc
    settings = {"images": str(images), "other_images": None if other_images is None
                else str(other_images), "n": int(n), "stride": int(stride),
                "crop": list(crop) if crop is not None else None, "crop_bottom": int(crop_bottom),
                "seed": int(seed), "floor_source": floor_source, "held_out": bool(held_out),
                "min_diameter_px": float(min_diameter_px), "min_contrast": MIN_CONTRAST,
                "pixel_sizes": ps.scale.summary()}
    raw = {k: {m: (v if isinstance(v, str) else np.round(v, 6).tolist()) for m, v in d.items()}
           for k, d in scores.items()}
    return EvaluationReport(model_rows + rows, metrics, settings, raw, picked)


def _fidelity(row, dx, other, min_diameter_px, other_name):
    """Set ``row["fidelity"]`` (descriptor -> Spearman dict of the input descriptors ``dx``
    against ``other`` patches) and ``row["graphite_found"]`` (patches with a non-empty mask)."""
    from ..metrics.correlation import spearman_interval

    do = descriptor_array(other, min_diameter_px=min_diameter_px)
    row["fidelity"] = {k: v.to_dict()
                       for k, v in fidelity_from_arrays(dx, do, other_name=other_name).items()}
    for j, k in enumerate(MEASURED_DESCRIPTORS):  # how far n patches' rho may be off
        ci = spearman_interval(dx[:, j], do[:, j])
        row["fidelity"][k]["interval"] = None if ci is None else [round(v, 4) for v in ci]
    row["graphite_found"] = {"input": int((dx[:, 0] > 0).sum()),
                             "compared": int((do[:, 0] > 0).sum())}


#: folds and ridge penalties of the code-fidelity probe
CODE_FOLDS = 5
CODE_ALPHAS = tuple(np.logspace(-3, 3, 13))


def _code_fidelity(model, x, dx, seed):
    """How much of each input descriptor the latent code carries.

    A ridge regression from the posterior means (``model.transform``) to the descriptor,
    predicted out of fold (``CODE_FOLDS``-fold, shuffled with ``seed``; penalty chosen by
    RidgeCV on each training fold), scored by the Spearman rho of input descriptor against
    prediction. Beside the reconstruction's fidelity it says where a shortfall lies: a code
    that carries a descriptor the reconstruction loses points at the decoder. ``None`` for a
    model without ``transform``; a descriptor with fewer than ``2 * CODE_FOLDS`` defined
    patches is undefined, with a note.
    """
    if not hasattr(model, "transform"):
        return None
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ..metrics.correlation import spearman

    mu = np.asarray(model.transform(x), dtype=np.float64).reshape(len(x), -1)
    out = {}
    for j, k in enumerate(MEASURED_DESCRIPTORS):
        ok = np.isfinite(dx[:, j]) & np.isfinite(mu).all(axis=1)
        if ok.sum() < 2 * CODE_FOLDS:
            out[k] = {"rho": None, "p": None, "n": int(ok.sum()),
                      "note": f"undefined: {int(ok.sum())} patches with the descriptor defined, "
                              f"the {CODE_FOLDS}-fold probe needs {2 * CODE_FOLDS}"}
            continue
        probe = make_pipeline(StandardScaler(), RidgeCV(alphas=CODE_ALPHAS))
        pred = cross_val_predict(probe, mu[ok], dx[ok, j],
                                 cv=KFold(CODE_FOLDS, shuffle=True, random_state=int(seed)))
        out[k] = spearman(dx[ok, j], pred, x_name="input",
                          y_name="prediction from the code").to_dict()
    return out


def _specificity(model, x, rec, ids, seed):
    """Own-vs-other style loss of a model's reconstructions, or why it is not available."""
    from ..metrics.specificity import own_vs_other

    if not hasattr(model, "style_distance"):
        return "n/a (the model has no style_distance)"
    if len(set(np.asarray(ids).tolist())) < 2:
        return "n/a (patches of one micrograph only)"
    r = own_vs_other(x, rec, ids, model.style_distance, seed=seed)
    return {k: r[k] for k in ("frac_own_lower", "own_mean", "other_mean", "own_median",
                              "other_median", "ratio", "n")}


def _row(name, kind, latent, P, n, sc, metrics):
    r = {"name": name, "kind": kind, "latent_dim": latent, "patch": int(P), "n": int(n)}
    for m in metrics:
        r[m] = sc[m] if isinstance(sc[m], str) else _summary(sc[m])
    return r
