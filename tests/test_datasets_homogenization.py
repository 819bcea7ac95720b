"""Physics checks of the plane-strain FFT/Galerkin homogenization solver (small masks)."""

import numpy as np
import pytest

from matrep.datasets import effective_elasticity, generate_micrograph, hashin_shtrikman_bounds
from matrep.datasets.castiron import Factors
from matrep.datasets.homogenization import (
    _Problem,
    lame,
    plane_strain_moduli,
    young_poisson_from_plane_strain,
)
from matrep.errors import BadInputError

E = (210.0, 15.0)
NU = (0.29, 0.2)


def disc(n, radius):
    yy, xx = np.mgrid[:n, :n]
    return (yy - n / 2 + 0.5) ** 2 + (xx - n / 2 + 0.5) ** 2 < radius ** 2


def test_homogeneous_gives_phase_constants():
    r = effective_elasticity(np.zeros((16, 16), bool))
    assert r.youngs_modulus == pytest.approx(210.0, rel=1e-12)
    assert r.poisson_ratio == pytest.approx(0.29, rel=1e-12)
    r = effective_elasticity(np.ones((16, 16), bool))
    assert r.youngs_modulus == pytest.approx(15.0, rel=1e-12)
    assert r.poisson_ratio == pytest.approx(0.2, rel=1e-12)


def test_operator_symmetric_and_preconditioner_exact_for_homogeneous():
    rng = np.random.default_rng(0)
    n = 24
    prob = _Problem(rng.random((n, n)) < 0.3, E, NU, np.float64)
    u = rng.standard_normal((1, 2, n, n))
    v = rng.standard_normal((1, 2, n, n))
    assert np.vdot(v, prob.apply(u).copy()) == pytest.approx(np.vdot(u, prob.apply(v).copy()), rel=1e-10)
    # with both phases equal to the reference medium, K0^-1 K is the identity (mean removed)
    lam0, mu0 = np.sqrt(lame(*[E[0], NU[0]])[0] * lame(E[1], NU[1])[0]), np.sqrt(lame(E[0], NU[0])[1] * lame(E[1], NU[1])[1])
    e0 = mu0 * (3 * lam0 + 2 * mu0) / (lam0 + mu0)
    nu0 = lam0 / (2 * (lam0 + mu0))
    hom = _Problem(np.zeros((n, n), bool), (e0, e0), (nu0, nu0), np.float64)
    u -= u.mean(axis=(-2, -1), keepdims=True)
    np.testing.assert_allclose(hom.precondition(hom.apply(u).copy()), u, atol=1e-10)


def test_converges_and_reports_residual():
    mask = generate_micrograph(Factors(1.0, 0.03), size=128, seed=3)[1]
    r = effective_elasticity(mask, tol=1e-6, max_iter=200)
    print(f"residual {r.residual:.2e} after {r.iterations} iterations")
    assert r.converged
    assert r.residual <= 1e-6
    assert 0 < r.iterations < 200
    # more iterations -> smaller residual; the capped run says it did not converge
    capped = effective_elasticity(mask, tol=1e-12, max_iter=3)
    assert not capped.converged and capped.iterations == 3 and capped.residual > r.residual


def test_single_inclusion_matches_dilute_solution():
    """A circular graphite inclusion (f = 1.2 %) vs the exact first-order (dilute) result.

    Plane-strain dilute moduli of a circular inclusion (Hashin 1965; equal to the first
    order of the HS / Mori-Tanaka expressions):
    k = k_m + f (k_i - k_m)(k_m + mu_m)/(k_i + mu_m),
    mu = mu_m + f (mu_i - mu_m) / (1 + (mu_i - mu_m)(k_m + 2 mu_m) / (2 mu_m (k_m + mu_m))).
    Tolerance: the computed modulus *reduction* is within 3 % of the dilute prediction (the
    O(f^2) interaction of the periodic images and the pixelated circle account for ~1.5 %).
    """
    mask = disc(256, 16)
    f = mask.mean()
    (km, mm), (ki, mi) = plane_strain_moduli(E[0], NU[0]), plane_strain_moduli(E[1], NU[1])
    k_dil = km + f * (ki - km) * (km + mm) / (ki + mm)
    mu_dil = mm + f * (mi - mm) / (1 + (mi - mm) * (km + 2 * mm) / (2 * mm * (km + mm)))
    r = effective_elasticity(mask, tol=1e-7)
    assert (km - r.bulk_modulus) / (km - k_dil) == pytest.approx(1.0, abs=0.03)
    assert (mm - r.shear_modulus) / (mm - mu_dil) == pytest.approx(1.0, abs=0.03)
    E_dil = young_poisson_from_plane_strain(k_dil, mu_dil)[0]
    assert (E[0] - r.youngs_modulus) / (E[0] - E_dil) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("mg", [0.015, 0.03, 0.05])
