r"""Judging trained models: texture similarity of reconstructions and meaning of latent dimensions.

Two library entry points, behind ``matrep evaluate`` and ``matrep interpret``:

:func:`evaluate_models`
    The paper's Table 1 on your data. ``n`` patches are drawn (seeded) from the given
    micrographs; every model reconstructs them and each metric compares patch and
    reconstruction. Two baselines on the *same* patches bracket the numbers:

    * **ceiling**: another patch of the same micrograph (not overlapping the first where the
      micrograph allows): the score of a perfect texture model, which reproduces the texture
      but not the pixels;
    * **floor**: a patch of another material: from ``other_images`` when given, otherwise a
      patch of a *different micrograph* of the same folder (a floor only if the folder holds
      different microstructures; pass ``other_images`` for a true other material).

    *Descriptor fidelity*: input and reconstruction are segmented the same way and measured
    (:mod:`matrep.metrics.morphology`); per descriptor (area fraction, particle density, mean
    diameter, nodularity) the Spearman rho across patches, undefined with a note when one
    side is constant. *Specificity*: own-vs-other style loss
    (:func:`matrep.metrics.specificity.own_vs_other`).

    Pass micrographs the models were not trained on: the patches are held out only when the
    images are. Or pass the training images with ``held_out=True``: the draw is restricted to
    the patches the models held out (``model.held_out_patches``).

:func:`interpret_model`
    For every latent dimension its Spearman correlation with each factor: numeric columns of a
    labels CSV (every patch inherits its micrograph's row) or, without labels, descriptors
    measured on each patch (dark phase by :func:`matrep.metrics.morphology.segment_dark_phase`,
    then :func:`matrep.datasets.descriptors.measure_mask`: graphite fraction, particle density,
    mean equivalent diameter, nodularity). It ranks the dimensions that track each factor,
    draws traversals of the top ones, and scores disentanglement by the Mutual Information Gap
    (Chen et al. 2018) and the Separated Attribute Predictability (Kumar et al. 2018), both
    defined in :mod:`matrep.metrics.disentanglement`.

    R. T. Q. Chen, X. Li, R. Grosse and D. Duvenaud, "Isolating sources of disentanglement in
    variational autoencoders", NeurIPS 2018.
    A. Kumar, P. Sattigeri and A. Balakrishnan, "Variational inference of disentangled latent
    concepts from unlabeled observations", ICLR 2018.

The models only need the methods of :class:`matrep.plugins.texturevae.TextureVAEEncoder` used
here: ``transform``, ``reconstruct`` (evaluate) and ``traverse`` (figures and the traversal
ranking), optionally ``style_distance`` (specificity) and ``held_out_patches`` (held-out
draws), and a ``latent_dim`` and ``patch_size_`` (or ``patch_size``).

:func:`traversal_effects` (behind ``interpret`` and ``matrep traverse --dims auto``) sets each
latent dimension of some base patches to -3..3, measures the descriptors of the decoded
images and ranks the dimensions per descriptor by monotonicity (Spearman of step vs
descriptor) and range moved relative to the data's inter-quartile range.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path, atomic_write_text
from .errors import BadInputError, LabelsError, MatrepError
# one implementation each, in matrep.metrics (re-exported here for the reports' users)
from .metrics.correlation import Spearman, spearman, spearman_matrix  # noqa: F401
from .metrics.disentanglement import mutual_information_gap, sap_score  # noqa: F401
from .metrics.morphology import (DESCRIPTORS, MEASURED_DESCRIPTORS,  # noqa: F401
                                 MIN_CONTRAST, descriptor_array, fidelity_from_arrays,
                                 measure_descriptors, segment_dark_phase)

#: metric key -> (column title, description)
METRIC_INFO = {
    "stsim2": ("STSIM-2", "STSIM-2 (Zujovic et al. 2013), 7x7 sliding window as in the "
                          "implementation the texture-VAE paper used"),
    "stsim2_global": ("STSIM-2 global", "STSIM-2 with one statistic per subband over the whole "
                                        "patch (shift invariant)"),
    "dists": ("DISTS", "DISTS similarity 1 - D (Ding et al. 2020), published alpha/beta"),
}
DEFAULT_METRICS = ("stsim2", "stsim2_global", "dists")

#: label columns never used as factors (bookkeeping of matrep's synthetic data sets)
IGNORED_LABEL_COLUMNS = {"seed", "solver_residual", "solver_iterations", "pixel_size_um",
                         "micrograph", "mask_file", "group"}


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _patch_size(model) -> int:
    for attr in ("patch_size_", "patch_size"):
        v = getattr(model, attr, None)
        if v is not None:
            return int(v)
    raise BadInputError(None, f"model {type(model).__name__} has no patch_size_; is it fitted?")


def _latent_dim(model):
    v = getattr(model, "latent_dim", None)
    return int(v) if v is not None else None


def _resolve_model(m):
    """(name, model) from a path or an encoder object."""
    if isinstance(m, (str, Path)):
        from .registry import load_model

        return str(m), load_model(m)
    return getattr(m, "name", type(m).__name__), m


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

    from .metrics.dists import load_dists, missing_ingredients
    from .metrics.stsim import stsim2_variants

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


# ---------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------
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


@dataclass
class EvaluationReport:
    """Result of :func:`evaluate_models`: one row per model and per baseline.

    ``rows``: list of dicts with ``name``, ``kind`` (``"model"``, ``"ceiling"``, ``"floor"``),
    ``latent_dim``, ``patch``, ``n``, per metric either a summary dict (mean, std, sem,
    median, n) or a string saying why it is not available, ``fidelity`` (descriptor ->
    ``{"rho", "p", "n", "note"}``, rho None with the note when undefined; None for a floor
    without partners), ``graphite_found`` (``{"input", "compared"}``: patches whose mask is not
    empty) and, for models, ``specificity`` (dict from
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
            for k in MEASURED_DESCRIPTORS:
                f = fid[k]
                if f["rho"] is None:
                    notes.append(f"{r['name']}, {DESCRIPTORS[k][0]}: {f['note']}")
                    cells.append(f"undefined [{len(notes)}]")
                else:
                    cells.append(f"{f['rho']:+.2f}" + (f" (n={f['n']})" if f["n"] != r["n"]
                                                       else ""))
            sp = r.get("specificity")
            cells.append("-" if sp is None else sp if isinstance(sp, str) else
                         f"{100 * sp['frac_own_lower']:.0f} % (own/other {sp['ratio']:.2f})")
            body.append(cells)
        return body, notes

    def to_markdown(self) -> str:
        t = self.table()
        lines = ["| " + " | ".join(t[0]) + " |", "|" + "---|" * len(t[0])]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in t[1:]]
        notes = [f"- {METRIC_INFO[m][0]}: {METRIC_INFO[m][1]}." for m in self.metrics]
        s = self.settings
        notes.append(f"- mean ± standard deviation over n patches drawn with seed {s['seed']} "
                     f"from {s['images']} (stride {s['stride']})"
                     + (", only patches the model(s) held out from training" if s.get("held_out")
                        else "") + "; 1 = same texture.")
        notes.append("- ceiling: another patch of the same micrograph (non-overlapping where "
                     "possible); floor: " + s["floor_source"] + ".")
        if s.get("pixel_sizes"):
            from .scale import format_summary

            notes.append(f"- scale: {format_summary(s['pixel_sizes'])}.")
        out = ("# Reconstruction texture similarity\n\n" + "\n".join(lines) + "\n\n"
               + "\n".join(notes) + "\n")
        ft, undefined = self.fidelity_table()
        if len(ft) > 1:
            lines = ["| " + " | ".join(ft[0]) + " |", "|" + "---|" * len(ft[0])]
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in ft[1:]]
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
                "particle). graphite found: patches with graphite in the input → in the "
                "reconstruction (or partner patch).",
                "- specificity: share of patches whose own reconstruction is closer in style "
                "loss than the reconstruction of a patch of another micrograph; own/other: "
                "ratio of the mean style losses."]
            fnotes += [f"- [{i}] {u}" for i, u in enumerate(undefined, start=1)]
            out += ("\n## Descriptor fidelity\n\n" + "\n".join(lines) + "\n\n"
                    + "\n".join(fnotes) + "\n")
        return out

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        head = ["name", "kind", "latent_dim", "patch", "n"]
        for m in self.metrics:
            head += [f"{m}_mean", f"{m}_std", f"{m}_sem", f"{m}_note"]
        for k in MEASURED_DESCRIPTORS:
            head += [f"fidelity_rho_{k}", f"fidelity_n_{k}", f"fidelity_note_{k}"]
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
                row += ["", "", ""] if f is None else \
                    ["" if f["rho"] is None else f"{f['rho']:.6f}", f["n"], f["note"] or ""]
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


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


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
    from .io import load_patches
    from .scale import ScaleOptions, model_scale

    if scale is None:
        scale = ScaleOptions(model_scale=next((s for m in models if isinstance(m, (str, Path))
                                               and (s := model_scale(m)) is not None), None))

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
        log(f"descriptor fidelity and specificity of {name}")
        _fidelity(row, dx, rec, min_diameter_px, "reconstruction")
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
    do = descriptor_array(other, min_diameter_px=min_diameter_px)
    row["fidelity"] = {k: v.to_dict()
                       for k, v in fidelity_from_arrays(dx, do, other_name=other_name).items()}
    row["graphite_found"] = {"input": int((dx[:, 0] > 0).sum()),
                             "compared": int((do[:, 0] > 0).sum())}


