"""Inverse design: target properties -> microstructures, checked by physics.

The library call behind ``matrep design``::

    from matrep.design import design, DesignSettings, write_design
    res = design("runs/quick", "data/images", "data/labels.csv",
                 {"youngs_modulus_gpa": 150.0}, settings=DesignSettings(n=8))
    write_design(res, "designs/")

Modules, one idea each: :mod:`~matrep.design.training` (latents and patch-level properties),
:mod:`~matrep.design.surrogate` (Gaussian processes with gradients),
:mod:`~matrep.design.search` (search inside the training latents' high-density ellipsoid),
:mod:`~matrep.design.physics` (solver registry, segmentation),
:mod:`~matrep.design.distinct` (style distances), :mod:`~matrep.design.tiling` (large
designs), :mod:`~matrep.design.inverse` (the loop and the baseline),
:mod:`~matrep.design.study` (the targets x designs study), :mod:`~matrep.design.report`.
See ``docs/design.md``.
"""

from .errors import DesignError
from .inverse import Designer, DesignResult, DesignSettings, design, make_designer
from .physics import Solver, get_solver, list_solvers, register_solver, segment
from .report import write_design

__all__ = ["DesignError", "Designer", "DesignResult", "DesignSettings", "Solver", "design",
           "get_solver", "list_solvers", "make_designer", "register_solver", "segment",
           "write_design"]
