"""Elasticity solver per 1024² micrograph: preconditioned CG vs the basic Moulinec-Suquet scheme.

Run (the 1024² cases are marked ``slow`` so the default test run, which collects benchmarks
once with ``--benchmark-disable``, only runs the 256² smoke case)::

    .venv/bin/python -m pytest benchmarks/bench_homogenization.py --benchmark-enable \
        -m "slow or not slow" -q -s

Cases, each on a generated 1024² mask (nodular: Mg 0.05 %, flake: Mg 0.015 %, 2 K/s):

* ``cg-float32``: :func:`matrep.datasets.effective_elasticity` as the data-set generator calls
  it (float32 fields, ``tol=1e-5``);
* ``cg-float64``: the same in float64;
* ``basic-float64``: the basic Moulinec-Suquet fixed point (float64: in float32 its recomputed
  residual can stall near the tolerance; arithmetic-mean reference
  medium) on the same discretisation: the baseline the CG acceleration is measured against;
* ``micrograph``: one whole data-set item (generate + save-free descriptors + solve).

``extra_info`` records solver iterations, final residual, the Young's modulus and the CPU
seconds (``process_time``, more stable than wall time on a shared machine). The ratios
basic / cg are printed at the end and written to ``.benchmarks/homogenization_ratios.json``.
Nothing here asserts on time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from matrep.datasets import Factors, effective_elasticity, generate_micrograph, measure_mask

_MASKS: dict[tuple[str, int], np.ndarray] = {}
_RESULTS: dict[tuple[str, str], float] = {}
MORPH = {"nodular": 0.05, "flake": 0.015}


def _mask(morph, size):
    key = (morph, size)
    if key not in _MASKS:
        _MASKS[key] = generate_micrograph(Factors(2.0, MORPH[morph]), size=size, seed=0)[1]
    return _MASKS[key]


def _run(benchmark, case, morph, mask, **kw):
    info = {}

    def solve():
        t = time.process_time()
        r = effective_elasticity(mask, **kw)
        info.update(cpu_s=time.process_time() - t, iterations=r.iterations,
                    residual=r.residual, youngs_modulus_gpa=r.youngs_modulus)
        return r

    r = benchmark.pedantic(solve, rounds=1 if mask.shape[0] >= 1024 else 3, iterations=1)
    benchmark.extra_info.update(info)
    benchmark.extra_info["size"] = mask.shape[0]
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        _RESULTS[(morph, case)] = stats.stats.median
    assert r.converged
    return r


@pytest.fixture(scope="module", autouse=True)
def _report_ratios():
    yield
    if not _RESULTS:
        return
    ratios = {}
    for morph in MORPH:
        base = _RESULTS.get((morph, "cg-float32"))
        for case in ("cg-float64", "basic-float64"):
            t = _RESULTS.get((morph, case))
            if base and t:
                ratios[f"{morph}:{case}/cg-float32"] = t / base
    print("\nhomogenization time ratios (median):", json.dumps(ratios, indent=1))
    out = Path(".benchmarks")
    out.mkdir(exist_ok=True)
    (out / "homogenization_ratios.json").write_text(json.dumps(ratios, indent=1))


def test_smoke_256(benchmark):
    _run(benchmark, "cg-float32-256", "nodular", _mask("nodular", 256), dtype=np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("morph", list(MORPH))
@pytest.mark.parametrize("case", ["cg-float32", "cg-float64", "basic-float64"])
def test_solver_1024(benchmark, case, morph):
    method, dt = case.split("-")
    _run(benchmark, case, morph, _mask(morph, 1024), method=method,
         dtype=np.float32 if dt == "float32" else np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("morph", list(MORPH))
def test_micrograph_1024(benchmark, morph):
    info = {}

    def one():
        t = time.process_time()
        _, mask = generate_micrograph(Factors(2.0, MORPH[morph]), size=1024, seed=1)
        t_gen = time.process_time() - t
        measure_mask(mask)
        r = effective_elasticity(mask, dtype=np.float32)
        info.update(cpu_s=time.process_time() - t, generate_cpu_s=t_gen, iterations=r.iterations)

    benchmark.pedantic(one, rounds=1, iterations=1)
    benchmark.extra_info.update(info)