def _specificity(model, x, rec, ids, seed):
    """Own-vs-other style loss of a model's reconstructions, or why it is not available."""
    from .metrics.specificity import own_vs_other

    if not hasattr(model, "style_distance"):
        return "n/a (the model has no style_distance)"
    if len(set(np.asarray(ids).tolist())) < 2:
        return "n/a (patches of one micrograph only)"
    r = own_vs_other(x, rec, ids, model.style_distance, seed=seed)
    return {k: r[k] for k in ("frac_own_lower", "own_mean", "other_mean", "own_median",
                              "other_median", "ratio", "n")}


def _held_out_pool(ps, models, images, stride, crop, crop_bottom) -> np.ndarray:
    """Indices of ``ps`` that every model held out from training."""
    keep = np.ones(len(ps), bool)
    for name, model in models:
        if not hasattr(model, "held_out_patches"):
            raise BadInputError(None, f"{name}: this model does not say which patches it held "
                                      "out from training; evaluate it on other images without "
                                      "--held-out")
        _check_training_patching(name, images, stride, crop, crop_bottom)
        val = model.held_out_patches(ps)
        expected = getattr(model, "n_val_patches_", None)
        if expected is not None and len(val) != int(expected):
            raise BadInputError(None, f"{name}: held out {int(expected)} patches in training but "
                                      f"{len(val)} of these images; pass the training --images, "
                                      "--stride and --crop options of `matrep fit`")
        key = {(s, int(c[0]), int(c[1])) for s, c in zip(val.sources.tolist(), val.coords)}
        keep &= np.array([(s, int(c[0]), int(c[1])) in key
                          for s, c in zip(ps.sources.tolist(), ps.coords)])
    pool = np.flatnonzero(keep)
    if len(pool) == 0:
        raise BadInputError(None, "the models hold out no common patch of these images; "
                                  "evaluate them one at a time")
    return pool


