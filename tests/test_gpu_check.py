"""``scripts/gpu_check.py`` (``make gpu-check``): the no-GPU path, the case list, the results file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gpu_check():
    return _load("gpu_check", "scripts/gpu_check.py")


def test_without_cuda_says_so_exits_0_and_writes_nothing(gpu_check, monkeypatch, capsys,
                                                          tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 0
    assert "no CUDA GPU present" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_style_cases_exist_in_the_benchmark(gpu_check):
    bench = _load("bench_style_loss_ids", "benchmarks/bench_style_loss.py")
    known = {p.id for p in bench._cases()}
    wanted = gpu_check.style_case_ids((128, 256))
    assert set(wanted) <= known, sorted(set(wanted) - known)
    # five layers together, batch 8/32/128, fp32 (+TF32 eager) and bf16, vs eager and compile
    fwd = [c for c in wanted if c.startswith("fwd_bwd-all-128-")]
    assert len(fwd) == 3 * (5 + 4)
    assert {"fwd_bwd-all-128-b128-bf16-compile", "gram_fwd-pool4-128-b32-bf16-bmm"} <= set(wanted)


def test_results_file_names_the_card(gpu_check, tmp_path):
    step = {"command": "python -m pytest tests -m gpu", "env": {}, "rc": 0, "wall_s": 1.0}
    row = {"case": "fwd_bwd-all-128-b8-bf16-triton", "median_ms": 0.5, "baseline": "eager",
           "ratio_to_eager": 2.5, "gbps": 900.0, "pct_of_floor": 40.0, "rel_err_fp64": 1e-3,
           "peak_mem_mb": 300.0}
    result = {"card": "NVIDIA H200", "date": "2026-12-03T00:00:00+00:00", "commit": "abc1234",
              "versions": {"torch": "x"}, "steps": {"gpu tests": step},
              "gpu_tests": {"passed": 3, "failures": 0, "errors": 0, "skipped": 0},
              "style_loss": [row],
              "train_step": {"bf16": {"batch": 8, "size": 128, "patches_per_s": {"plain": 10.0},
                                      "speedup_vs_plain": {"plain": 1.0}}}}
    js, md = gpu_check.write_results(result, tmp_path)
    assert js.name == "gpu-results-nvidia-h200.json" and md.name == "gpu-results-nvidia-h200.md"
    assert json.loads(js.read_text())["card"] == "NVIDIA H200"
    text = md.read_text()
    assert "NVIDIA H200" in text and "| fwd_bwd-all-128-b8-bf16-triton | 0.500 | 2.50 |" in text


def test_with_cuda_runs_every_step_in_order_and_writes_the_files(gpu_check, monkeypatch, tmp_path):
    """The orchestration with a pretend GPU: pytest calls are recorded, not run."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Pretend GPU 9000")
    calls = []

    def fake(args, env, timeout, log):
        calls.append((args, env))
        return {"command": " ".join(args[:2]), "env": env, "rc": 0, "wall_s": 0.0}

    monkeypatch.setattr(gpu_check, "_pytest", fake)
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert calls[0][0][:3] == ["tests", "-m", "gpu"]
    style = [a for a, _ in calls if a[0].startswith("benchmarks/bench_style_loss.py::")]
    assert len(style) == 2 and not any(c.endswith("-compile]") for c in style[0] if "::" in c)
    assert all(c.endswith("-compile]") for c in style[1] if "::" in c)
    assert calls[-1][0] is style[1]                      # compile cases last
    assert [e.get("MATREP_BENCH_PRECISION") for _, e in calls if e] == ["fp32", "bf16"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["gpu-results-pretend-gpu-9000.json", "gpu-results-pretend-gpu-9000.log",
                     "gpu-results-pretend-gpu-9000.md"]
    assert "Pretend GPU 9000" in (tmp_path / "gpu-results-pretend-gpu-9000.md").read_text()


def test_out_of_budget_steps_are_skipped_and_reported(gpu_check, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Pretend GPU")
    assert gpu_check.main(["--out", str(tmp_path), "--budget", "0"]) == 1
    res = json.loads((tmp_path / "gpu-results-pretend-gpu.json").read_text())
    assert {s["rc"] for s in res["steps"].values()} == {"not run: time budget spent"}
