"""matrep's two-point statistics against PyMKS 0.4.1 outputs stored in tests/fixtures/twopoint.

The fixture is made by ``tests/fixtures/twopoint/make_reference.py`` (run in a separate venv
with pymks installed); these tests need only numpy.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from matrep.plugins.twopoint import (
    correlations_multiple,
    two_point_stats,
    two_point_stats_reference,
)

FIXTURE = Path(__file__).parent / "fixtures" / "twopoint" / "reference.npz"


def _load():
    data = np.load(FIXTURE)
    meta = json.loads(str(data["meta_json"]))
    return data, meta


DATA, META = _load()
CASES = sorted(k for k in META["cases"] if k != "multiple")


def test_fixture_records_pymks_version():
    assert META["pymks_version"] == "0.4.1"


@pytest.mark.parametrize("name", CASES)
def test_two_point_stats_matches_pymks(name):
    kw = dict(META["cases"][name])
    a, b = DATA[f"{name}__arr1"], DATA[f"{name}__arr2"]
    if f"{name}__mask" in DATA:
        kw["mask"] = DATA[f"{name}__mask"]
    expected = DATA[f"{name}__out"]
    got = two_point_stats(a, b, **kw)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", [c for c in CASES if "mask" not in c])
def test_float32_and_float64_inputs_match_pymks(name, dtype):
    kw = dict(META["cases"][name])
    a = DATA[f"{name}__arr1"].astype(dtype)
    b = DATA[f"{name}__arr2"].astype(dtype)
    got = two_point_stats(a, b, **kw)
    assert got.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, DATA[f"{name}__out"], rtol=tol, atol=tol)


@pytest.mark.parametrize("name", [c for c in CASES if "mask" not in c])
def test_per_patch_reference_matches_pymks(name):
    kw = dict(META["cases"][name])
    got = two_point_stats_reference(DATA[f"{name}__arr1"], DATA[f"{name}__arr2"], **kw)
    np.testing.assert_allclose(got, DATA[f"{name}__out"], rtol=1e-10, atol=1e-12)


def test_correlations_multiple_matches_pymks_layout():
    kw = META["cases"]["multiple"]
    got = correlations_multiple(DATA["multiple__labels"], kw["correlations"],
                                periodic_boundary=kw["periodic_boundary"], cutoff=kw["cutoff"],
                                dtype=np.float64)
    expected = DATA["multiple__out"]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