def _check_training_patching(name, images, stride, crop, crop_bottom):
    """With a run folder's ``fit.json``: the images and patching must be those of training."""
    from .io import list_images

    fit = Path(name) / "fit.json"
    if not fit.is_file():
        return
    rec = json.loads(fit.read_text()).get("patches", {})
    want = {"stride": rec.get("stride"), "crop": rec.get("crop"),
            "crop_bottom": rec.get("crop_bottom", 0)}
    got = {"stride": int(stride), "crop": list(crop) if crop is not None else None,
           "crop_bottom": int(crop_bottom)}
    diff = [f"--{k.replace('_', '-')} {want[k]} (got {got[k]})" for k in want
            if want[k] is not None and want[k] != got[k]]
    tr = rec.get("images")
    if tr:
        def files(src):
            return sorted(str(Path(f).resolve()) for f in list_images(
                src[0] if isinstance(src, (list, tuple)) and len(src) == 1 else src))
        try:
            same = files(tr) == files(images)
        except MatrepError:
            same = False
        if not same:
            diff.insert(0, f"--images {' '.join(map(str, tr))}")
    if diff:
        raise BadInputError(fit, "--held-out replays the training split, which needs the "
                                 f"training patching: {'; '.join(diff)}")


def _row(name, kind, latent, P, n, sc, metrics):
    r = {"name": name, "kind": kind, "latent_dim": latent, "patch": int(P), "n": int(n)}
    for m in metrics:
        r[m] = sc[m] if isinstance(sc[m], str) else _summary(sc[m])
    return r


# ---------------------------------------------------------------------------------------
# interpret
# ---------------------------------------------------------------------------------------
def _label_factors(ps, labels, file_column: str, factor_names):
    import pandas as pd

    from .labels import match_labels, read_labels

    df = read_labels(labels, file_column=file_column)
    match = match_labels(ps, df, file_column=file_column, warn=False)
    table = match.table
    if factor_names:
        missing = [c for c in factor_names if c not in table.columns]
        if missing:
            raise LabelsError(f"{labels}: no column(s) {', '.join(missing)} (columns are: "
                              f"{', '.join(map(str, table.columns))})")
        cols = list(factor_names)
    else:
        cols = [c for c in table.columns if c not in IGNORED_LABEL_COLUMNS]
    out = {}
    for c in cols:
        v = pd.to_numeric(table[c], errors="coerce")
        if v.notna().sum() >= 3 and v.nunique() >= 2:
            out[c] = v.astype(float)
        elif factor_names:
            raise LabelsError(f"{labels}: column {c!r} is not numeric with at least two values")
    if not out:
        raise LabelsError(f"{labels}: no numeric label column with at least two values to "
                          "correlate with (name them with --factors)")
    return pd.DataFrame(out), match.describe()


# ---------------------------------------------------------------------------------------
# what a latent traversal does to the decoded image
# ---------------------------------------------------------------------------------------
#: the traversal of ``matrep interpret`` and ``traverse --dims auto``: z_j = -3, -2, ..., 3
TRAVERSAL_VALUES = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
#: a traversal is monotone when |Spearman(step value, descriptor)| reaches this
MONOTONE_RHO = 0.9
#: ... and it moves the descriptor enough when its range is at least this share of the IQR
MIN_IQR_SHARE = 0.5
#: the descriptors with a goal in issue 14 (area fraction, size, nodularity)
GOAL_DESCRIPTORS = ("graphite_fraction", "mean_eq_diameter", "nodularity")


