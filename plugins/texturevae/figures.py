"""The texture-VAE's figures now live in :mod:`matrep.figures` (one implementation, used by
``matrep interpret`` too); this module keeps the old import path working."""

from matrep.figures import (grid_figure, reconstruction_figure, traversal_figure, write_npz,
                            write_png)

__all__ = ["grid_figure", "reconstruction_figure", "traversal_figure", "write_npz", "write_png"]
