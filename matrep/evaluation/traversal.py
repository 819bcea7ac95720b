"""What traversing each latent dimension does to the descriptors of the decoded image."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from ..errors import BadInputError, MatrepError
from ..metrics.correlation import rank_rho, spearman
from ..metrics.morphology import DESCRIPTORS, MEASURED_DESCRIPTORS, descriptor_array
from .models import _latent_dim

#: the traversal of ``matrep interpret`` and ``traverse --dims auto``: z_j = -3, -2, ..., 3
TRAVERSAL_VALUES = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
#: a traversal is monotone when |Spearman(step value, descriptor)| reaches this
MONOTONE_RHO = 0.9
#: ... and it moves the descriptor enough when its range is at least this share of the IQR
MIN_IQR_SHARE = 0.5
#: the descriptors with a goal in issue 14 (area fraction, size, nodularity)
GOAL_DESCRIPTORS = ("graphite_fraction", "mean_eq_diameter", "nodularity")
#: base patches of ``matrep interpret``'s ranking: with a decoder that places particles by a
#: noise draw, each base is one draw, and with 8 the goals came and went with the draw
#: (docs/texturevae.md, "How sure a traversal goal is")
TRAVERSAL_BASES = 32
#: resamples of the bases for the share of resamples in which each goal is met
BOOTSTRAP_RESAMPLES = 200


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
    met_share : array of shape (K,) or None — per descriptor, the share of
        :data:`BOOTSTRAP_RESAMPLES` resamples of the bases (with replacement) in which the
        goal is met: how much the verdict owes to the particular bases (None: not computed)
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
    met_share: np.ndarray | None = None

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
        (|rho| >= 0.9) over at least half its inter-quartile range? With ``met_share``, the
        share of resamples of the bases in which it is."""
        out = {}
        for k, f in enumerate(self.descriptors):
            ok = [e for e in self.ranking(f) if e["monotone"]
                  and np.isfinite(e["moved_iqr"]) and e["moved_iqr"] >= MIN_IQR_SHARE]
            t = ok[0] if ok else self.top(f)
            out[f] = {"met": bool(ok), "dim": None if t is None else t["dim"],
                      "rho": None if t is None else t["rho"],
                      "moved_iqr": None if t is None else t["moved_iqr"],
                      "goal": f in GOAL_DESCRIPTORS,
                      "met_share": None if self.met_share is None
                      else round(float(self.met_share[k]), 4)}
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
                "goals": self.goals(), "bootstrap_resamples": None if self.met_share is None
                else BOOTSTRAP_RESAMPLES,
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
            met = ("yes" if g["met"] else "no") + ("" if g["met_share"] is None
                                                   else f" ({100 * g['met_share']:.0f} %)")
            met += "" if g["goal"] else " (no goal)"
            iqr = f"{self.iqr[k]:.4g}" if np.isfinite(self.iqr[k]) else "undefined"
            lines.append(f"| {DESCRIPTORS[f][0]} | {iqr} | {met} | {cells} |")
        lines += ["", f"Goal: a dimension with |rho| >= {MONOTONE_RHO} that moves the descriptor "
                      f"over at least {MIN_IQR_SHARE:g} x its IQR (issue 14: area fraction, "
                      "mean diameter, nodularity)."]
        if self.met_share is not None:
            lines[-1] += (f" In brackets: the share of {BOOTSTRAP_RESAMPLES} resamples of the "
                          f"{self.n_bases} bases (with replacement) in which it is met; far "
                          "from 0 % or 100 %, the verdict depends on which bases were drawn.")
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
                      bootstrap: bool = True, seed: int = 0, log=None) -> TraversalRanking:
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
    bootstrap : bool, default True — also resample the bases :data:`BOOTSTRAP_RESAMPLES`
        times (with replacement, ``seed``) and record in how many of them each goal is met
        (``met_share``); no further decoding

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
    per_base = np.full((len(bases), len(dims), S, K), np.nan)
    for b, x in enumerate(bases):
        log(f"traversal of {len(dims)} dimensions x {S} steps from base patch {b + 1}/{len(bases)}")
        imgs = np.asarray(model.traverse(x, dims, values), dtype=np.float32)
        if imgs.shape[:2] != (len(dims), S):
            raise MatrepError(f"traverse returned shape {imgs.shape}, expected "
                              f"({len(dims)}, {S}, H, W)")
        per_base[b] = descriptor_array(np.clip(imgs.reshape(-1, *imgs.shape[2:]), 0.0, 1.0),
                                       min_diameter_px=min_diameter_px).reshape(len(dims), S, K)
    found = int((per_base[..., 0] > 0).sum())
    curves, rho, span = _curve_stats(values, per_base)
    q = np.full(K, np.nan)
    for k in range(K):
        v = ref[:, k][np.isfinite(ref[:, k])]
        if len(v) >= 2:
            q[k] = float(np.subtract(*np.percentile(v, [75, 25])))
    met_share = None
    if bootstrap and len(bases) > 1:
        rng = np.random.default_rng(seed)
        met = np.zeros(K)
        for _ in range(BOOTSTRAP_RESAMPLES):
            _, r, sp = _curve_stats(values, per_base[rng.integers(0, len(bases), len(bases))])
            with np.errstate(invalid="ignore", divide="ignore"):  # the rule of goals()
                moved = sp / np.where(q > 0, q, np.nan)
                met += ((np.abs(r) >= MONOTONE_RHO) & (moved >= MIN_IQR_SHARE)).any(axis=0)
        met_share = met / BOOTSTRAP_RESAMPLES
    return TraversalRanking(dims, values, list(MEASURED_DESCRIPTORS), curves, rho, span, q,
                            len(bases), len(ref), found / (len(bases) * len(dims) * S),
                            float((ref[:, 0] > 0).mean()) if len(ref) else float("nan"),
                            met_share)


def _curve_stats(values, per_base):
    """Curves averaged over the bases (NaN-aware), Spearman rho and span per (dim, descriptor)
    from per-base descriptors of shape (B, dims, S, K)."""
    ok = np.isfinite(per_base)
    count = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        curves = np.where(count > 0, np.where(ok, per_base, 0.0).sum(axis=0)
                          / np.maximum(count, 1), np.nan).transpose(0, 2, 1)
    values = np.asarray(values, dtype=float)
    full = np.isfinite(curves).all(axis=-1)  # curves defined at every step: all at once
    rho = np.full(curves.shape[:2], np.nan)
    rho[full] = rank_rho(np.broadcast_to(values, curves[full].shape), curves[full])
    for i, k in zip(*np.nonzero(~full)):  # steps without a value: the checked, one-pair path
        rho[i, k] = spearman(values, curves[i, k], x_name="step value", y_name="descriptor").rho
    some = np.isfinite(curves).any(axis=-1)
    span = np.full(curves.shape[:2], np.nan)
    span[some] = np.nanmax(curves[some], axis=-1) - np.nanmin(curves[some], axis=-1)
    return curves, rho, span