@dataclass
class TraversalRanking:
    """How traversing each latent dimension moves each descriptor of the decoded image.

    Attributes
    ----------
    dims : list of int — the dimensions traversed
    values : array of shape (S,) — the values each dimension is set to
    descriptors : list of str — :data:`MEASURED_DESCRIPTORS`
    curves : array of shape (len(dims), K, S) — each descriptor of the decoded image at each
        step, averaged over the base patches (NaN where no base had it defined)
    rho : array of shape (len(dims), K) — Spearman rho of step value vs curve (NaN: undefined,
        e.g. the dimension does not move the descriptor at all)
    span : array of shape (len(dims), K) — max - min of the curve, in descriptor units
    iqr : array of shape (K,) — inter-quartile range of each descriptor over the reference
        patches (the data)
    n_bases, n_reference : int
    found, found_reference : float — share of the decoded images, and of the reference
        patches, in which graphite was found (a non-empty mask): a decoder whose images hold
        no segmentable graphite gives rankings of little meaning
    """

    dims: list
    values: np.ndarray
    descriptors: list
    curves: np.ndarray
    rho: np.ndarray
    span: np.ndarray
    iqr: np.ndarray
    n_bases: int
    n_reference: int
    found: float = float("nan")
    found_reference: float = float("nan")

    @property
    def moved(self) -> np.ndarray:
        """span / IQR, shape (len(dims), K) (NaN where the IQR is 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.iqr > 0, self.span / np.where(self.iqr > 0, self.iqr, 1), np.nan)

    def ranking(self, descriptor: str) -> list[dict]:
        """Dimensions ranked for one descriptor: first the monotone ones (|rho| >= 0.9) by range
        moved, then the others by |rho| x range moved; dimensions that leave it unchanged (rho
        undefined) are not listed."""
        k = self.descriptors.index(descriptor)
        rows = []
        for i, d in enumerate(self.dims):
            r, m = self.rho[i, k], self.moved[i, k]
            if not np.isfinite(r):
                continue
            m = float(m) if np.isfinite(m) else float("nan")
            rows.append({"dim": int(d), "rho": round(float(r), 4),
                         "span": float(self.span[i, k]), "moved_iqr": round(m, 4),
                         "monotone": bool(abs(r) >= MONOTONE_RHO),
                         "direction": "up" if r > 0 else "down"})

        def key(e):
            m = e["moved_iqr"] if np.isfinite(e["moved_iqr"]) else 0.0
            return (e["monotone"], m if e["monotone"] else abs(e["rho"]) * m)

        return sorted(rows, key=key, reverse=True)

    def top(self, descriptor: str) -> dict | None:
        """The best-ranked dimension for ``descriptor`` (None when no dimension moves it)."""
        r = self.ranking(descriptor)
        return r[0] if r else None

    def goals(self) -> dict:
        """Per descriptor: is there a dimension whose traversal moves it monotonically
        (|rho| >= 0.9) over at least half its inter-quartile range?"""
        out = {}
        for f in self.descriptors:
            ok = [e for e in self.ranking(f) if e["monotone"]
                  and np.isfinite(e["moved_iqr"]) and e["moved_iqr"] >= MIN_IQR_SHARE]
            t = ok[0] if ok else self.top(f)
            out[f] = {"met": bool(ok), "dim": None if t is None else t["dim"],
                      "rho": None if t is None else t["rho"],
                      "moved_iqr": None if t is None else t["moved_iqr"],
                      "goal": f in GOAL_DESCRIPTORS}
        return out

    def auto_dims(self) -> tuple[list[int], list[str]]:
        """The top dimension of each descriptor (each once) and a label for each:
        ``"dim 17: area fraction ↑"`` (several descriptors when one dimension tops several)."""
        dims, moves = [], {}
        for f in self.descriptors:
            t = self.top(f)
            if t is None:
                continue
            if t["dim"] not in moves:
                dims.append(t["dim"])
                moves[t["dim"]] = []
            moves[t["dim"]].append(f"{DESCRIPTORS[f][0]} {'↑' if t['rho'] > 0 else '↓'}")
        return dims, [f"dim {d}: {', '.join(moves[d])}" for d in dims]

    def to_dict(self) -> dict:
        def clean(a):
            return [None if not np.isfinite(x) else round(float(x), 6) for x in np.ravel(a)]

        return {"values": [float(v) for v in self.values], "dims": [int(d) for d in self.dims],
                "descriptors": list(self.descriptors), "n_bases": self.n_bases,
                "n_reference": self.n_reference, "graphite_found": round(self.found, 4),
                "graphite_found_reference": round(self.found_reference, 4),
                "iqr": dict(zip(self.descriptors, clean(self.iqr))),
                "monotone_rho": MONOTONE_RHO, "min_iqr_share": MIN_IQR_SHARE,
                "ranking": {f: self.ranking(f) for f in self.descriptors},
                "goals": self.goals(),
                "curves": {f: {str(d): clean(self.curves[i, k]) for i, d in enumerate(self.dims)}
                           for k, f in enumerate(self.descriptors)}}

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["descriptor", "rank", "dim", "rho", "span", "moved_iqr", "monotone",
                    "direction"])
        for f in self.descriptors:
            for i, e in enumerate(self.ranking(f), start=1):
                w.writerow([f, i, e["dim"], f"{e['rho']:.4f}", f"{e['span']:.6g}",
                            "" if not np.isfinite(e["moved_iqr"]) else f"{e['moved_iqr']:.4f}",
                            int(e["monotone"]), e["direction"]])
        return buf.getvalue()

    def markdown_lines(self, top_k: int = 5) -> list[str]:
        v = self.values
        lines = ["## What each dimension's traversal does to the decoded image", "",
                 f"Each dimension set to {', '.join(f'{x:g}' for x in v)} in the latents of "
                 f"{self.n_bases} base patches; each descriptor of the decoded image (same "
                 "segmentation as the data) averaged over the bases. rho: Spearman of step value "
                 "vs descriptor (monotone: |rho| >= "
                 f"{MONOTONE_RHO}); moved: range of the descriptor along the traversal / its "
                 f"inter-quartile range over {self.n_reference} data patches. Graphite found "
                 f"in {100 * self.found:.0f} % of the decoded images "
                 f"({100 * self.found_reference:.0f} % of the data patches).", "",
                 "| descriptor | IQR | goal met | top dimensions: rho, moved (x IQR) |",
                 "|---|---|---|---|"]
        goals = self.goals()
        for k, f in enumerate(self.descriptors):
            r = self.ranking(f)[:top_k]
            cells = ", ".join(f"z{e['dim']} ({e['rho']:+.2f}, {e['moved_iqr']:.2f})"
                              for e in r) or "none moves it"
            g = goals[f]
            met = ("yes" if g["met"] else "no") + ("" if g["goal"] else " (no goal)")
            iqr = f"{self.iqr[k]:.4g}" if np.isfinite(self.iqr[k]) else "undefined"
            lines.append(f"| {DESCRIPTORS[f][0]} | {iqr} | {met} | {cells} |")
        lines += ["", f"Goal: a dimension with |rho| >= {MONOTONE_RHO} that moves the descriptor "
                      f"over at least {MIN_IQR_SHARE:g} x its IQR (issue 14: area fraction, "
                      "mean diameter, nodularity)."]
        return lines


def spread_patches(micrograph_ids, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` indices, round-robin over micrographs (seeded within each)."""
    ids = np.asarray(micrograph_ids)
    rng = np.random.default_rng(seed)
    groups = [rng.permutation(np.flatnonzero(ids == m)) for m in dict.fromkeys(ids.tolist())]
    pick, k = [], 0
    while len(pick) < n and any(k < len(g) for g in groups):
        for g in groups:
            if k < len(g) and len(pick) < n:
                pick.append(int(g[k]))
        k += 1
    return np.array(pick, dtype=np.int64)