def test_within_hashin_shtrikman_bounds(mg):
    mask = generate_micrograph(Factors(2.0, mg, graphite_fraction=0.15), size=160, seed=5)[1]
    r = effective_elasticity(mask)
    hs = hashin_shtrikman_bounds(mask.mean())
    for key, val in (("k", r.bulk_modulus), ("mu", r.shear_modulus), ("E", r.youngs_modulus)):
        lo, hi = hs[key]
        assert lo <= val <= hi, (key, lo, val, hi)


def _match_count(mask, target, rng):
    """Add or remove boundary pixels at random until ``mask.sum() == target``."""
    from scipy import ndimage

    mask = mask.copy()
    diff = target - int(mask.sum())
    if diff > 0:
        ring = np.flatnonzero(ndimage.binary_dilation(mask) & ~mask)
        mask.flat[rng.choice(ring, diff, replace=False)] = True
    elif diff < 0:
        edge = np.flatnonzero(mask & ~ndimage.binary_erosion(mask))
        mask.flat[rng.choice(edge, -diff, replace=False)] = False
    return mask


def test_flakes_softer_than_nodules_at_equal_fraction():
    rng = np.random.default_rng(0)
    nodules = generate_micrograph(Factors(2.0, 0.05), size=192, seed=11)[1]
    flakes = generate_micrograph(Factors(2.0, 0.015), size=192, seed=11)[1]
    flakes = _match_count(flakes, int(nodules.sum()), rng)
    assert flakes.sum() == nodules.sum()
    e_nod = effective_elasticity(nodules).youngs_modulus
    e_flk = effective_elasticity(flakes).youngs_modulus
    assert e_flk < e_nod - 5.0, (e_flk, e_nod)


def test_float32_agrees_with_float64():
    mask = generate_micrograph(Factors(4.0, 0.03), size=128, seed=2)[1]
    a = effective_elasticity(mask, dtype=np.float64)
    b = effective_elasticity(mask, dtype=np.float32)
    assert b.youngs_modulus == pytest.approx(a.youngs_modulus, rel=1e-4)
    assert b.stress_concentration == pytest.approx(a.stress_concentration, rel=1e-3)


def test_basic_scheme_agrees_and_needs_more_iterations():
    mask = generate_micrograph(Factors(2.0, 0.03), size=96, seed=4)[1]
    cg = effective_elasticity(mask, method="cg")
    basic = effective_elasticity(mask, method="basic")
    assert basic.youngs_modulus == pytest.approx(cg.youngs_modulus, rel=1e-5)
    assert basic.iterations > 2 * cg.iterations


def test_isotropic_stiffness_and_stress_concentration_of_disc():
    r = effective_elasticity(disc(96, 12), return_fields=True)
    C = r.stiffness
    assert C[0, 0] == pytest.approx(C[1, 1], rel=1e-6)  # square symmetry
    assert abs(C[0, 2]) < 1e-6 * C[0, 0] and abs(C[1, 2]) < 1e-6 * C[0, 0]
    assert r.von_mises.shape == (96, 96)
    # a soft inclusion concentrates stress in the matrix beside it
    assert r.stress_concentration > 1.0
    assert r.von_mises.max() > 1.5


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(BadInputError, match="2D"):
        effective_elasticity(np.zeros((4, 4, 4)))
    with pytest.raises(BadInputError, match="nu"):
        effective_elasticity(np.zeros((8, 8)), nu=(0.6, 0.2))
    with pytest.raises(BadInputError, match="method"):
        effective_elasticity(np.zeros((8, 8)), method="newton")


def test_hs_bounds_degenerate_cases():
    lo, hi = hashin_shtrikman_bounds(0.0)["E"]
    assert lo == pytest.approx(210.0) and hi == pytest.approx(210.0)
    lo, hi = hashin_shtrikman_bounds(0.2)["E"]
    assert 15.0 < lo < hi < 210.0
