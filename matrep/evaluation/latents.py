"""Meaning of latent dimensions: Spearman with factors, MIG/SAP, traversal ranking and figure.

:func:`interpret_model`, behind ``matrep interpret``; see :mod:`matrep.evaluation`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..errors import LabelsError
from ..figures import traversal_figure
from ..metrics.correlation import spearman_matrix
from ..metrics.disentanglement import mutual_information_gap, sap_score
from ..metrics.morphology import MIN_CONTRAST, descriptor_array, measure_descriptors
from .models import _held_out_pool, _latent_dim, _patch_size, _resolve_model
from .outputs import _write_outputs
from .traversal import (TRAVERSAL_BASES, TRAVERSAL_VALUES, TraversalRanking, spread_patches,
                        traversal_effects)


def _label_factors(ps, labels, file_column: str, factor_names, ignore_columns=()):
    import pandas as pd

    from ..labels import match_labels, read_labels

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
        # what the data set declares bookkeeping (matrep.labels.bookkeeping_columns) and what
        # the caller leaves out
        ignored = set(df.attrs.get("bookkeeping", ())) | set(ignore_columns or ())
        cols = [c for c in table.columns if c not in ignored]
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


def interpret_model(model, images, *, labels=None, file_column: str = "file", factors=None,
                    n: int | None = 500, stride: int = 50, crop=None, crop_bottom: int = 0,
                    seed: int = 0, top_k: int = 5, n_traversal_dims: int = 6,
                    traversal_values=None, traversal_bases: int | None = None,
                    held_out: bool = False,
                    out_dir=None, n_bins: int = 20, min_diameter_px: float = 3.0, log=None,
                    scale=None, ignore_columns=None) -> InterpretReport:
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
        the bookkeeping columns the labels declare, :func:`matrep.labels.bookkeeping_columns`,
        and ``ignore_columns``); MIG and SAP use the same list, so for the synthetic cast-iron
        set pass the design factors (``cooling_rate_k_s``, ``mg_wt_pct``).
    ignore_columns : list of str, optional — label columns never used as factors, besides the
        declared bookkeeping ones (ignored when ``factors`` names the columns)
    n : int or None, default 500 — seeded random subset of patches (None: all)
    top_k : int — dimensions listed per factor
    n_traversal_dims : int — at most this many dimensions in the traversal figure (with a
        traversal ranking: the top dimension of each descriptor, labelled by what it moves;
        otherwise the best for each factor in turn); 0 for none
    traversal_values : step values of the ranking and the figure (default -3, -2, ..., 3)
    traversal_bases : int, default None (:data:`TRAVERSAL_BASES`, 32) — patches (spread over
        the micrographs) whose latents are traversed to rank the dimensions per descriptor
        (:func:`traversal_effects`, the IQR over all the encoded patches, with the share of
        resamples of the bases in which each goal is met); 0 for no ranking. Needs
        ``model.traverse``.
    held_out : bool — use only the patches the model held out from training (see
        :func:`evaluate_models`)
    out_dir : folder, optional — write the reports and ``traversal.png`` there
    n_bins : MIG discretisation

    Returns
    -------
    InterpretReport
    """
    from ..io import load_patches
    from ..scale import ScaleOptions, model_scale
    from ..scale.resampling import warn_unscaled_models

    log = log or (lambda s: None)
    if scale is None:  # the scale a model folder was trained at (matrep.scale)
        scale = ScaleOptions(model_scale=model_scale(model) if isinstance(model, (str, Path))
                             else None)
    else:
        warn_unscaled_models([model], scale)
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
        table, unmatched = _label_factors(ps, labels, file_column, factors, ignore_columns)
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
    can_traverse = hasattr(model, "traverse") and getattr(model, "generative", getattr(model, "can_decode", True))
    values = TRAVERSAL_VALUES if traversal_values is None else traversal_values
    traversal_bases = TRAVERSAL_BASES if traversal_bases is None else traversal_bases
    if traversal_bases and can_traverse:
        ref = (table.to_numpy(dtype=float) if source == "measured" else
               descriptor_array(ps.patches, min_diameter_px=min_diameter_px))
        bases = ps.patches[spread_patches(ps.micrograph_ids, int(traversal_bases), seed)]
        report.traversal = traversal_effects(model, bases, reference_descriptors=ref,
                                             values=values, dims=range(int(ld)),
                                             min_diameter_px=min_diameter_px, seed=seed,
                                             log=log)
        sd = Z.std(axis=0)
        report.notes.append(
            "the traversal's steps are absolute latent values in the prior's units (N(0, 1)); "
            "the posterior means of these patches spread with standard deviation "
            + ", ".join(f"z{j} {v:.2f}" for j, v in enumerate(sd))
            + " per dimension, so a dimension spread wider than 1 is traversed over less than "
              "the data's own range of it")
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
                steps = np.asarray(values, dtype=float)
                report.figures.append(traversal_figure(
                    ps.patches[i0], np.asarray(model.traverse(ps.patches[i0], dims, steps)),
                    dims, steps, out_dir / "traversal.png", labels=titles))
        elif n_traversal_dims:
            report.notes.append("no traversal figure: the model cannot decode")
        report.write(out_dir)
    return report