def traversal_effects(model, bases, *, reference=None, reference_descriptors=None,
                      values=TRAVERSAL_VALUES, dims=None, min_diameter_px: float = 3.0,
                      log=None) -> TraversalRanking:
    """Measure how traversing each latent dimension moves each descriptor of the decoded image.

    For every base patch b and dimension j, ``model.traverse(b, [j], values)`` decodes the
    latent of b with z_j set to each value; each decoded image is segmented and measured like
    the data (:func:`matrep.metrics.morphology.descriptor_array`), and the descriptor is
    averaged over the bases at each step. For each (dimension, descriptor): the Spearman rho of
    step value vs the averaged descriptor (monotonicity) and its range relative to the
    descriptor's inter-quartile range over the reference patches.

    Parameters
    ----------
    model : fitted encoder with ``traverse(x, dims, values)`` and ``latent_dim``
    bases : array of shape (B, P, P) — the patches whose latents are traversed
    reference, reference_descriptors : the data whose IQR scales the range: patches
        (n, P, P), or their descriptors already measured (n, 4); default: the bases
    values : the step values (default -3, -2, ..., 3)
    dims : latent dimensions to traverse (default: all)

    Returns
    -------
    TraversalRanking
    """
    log = log or (lambda s: None)
    bases = np.asarray(bases, dtype=np.float32)
    if bases.ndim != 3 or len(bases) == 0:
        raise BadInputError(None, f"traversal bases must have shape (B, P, P) with B >= 1, got "
                                  f"{bases.shape}")
    if not hasattr(model, "traverse"):
        raise BadInputError(None, f"model {type(model).__name__} cannot traverse its latent space")
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) < 3:
        raise BadInputError(None, "a traversal needs at least 3 step values, got "
                                  f"{values.tolist()}")
    if dims is None:
        ld = _latent_dim(model)
        if ld is None:
            raise BadInputError(None, "model has no latent_dim; pass the dimensions to traverse")
        dims = list(range(ld))
    dims = [int(d) for d in dims]
    if reference_descriptors is None:
        reference_descriptors = descriptor_array(bases if reference is None else reference,
                                                 min_diameter_px=min_diameter_px)
    ref = np.asarray(reference_descriptors, dtype=float)
    K, S = len(MEASURED_DESCRIPTORS), len(values)
    total = np.zeros((len(dims), S, K))
    count = np.zeros((len(dims), S, K))
    found = 0
    for b, x in enumerate(bases):
        log(f"traversal of {len(dims)} dimensions x {S} steps from base patch {b + 1}/{len(bases)}")
        imgs = np.asarray(model.traverse(x, dims, values), dtype=np.float32)
        if imgs.shape[:2] != (len(dims), S):
            raise MatrepError(f"traverse returned shape {imgs.shape}, expected "
                              f"({len(dims)}, {S}, H, W)")
        d = descriptor_array(np.clip(imgs.reshape(-1, *imgs.shape[2:]), 0.0, 1.0),
                             min_diameter_px=min_diameter_px).reshape(len(dims), S, K)
        ok = np.isfinite(d)
        total += np.where(ok, d, 0.0)
        count += ok
        found += int((d[..., 0] > 0).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        curves = np.where(count > 0, total / np.maximum(count, 1), np.nan).transpose(0, 2, 1)
    rho = np.full((len(dims), K), np.nan)
    span = np.full((len(dims), K), np.nan)
    for i in range(len(dims)):
        for k in range(K):
            c = curves[i, k]
            s = spearman(values, c, x_name="step value", y_name="descriptor")
            rho[i, k] = s.rho
            if np.isfinite(c).any():
                span[i, k] = float(np.nanmax(c) - np.nanmin(c))
    q = np.full(K, np.nan)
    for k in range(K):
        v = ref[:, k][np.isfinite(ref[:, k])]
        if len(v) >= 2:
            q[k] = float(np.subtract(*np.percentile(v, [75, 25])))
    return TraversalRanking(dims, values, list(MEASURED_DESCRIPTORS), curves, rho, span, q,
                            len(bases), len(ref), found / (len(bases) * len(dims) * S),
                            float((ref[:, 0] > 0).mean()) if len(ref) else float("nan"))


@dataclass
class InterpretReport:
    """Result of :func:`interpret_model`.

    Attributes
    ----------
    rho, pvalue : arrays of shape (latent_dim, n_factors) — Spearman correlations
    factors : list of factor names; ``factor_source`` is ``"labels"`` or ``"measured"``
    ranking : dict factor -> list of {"dim", "rho", "p"} sorted by |rho| (top_k)
    mig, sap : dicts from :func:`mutual_information_gap` / :func:`sap_score` (None when not
        computed)
    figures : list of written figure paths
    traversal : :class:`TraversalRanking` or None — what each dimension's traversal does to
        the descriptors of the decoded image
    """

    model: str
    latent_dim: int
    n_patches: int
    factors: list
    factor_source: str
    rho: np.ndarray
    pvalue: np.ndarray
    ranking: dict
    mig: dict | None
    sap: dict | None
    notes: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    traversal: TraversalRanking | None = None

    def to_dict(self) -> dict:
        def clean(a):
            return [[None if not np.isfinite(x) else round(float(x), 6) for x in row] for row in a]

        return {"model": self.model, "latent_dim": self.latent_dim, "n_patches": self.n_patches,
                "factor_source": self.factor_source, "factors": self.factors,
                "spearman_rho": clean(self.rho), "spearman_p": clean(self.pvalue),
                "ranking": self.ranking, "mig": self.mig, "sap": self.sap,
                "traversal": None if self.traversal is None else self.traversal.to_dict(),
                "notes": self.notes, "figures": [str(f) for f in self.figures]}

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["dim"] + [f"rho_{f}" for f in self.factors] + [f"p_{f}" for f in self.factors])
        for j in range(self.rho.shape[0]):
            w.writerow([j] + [f"{x:.6f}" if np.isfinite(x) else "" for x in self.rho[j]]
                       + [f"{x:.3g}" if np.isfinite(x) else "" for x in self.pvalue[j]])
        return buf.getvalue()

    def to_markdown(self) -> str:
        lines = [f"# Latent dimensions of {self.model}", "",
                 f"{self.n_patches} patches, latent size {self.latent_dim}; factors "
                 + ("from the labels" if self.factor_source == "labels" else
                    "measured from the images (per-patch Otsu segmentation of the dark phase)")
                 + ".", "",
                 "## Dimensions tracking each factor (Spearman rho, ranked by |rho|)", "",
                 "| factor | top dimensions |", "|---|---|"]
        for f in self.factors:
            cells = ", ".join(f"z{r['dim']} ({r['rho']:+.2f})" for r in self.ranking.get(f, []))
            lines.append(f"| {f} | {cells or 'n/a (constant)'} |")
        if self.mig is not None:
            lines += ["", "## Disentanglement", "",
                      f"- MIG (Chen et al. 2018): **{self.mig['score']:.4f}**",
                      f"- SAP (Kumar et al. 2018): **{self.sap['score']:.4f}**", "",
                      "| factor | MIG gap | SAP gap | best dims (MI) |", "|---|---|---|---|"]
            for f in self.mig["per_factor"]:
                lines.append(f"| {f} | {self.mig['per_factor'][f]:.4f} | "
                             f"{self.sap['per_factor'].get(f, float('nan')):.4f} | "
                             f"z{self.mig['top_dims'][f][0]}, z{self.mig['top_dims'][f][1]} |")
        if self.traversal is not None:
            lines += [""] + self.traversal.markdown_lines()
        if self.figures:
            lines += ["", "## Traversals", ""] + [f"![{Path(p).stem}]({Path(p).name})"
                                                  for p in self.figures]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def write(self, out_dir) -> dict:
        """Write interpret.json, interpret_spearman.csv, interpret.md and, with a traversal
        ranking, interpret_traversal.csv (atomically)."""
        paths = _write_outputs(self, out_dir, "interpret.json", "interpret_spearman.csv",
                               "interpret.md")
        if self.traversal is not None:
            paths["traversal_csv"] = Path(out_dir) / "interpret_traversal.csv"
            atomic_write_text(paths["traversal_csv"], self.traversal.to_csv())
        return paths


