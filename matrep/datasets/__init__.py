"""Built-in data sets: synthetic cast-iron micrographs with physics-computed properties.

``default_castiron()`` returns a cached folder with ``images/``, ``masks/`` and ``labels.csv``
(generated on first use, under two minutes on two cores).

>>> from matrep.datasets import default_castiron   # doctest: +SKIP
>>> folder = default_castiron()                      # doctest: +SKIP
"""

from .castiron import (
    BOOKKEEPING_COLUMNS,
    GENERATOR_VERSION,
    LABEL_COLUMNS,
    Factors,
    cache_root,
    default_castiron,
    design,
    generate_micrograph,
    make_castiron,
)
from .descriptors import measure_mask, nodularity, particle_table
from .homogenization import (
    DEFAULT_E,
    DEFAULT_NU,
    ElasticityResult,
    effective_elasticity,
    hashin_shtrikman_bounds,
)

__all__ = [
    "BOOKKEEPING_COLUMNS", "DEFAULT_E", "DEFAULT_NU", "ElasticityResult", "Factors", "GENERATOR_VERSION",
    "LABEL_COLUMNS", "cache_root", "default_castiron", "design", "effective_elasticity",
    "generate_micrograph", "hashin_shtrikman_bounds", "make_castiron", "measure_mask",
    "nodularity", "particle_table",
]
