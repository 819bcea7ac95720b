"""The surrogate's training data: latents of training patches and *patch-level* properties.

Every patch of the training micrographs is encoded by the model (its posterior mean). Its
property value is computed on the patch itself where the material has a physics solver: the
patch's own cut of the phase mask is homogenised (``solver.solve``), instead of giving the
patch its micrograph's label. The mask comes, in order, from

1. the labels CSV's ``mask_column`` (the built-in set's ``mask_file``; 255 = phase 1), looked
   up beside the CSV, in a ``masks/`` folder beside it, or in ``masks`` when given;
2. else an Otsu segmentation of each image patch (:func:`matrep.design.physics.segment`, the
   segmentation designed images get too).

Properties without a solver inherit their micrograph's label (the paper's convention).
:attr:`TrainingData.sources` says which of these each property used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError, LabelsError


@dataclass
class TrainingData:
    """Latents and patch-level property values of the training patches.

    Attributes
    ----------
    latents : ndarray of shape (n_patches, latent_dim)
    values : dict of property -> ndarray of shape (n_patches,)
    sources : dict of property -> str — how the values were obtained
    patchset : matrep.io.PatchSet — the patches (pixels, micrograph ids, coordinates)
    residuals : ndarray of shape (n_patches,) or None — solver residuals of the mask patches
    notes : list of str
    """

    latents: np.ndarray
    values: dict
    sources: dict
    patchset: object
    residuals: np.ndarray | None = None
    notes: list = field(default_factory=list)

    def range(self, prop: str) -> tuple[float, float]:
        """Smallest and largest patch-level value of ``prop``."""
        v = self.values[prop]
        v = v[np.isfinite(v)]
        return float(v.min()), float(v.max())

    def active_dims(self, min_std: float = 0.05) -> np.ndarray:
        """Latent dimensions the encoder uses: posterior means spread by more than ``min_std``.

        A VAE leaves unused dimensions at the prior (mean ~0 for every patch); the decoder
        ignores them, so the search does not need them. All dimensions when none passes.
        """
        sd = self.latents.std(axis=0)
        act = np.flatnonzero(sd > min_std)
        return act if len(act) else np.arange(self.latents.shape[1])


def model_patch_size(model) -> int:
    """The patch size a trained model takes (``patch_size_``)."""
    for attr in ("patch_size_", "patch_size"):
        v = getattr(model, attr, None)
        if v is not None:
            return int(v)
    raise BadInputError(None, f"model {type(model).__name__} has no patch_size_; is it trained?")


def _mask_path(row, mask_column, labels_path: Path, masks_dir, image_path: Path) -> Path | None:
    cands = []
    if masks_dir is not None:
        md = Path(masks_dir)
        if row is not None and mask_column in row and isinstance(row[mask_column], str):
            cands.append(md / row[mask_column])
        cands.append(md / image_path.name)
    elif row is not None and mask_column in row and isinstance(row[mask_column], str):
        base = labels_path.parent
        cands += [base / row[mask_column], base / "masks" / row[mask_column]]
    for c in cands:
        if c.is_file() and c.resolve() != image_path.resolve():
            return c
    return None


def _mask_patches(ps, labels_df, labels_path, mask_column, masks_dir, file_column):
    """Mask patches at the same coordinates, or None when any micrograph lacks a mask."""
    from ..io import apply_crop, read_micrograph

    by_name = {Path(str(v)).name.lower(): i for i, v in enumerate(labels_df[file_column])}
    by_stem = {Path(str(v)).stem.lower(): i for i, v in enumerate(labels_df[file_column])}
    out = np.zeros(ps.patches.shape, dtype=bool)
    P = ps.patches.shape[1]
    for f in ps.files:
        fp = Path(f)
        i = by_name.get(fp.name.lower(), by_stem.get(fp.stem.lower()))
        row = labels_df.iloc[i] if i is not None else None
        mp = _mask_path(row, mask_column, labels_path, masks_dir, fp)
        if mp is None:
            return None
        m = apply_crop(read_micrograph(mp), ps.crop, ps.crop_bottom, path=mp)
        img_shape = apply_crop(read_micrograph(fp), ps.crop, ps.crop_bottom, path=fp).shape
        if m.shape != img_shape:
            raise BadInputError(mp, f"mask of {m.shape[0]}x{m.shape[1]} pixels does not match its "
                                    f"image {fp.name} ({img_shape[0]}x{img_shape[1]})")
        if ps.scale is not None:  # the mask at the image's resampled scale
            m = ps.scale.resample(f, m.astype(np.float32))
        sel = np.flatnonzero(ps.sources == f)
        for k in sel:
            y, x = ps.coords[k]
            out[k] = m[y:y + P, x:x + P] > 0.5
    return out


def _segment_patches(ps, dark_phase: bool):
    from .physics import segment

    return np.stack([segment(p, dark_phase=dark_phase) for p in ps.patches])


def _cache_file(solver, masks) -> Path:
    import hashlib

    from ..datasets.castiron import cache_root

    h = hashlib.sha256()
    h.update(f"{solver.material}|{solver.description}|{solver.properties}|{masks.shape}".encode())
    h.update(np.packbits(masks).tobytes())
    return cache_root() / "design" / f"patch-properties-{h.hexdigest()[:24]}.npz"


def _cached(solver, masks):
    f = _cache_file(solver, masks)
    if not f.is_file():
        return None
    try:
        with np.load(f) as z:
            got = {k: z[k] for k in z.files}
    except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
        return None
    need = {"residual", *solver.properties}
    return got if need <= set(got) and all(len(v) == len(masks) for v in got.values()) else None


def _store(solver, masks, got) -> None:
    from ..atomic import atomic_path

    f = _cache_file(solver, masks)
    try:
        with atomic_path(f, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **got)
    except OSError:  # a read-only cache only costs time
        pass


def load_training_data(model, images, labels, properties, *, solver=None, masks=None,
                       file_column: str = "file", mask_column: str = "mask_file",
                       stride: int = 128, crop=None, crop_bottom: int = 0, max_patches=None,
                       seed: int = 0, n_jobs: int = 1, cache: bool = True, log=None,
                       progress=None, scale=None) -> TrainingData:
    """Encode the training patches and give each its patch-level property values.

    Parameters
    ----------
    model : trained encoder with ``transform`` and ``patch_size_``
    images : folder, glob pattern, file or list of micrographs
    labels : path of the labels CSV (a file column + property columns)
    properties : list of str — label columns to model
    solver : matrep.design.physics.Solver or None
        Properties it computes get patch-level values from the mask patches.
    masks : folder of masks, optional (default: the labels' ``mask_column``)
    stride : int, default 128 — sliding-window step (the patch size comes from the model)
    crop, crop_bottom : as in :func:`matrep.io.load_patches`
    max_patches : int, optional — a seeded random subset of the patches
    n_jobs : int — worker processes for the solver
    cache : bool, default True — reuse the solver's values of identical mask patches from
        matrep's cache (``<cache>/design/``, keyed by the masks' bits and the solver)
    log, progress : optional callables (a line of text; an iterable wrapper)
    scale : matrep.scale.ScaleOptions, optional — pixel sizes and resampling of the
        micrographs (and their masks) before patching, as in :func:`matrep.io.load_patches`

    Raises
    ------
    LabelsError for an unknown property column; BadInputError for unreadable inputs.
    """
    from ..io import load_patches
    from ..labels import match_labels, read_labels
    from .physics import solve_masks

    log = log or (lambda s: None)
    df = read_labels(labels, file_column=file_column)
    unknown = [p for p in properties if p not in df.columns]
    if unknown:
        raise LabelsError(f"{labels}: no column {', '.join(map(repr, unknown))} (columns are: "
                          f"{', '.join(map(str, df.columns))}); choose --target from these")
    for p in properties:
        if not np.issubdtype(df[p].dtype, np.number):
            raise LabelsError(f"{labels}: column {p!r} is not numeric (dtype {df[p].dtype}); a "
                              "design target must be a number")
    P = model_patch_size(model)
    ps = load_patches(images, patch=P, stride=stride, crop=crop, crop_bottom=crop_bottom,
                      progress=progress, scale=scale)
    if max_patches is not None and len(ps) > max_patches:
        idx = np.sort(np.random.default_rng(seed).choice(len(ps), int(max_patches), replace=False))
        ps = ps.subset(idx)
    table = match_labels(ps, df, file_column=file_column, warn=False).table
    values, sources, notes, residuals = {}, {}, [], None
    if scale is not None and ps.scale is not None:  # the scale line of every report
        notes.extend(ps.scale.describe())
        for line in ps.scale.describe():
            log(line)
    physics_props = [p for p in properties if solver is not None and p in solver.properties]
    if physics_props:
        mp = _mask_patches(ps, df, Path(labels), mask_column, masks, file_column)
        if mp is None:
            mp = _segment_patches(ps, solver.dark_phase)
            how = "Otsu segmentation of each image patch (no masks found)"
        else:
            where = f"--masks {masks}" if masks else f"labels column {mask_column!r}"
            how = f"the phase masks ({where})"
        got = _cached(solver, mp) if cache else None
        if got is None:
            log(f"homogenising {len(ps)} mask patches of {P}x{P} ({solver.material} solver) ...")
            res = solve_masks(solver, mp, n_jobs=n_jobs, progress=progress)
            got = {"residual": np.array([r.residual for r in res])}
            got.update({p: np.array([r.values[p] for r in res], dtype=np.float64)
                        for p in solver.properties})
            if cache:
                _store(solver, mp, got)
        else:
            log(f"patch-level properties of {len(ps)} mask patches from the cache")
        residuals = got["residual"]
        for p in physics_props:
            values[p] = np.asarray(got[p], dtype=np.float64)
            sources[p] = f"patch-level: {solver.material} solver on each patch's own mask, from {how}"
        notes.append(f"patch-level properties ({', '.join(physics_props)}) computed on {len(ps)} "
                     f"mask patches from {how}; largest solver residual {residuals.max():.2g}")
    for p in properties:
        if p in values:
            continue
        values[p] = np.asarray(table[p], dtype=np.float64)
        sources[p] = "micrograph label (every patch inherits its micrograph's value)"
        notes.append(f"{p}: no solver for it, so every patch inherits its micrograph's label")
    log(f"encoding {len(ps)} patches ...")
    Z = np.asarray(model.transform(ps.patches), dtype=np.float64)
    L = getattr(model, "latent_dim", None)
    if Z.ndim != 2 or len(Z) != len(ps) or (L is not None and Z.shape[1] != int(L)):
        raise BadInputError(None, f"model.transform returned shape {Z.shape}, expected "
                                  f"({len(ps)}, {L}); set the model's output to the latent mean")
    keep = np.all([np.isfinite(values[p]) for p in properties], axis=0)
    if not keep.all():
        notes.append(f"{int((~keep).sum())} patches without a value left out")
        ps = ps.subset(np.flatnonzero(keep))
        Z = Z[keep]
        values = {p: v[keep] for p, v in values.items()}
        residuals = residuals[keep] if residuals is not None else None
    if len(ps) < 3:
        raise LabelsError(f"{labels}: only {len(ps)} patches with values of "
                          f"{', '.join(properties)}; need more training data")
    return TrainingData(latents=Z, values=values, sources=sources, patchset=ps,
                        residuals=residuals, notes=notes)