def traversal_figure(model, patch, dims, path, *, values=None, titles=None) -> Path:
    """Write a PNG of ``model.traverse(patch, dims, values)``: one row per dimension."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    values = np.linspace(-4, 4, 10) if values is None else np.asarray(values, dtype=float)
    imgs = np.asarray(model.traverse(patch, list(dims), values))
    rows, cols = imgs.shape[:2]
    fig, axes = plt.subplots(rows, cols + 1, figsize=(1.2 * (cols + 1), 1.25 * rows + 0.4),
                             squeeze=False)
    for i in range(rows):
        axes[i, 0].imshow(patch, cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_ylabel((titles[i] if titles else f"z{dims[i]}"), fontsize=7)
        for j in range(cols):
            axes[i, j + 1].imshow(imgs[i, j], cmap="gray", vmin=0, vmax=1)
            if i == 0:
                axes[i, j + 1].set_title(f"{values[j]:+.1f}", fontsize=7)
    axes[0, 0].set_title("input", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def interpret_model(model, images, *, labels=None, file_column: str = "file", factors=None,
                    n: int | None = 500, stride: int = 50, crop=None, crop_bottom: int = 0,
                    seed: int = 0, top_k: int = 5, n_traversal_dims: int = 6,
                    traversal_values=None, traversal_bases: int = 8, held_out: bool = False,
                    out_dir=None, n_bins: int = 20, min_diameter_px: float = 3.0, log=None,
                    scale=None) -> InterpretReport:
    """Correlate every latent dimension with factors; measure what its traversal does.

    Parameters
    ----------
    model : model folder or fitted encoder with ``transform`` (and ``traverse`` for figures)
    images : folder, glob or list of micrographs
    labels : CSV path, optional — numeric columns become factors (patches inherit their
        micrograph's row; see :mod:`matrep.labels`). Without it the descriptors of
        :func:`measure_descriptors` are measured on every patch.
    file_column : the labels' column naming the images
    factors : list of str, optional — the label columns to use (default: all numeric ones but
        bookkeeping such as ``seed``); MIG and SAP use the same list, so for the synthetic
        cast-iron set pass the design factors (``cooling_rate_k_s``, ``mg_wt_pct``).
    n : int or None, default 500 — seeded random subset of patches (None: all)
    top_k : int — dimensions listed per factor
    n_traversal_dims : int — at most this many dimensions in the traversal figure (with a
        traversal ranking: the top dimension of each descriptor, labelled by what it moves;
        otherwise the best for each factor in turn); 0 for none
    traversal_values : step values of the ranking and the figure (default -3, -2, ..., 3)
    traversal_bases : int, default 8 — patches (spread over the micrographs) whose latents
        are traversed to rank the dimensions per descriptor (:func:`traversal_effects`, the
        IQR over all the encoded patches); 0 for no ranking. Needs ``model.traverse``.
    held_out : bool — use only the patches the model held out from training (see
        :func:`evaluate_models`)
    out_dir : folder, optional — write the reports and ``traversal.png`` there
    n_bins : MIG discretisation

    Returns
    -------
    InterpretReport
    """
    from .io import load_patches
    from .scale import ScaleOptions, model_scale

    log = log or (lambda s: None)
    if scale is None:  # the scale a model folder was trained at (matrep.scale)
        scale = ScaleOptions(model_scale=model_scale(model) if isinstance(model, (str, Path))
                             else None)
    name, model = _resolve_model(model)
    P = _patch_size(model)
    ps = load_patches(images, patch=P, stride=stride, crop=crop, crop_bottom=crop_bottom,
                      scale=scale)
    if held_out:
        ps = ps.subset(_held_out_pool(ps, [(name, model)], images, stride, crop, crop_bottom))
    if n is not None and len(ps) > n:
        ps = ps.subset(np.sort(np.random.default_rng(seed).choice(len(ps), int(n), replace=False)))
    log(f"encoding {len(ps)} patches")
    Z = np.asarray(model.transform(ps.patches), dtype=float)
    ld = _latent_dim(model) or Z.shape[1]
    Z = Z[:, :ld]
    notes = []
    if labels is not None:
        table, unmatched = _label_factors(ps, labels, file_column, factors)
        notes += unmatched
        source = "labels"
    else:
        if factors:
            raise LabelsError("--factors names label columns; give --labels too")
        log("measuring descriptors on each patch")
        table = measure_descriptors(ps.patches, min_diameter_px=min_diameter_px)
        source = "measured"
        notes.append("descriptors measured per patch in pixel units: particle_density per "
                     "10^6 px^2, mean_eq_diameter in px; graphite = pixels at or below the "
                     "patch's Otsu threshold (none when its two classes differ by less than "
                     f"{MIN_CONTRAST} in grey level)")
    rho, p = spearman_matrix(Z, table)
    names = list(table.columns)
    ranking = {}
    for k, f in enumerate(names):
        col = rho[:, k]
        order = [j for j in np.argsort(-np.nan_to_num(np.abs(col), nan=-1)) if np.isfinite(col[j])]
        ranking[f] = [{"dim": int(j), "rho": round(float(col[j]), 4), "p": float(p[j, k])}
                      for j in order[:top_k]]
    mig = sap = None
    if Z.shape[1] >= 2:
        mig = mutual_information_gap(Z, table, n_bins=n_bins)
        sap = sap_score(Z, table)
        if source == "measured":
            notes.append("MIG/SAP over measured descriptors, which are not independent "
                         "factors: compare models with them, but prefer known factors (--labels)")
    report = InterpretReport(name, int(ld), len(ps), names, source, rho, p, ranking, mig, sap,
                             notes)
    can_traverse = hasattr(model, "traverse") and getattr(model, "can_decode", True)
    values = TRAVERSAL_VALUES if traversal_values is None else traversal_values
    if traversal_bases and can_traverse:
        ref = (table.to_numpy(dtype=float) if source == "measured" else
               descriptor_array(ps.patches, min_diameter_px=min_diameter_px))
        bases = ps.patches[spread_patches(ps.micrograph_ids, int(traversal_bases), seed)]
        report.traversal = traversal_effects(model, bases, reference_descriptors=ref,
                                             values=values, dims=range(int(ld)),
                                             min_diameter_px=min_diameter_px, log=log)
    elif traversal_bases:
        report.notes.append("no traversal ranking: the model cannot decode")
    if out_dir is not None:
        out_dir = Path(out_dir)
        if n_traversal_dims and can_traverse:
            dims, titles = [], []
            if report.traversal is not None:
                dims, titles = report.traversal.auto_dims()
                dims, titles = dims[:n_traversal_dims], titles[:n_traversal_dims]
            for depth in range(top_k if not dims else 0):
                for f in names:
                    r = ranking[f]
                    if depth < len(r) and r[depth]["dim"] not in dims \
                            and len(dims) < n_traversal_dims:
                        dims.append(r[depth]["dim"])
                        titles.append(f"z{r[depth]['dim']}\n{f}\nrho={r[depth]['rho']:+.2f}")
            if dims:
                # the patch whose latent is closest to the mean: a typical starting point
                i0 = int(np.argmin(((Z - Z.mean(0)) ** 2).sum(1)))
                log(f"traversal figure of dimensions {dims}")
                report.figures.append(traversal_figure(
                    model, ps.patches[i0], dims, out_dir / "traversal.png",
                    values=values, titles=[t.replace(": ", ":\n") for t in titles]))
        elif n_traversal_dims:
            report.notes.append("no traversal figure: the model cannot decode")
        report.write(out_dir)
    return report


def _write_outputs(result, out_dir, json_name: str, csv_name: str, md_name: str) -> dict:
    """Write a result's JSON, CSV and markdown forms into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / json_name, "csv": out_dir / csv_name, "markdown": out_dir / md_name}
    atomic_write_text(paths["json"], json.dumps(result.to_dict(), indent=2, default=_jsonable))
    atomic_write_text(paths["csv"], result.to_csv())
    atomic_write_text(paths["markdown"], result.to_markdown())
    return paths
