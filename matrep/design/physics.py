"""Physics in the loop: a registry of property solvers, and segmentation of designed images.

A *solver* turns a two-phase mask into property values. A material plugs its own solver in
with :func:`register_solver` (in-process) or through the ``matrep.solvers`` entry-point group
(an entry point that resolves to a :class:`Solver`, the way encoders register in
``matrep.encoders``)::

    [project.entry-points."matrep.solvers"]
    mymaterial = "my_package.physics:SOLVER"

matrep registers the built-in synthetic cast iron itself: the FFT homogenisation of
:func:`matrep.datasets.effective_elasticity` (plane strain, float32, relative residual 1e-5)
gives ``youngs_modulus_gpa``, ``poisson_ratio`` and ``stress_concentration``, the columns of
the built-in set's ``labels.csv``, in one call.

A designed image is grey; :func:`segment` makes it a mask with matrep's one Otsu segmentation
(:func:`matrep.metrics.morphology.segment_dark_phase`, Otsu 1979), the dark phase (graphite)
as phase 1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable

import numpy as np

from ..errors import BadInputError
from .errors import DesignError

GROUP = "matrep.solvers"


@dataclass(frozen=True)
class Solver:
    """A physics solver for some properties of one material.

    Parameters
    ----------
    material : str
        Registry name (``"castiron"``).
    properties : tuple of str
        Label columns it computes (e.g. ``("youngs_modulus_gpa", "poisson_ratio")``).
    solve : callable
        ``solve(mask) -> dict`` for a boolean mask of shape (H, W) (True = phase 1), returning
        ``{"values": {property: float}, "residual": float, "converged": bool,
        "iterations": int}``. A module-level function, so that it can run in worker processes.
    dark_phase : bool, default True
        Phase 1 is the darker phase of a grey image (graphite in cast iron).
    description : str
        One line shown in reports.
    """

    material: str
    properties: tuple
    solve: Callable
    dark_phase: bool = True
    description: str = ""

    def check(self, properties) -> None:
        """Raise :class:`DesignError` unless every one of ``properties`` has this solver."""
        missing = [p for p in properties if p not in self.properties]
        if missing:
            raise DesignError(f"no physics solver for {', '.join(map(repr, missing))} of material "
                              f"{self.material!r} (its solver computes: "
                              f"{', '.join(self.properties)}); run without --physics, or "
                              "register a solver (matrep.design.physics.register_solver)")


@dataclass
class PhysicsResult:
    """Physics values of one design (or one mask).

    Attributes
    ----------
    values : dict of property -> float
    residual : float — the solver's final relative residual
    converged : bool
    iterations : int
    fraction : float — area fraction of phase 1 in the mask solved
    """

    values: dict
    residual: float
    converged: bool
    iterations: int
    fraction: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"values": {k: float(v) for k, v in self.values.items()},
                "residual": float(self.residual), "converged": bool(self.converged),
                "iterations": int(self.iterations), "phase_fraction": float(self.fraction)}


# ---------------------------------------------------------------------------------------
# the built-in cast iron
# ---------------------------------------------------------------------------------------
def castiron_solve(mask, *, tol: float = 1e-5) -> dict:
    """Effective plane-strain E, nu and stress concentration of a graphite mask (GPa).

    :func:`matrep.datasets.effective_elasticity` in float32 at relative residual ``tol``,
    the settings the built-in data set's labels were computed with.
    """
    from ..datasets.homogenization import effective_elasticity

    r = effective_elasticity(np.asarray(mask, dtype=bool), dtype=np.float32, tol=tol)
    return {"values": {"youngs_modulus_gpa": r.youngs_modulus, "poisson_ratio": r.poisson_ratio,
                       "stress_concentration": r.stress_concentration},
            "residual": r.residual, "converged": r.converged, "iterations": r.iterations}


CASTIRON = Solver(
    material="castiron",
    properties=("youngs_modulus_gpa", "poisson_ratio", "stress_concentration"),
    solve=castiron_solve, dark_phase=True,
    description="FFT homogenisation, plane strain, ferrite 210 GPa/0.29 + graphite 15 GPa/0.2 "
                "(matrep.datasets.effective_elasticity, float32, tol 1e-5)")

# ---------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------
_REGISTERED: dict[str, Solver] = {"castiron": CASTIRON}
_ENTRY_POINTS_LOADED = False


def register_solver(solver: Solver, *, replace: bool = False) -> Solver:
    """Make ``solver`` available under ``solver.material``.

    Refuses a second solver of the same name unless ``replace=True``.
    """
    if not isinstance(solver, Solver):
        raise TypeError(f"expected a matrep.design.physics.Solver, got {type(solver).__name__}")
    if solver.material in _REGISTERED and not replace and _REGISTERED[solver.material] is not solver:
        raise DesignError(f"a solver for material {solver.material!r} is already registered; "
                          "pass replace=True to override it")
    _REGISTERED[solver.material] = solver
    return solver


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in metadata.entry_points(group=GROUP):
        if ep.name in _REGISTERED:
            continue
        try:
            obj = ep.load()
            obj = obj() if callable(obj) and not isinstance(obj, Solver) else obj
            if not isinstance(obj, Solver):
                raise TypeError(f"resolves to {type(obj).__name__}, expected a Solver")
            _REGISTERED[ep.name] = obj
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the rest
            warnings.warn(f"physics solver plugin {ep.name!r} ({ep.value}) failed to load: "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)


def list_solvers() -> dict[str, Solver]:
    """The registered solvers by material name (built-in and entry points)."""
    _load_entry_points()
    return dict(_REGISTERED)


def get_solver(material: str) -> Solver:
    """The solver registered for ``material``; a clear error listing the known ones otherwise."""
    solvers = list_solvers()
    if material not in solvers:
        raise DesignError(f"no physics solver registered for material {material!r} (known: "
                          f"{', '.join(sorted(solvers))}); register one with "
                          "matrep.design.physics.register_solver or the 'matrep.solvers' "
                          "entry-point group")
    return solvers[material]


# ---------------------------------------------------------------------------------------
# segmentation and solving
# ---------------------------------------------------------------------------------------
def segment(image, *, threshold="otsu", dark_phase: bool = True) -> np.ndarray:
    """Two-phase mask of a grey image: phase 1 (True) is the dark (or bright) phase.

    Parameters
    ----------
    image : array of shape (H, W), float in [0, 1]
    threshold : "otsu" or float
        ``"otsu"``: :func:`matrep.metrics.morphology.segment_dark_phase`, matrep's one Otsu
        segmentation (per image; an image whose two Otsu classes differ by less than 0.15 in
        mean grey level is one phase, with an empty mask). A float: that grey level.
    dark_phase : bool
        Phase 1 is darker than the threshold (graphite); ``False``: brighter.

    Returns
    -------
    bool array of shape (H, W)

    >>> segment(np.array([[0.1, 0.9], [0.2, 0.8]])).tolist()
    [[True, False], [True, False]]
    """
    from ..metrics.morphology import segment_dark_phase

    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise BadInputError(None, f"expected one grey image of shape (H, W), got {img.shape}")
    if not np.isfinite(img).all():
        raise BadInputError(None, "image to segment contains NaN or inf")
    if isinstance(threshold, str):
        if threshold != "otsu":
            raise BadInputError(None, f"threshold: expected 'otsu' or a grey level, got {threshold!r}")
        return segment_dark_phase(img if dark_phase else 1.0 - img)
    t = float(threshold)
    return img <= t if dark_phase else img > t


def solve_mask(solver: Solver, mask) -> PhysicsResult:
    """Run ``solver`` on one mask."""
    m = np.asarray(mask, dtype=bool)
    out = solver.solve(m)
    return PhysicsResult(values=dict(out["values"]), residual=float(out.get("residual", np.nan)),
                         converged=bool(out.get("converged", True)),
                         iterations=int(out.get("iterations", 0)), fraction=float(m.mean()))


def _solve_one(args):
    solver, mask = args
    return solve_mask(solver, mask)


def solve_masks(solver: Solver, masks, *, n_jobs: int = 1, progress=None) -> list[PhysicsResult]:
    """Run ``solver`` on each mask of ``masks`` (sequence of (H, W) bool arrays).

    ``n_jobs > 1`` solves in that many worker processes (same results, in order).
    ``progress`` wraps an iterable (a progress bar), optional.
    """
    masks = list(masks)
    wrap = progress if progress is not None else (lambda it: it)
    if n_jobs <= 1 or len(masks) < 2:
        return [solve_mask(solver, m) for m in wrap(masks)]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=int(n_jobs)) as ex:
        return list(wrap(ex.map(_solve_one, [(solver, m) for m in masks], chunksize=8)))


def check_designs(images, solver: Solver, *, threshold="otsu") -> tuple[list[PhysicsResult], np.ndarray]:
    """Segment each designed image and solve it: the physics check of designs.

    Parameters
    ----------
    images : array of shape (n, H, W) in [0, 1]
    solver : Solver
    threshold : "otsu" (per image, default) or a grey level

    Returns
    -------
    results : list of PhysicsResult, one per image
    masks : bool array of shape (n, H, W)
    """
    masks = np.stack([segment(im, threshold=threshold, dark_phase=solver.dark_phase)
                      for im in np.asarray(images)]) if len(images) else np.zeros((0, 1, 1), bool)
    return [solve_mask(solver, m) for m in masks], masks
