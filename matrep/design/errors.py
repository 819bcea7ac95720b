"""The error a design request raises when it cannot be met as asked."""

from __future__ import annotations

from ..errors import MatrepError


class DesignError(MatrepError, ValueError):
    """A design request that cannot be served as asked.

    Raised for a target outside the data's range (unless extrapolation is allowed), a physics
    check asked for a property that has no solver, or a budget too small for the designs
    asked for. The message names the value, what was expected and what to do.
    """
