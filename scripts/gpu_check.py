"""``make gpu-check``: the GPU tests and the GPU benchmarks in one command, with a results file.

On a machine without CUDA it prints that no GPU is present and exits 0 (nothing is written).
With CUDA it runs, each in its own ``pytest`` process and within one time budget
(``--budget``, default 480 s, sized for one H100/H200):

1. ``pytest -m gpu tests``: the GPU-marked tests (Triton values and gradients on VGG shapes,
   TF32 tolerances, bitwise determinism and CUDA-graph capture, STSIM-2 GPU vs CPU);
2. ``benchmarks/bench_style_loss.py``, the cases that matter (see ``docs/kernels.md``): the five
   VGG19 style layers together (``fwd_bwd-all``: Triton vs eager, eager with TF32, compile and
   the torch reference) and each layer's forward-only Gram (Triton vs ``bmm``), 128² inputs,
   batch 8/32/128, float32 and bfloat16;
3. ``benchmarks/bench_train_step.py`` on CUDA in float32 and bf16 (matrep's step vs a plain
   PyTorch step of the same model).

It writes ``benchmarks/gpu-results-<card>.json``, ``.md`` and ``.log`` (the pytest output;
``--out`` to change the folder),
named for ``torch.cuda.get_device_name()``, and exits non-zero if a GPU test failed or a step
could not run. Nothing asserts on time; the figures are for reading and committing.

Usage::

    .venv/bin/python scripts/gpu_check.py [--budget 480] [--sizes 128] [--out benchmarks]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STYLE_BENCH = "benchmarks/bench_style_loss.py"
TRAIN_BENCH = "benchmarks/bench_train_step.py"
BATCHES = (8, 32, 128)
DTYPES = ("fp32", "bf16")
FWD_BWD_IMPLS = ("triton", "eager", "eager_tf32", "compile", "reference")
GRAM_IMPLS = ("triton", "bmm")
LAYERS = ("conv1_1", "pool1", "pool2", "pool3", "pool4")


def style_case_ids(sizes=(128,)) -> list[str]:
    """The parametrize ids of ``bench_style_loss.test_style_loss`` that the check runs.

    Parameters
    ----------
    sizes : sequence of int
        Input sizes (128 and/or 256, as the benchmark defines them).

    Returns
    -------
    list of str
        Ids such as ``fwd_bwd-all-128-b8-fp32-triton``; eager with TF32 only for float32.
    """
    ids = []
    for size in sizes:
        for batch in BATCHES:
            for dt in DTYPES:
                for impl in FWD_BWD_IMPLS:
                    if impl == "eager_tf32" and dt != "fp32":
                        continue
                    ids.append(f"fwd_bwd-all-{size}-b{batch}-{dt}-{impl}")
                for layer in LAYERS:
                    for impl in GRAM_IMPLS:
                        ids.append(f"gram_fwd-{layer}-{size}-b{batch}-{dt}-{impl}")
    return ids


def card_slug(name: str) -> str:
    """A file-name-safe form of a device name: ``"NVIDIA H200"`` -> ``"nvidia-h200"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def _pytest(args, env_extra, timeout, log):
    """Run ``python -m pytest args`` in its own process group, killed whole at ``timeout``."""
    env = dict(os.environ, **env_extra)
    cmd = [sys.executable, "-m", "pytest", *args]
    step = {"command": " ".join(["python -m pytest", *args]), "env": env_extra}
    if timeout < 10:
        step.update(rc="not run: time budget spent", wall_s=0.0)
        print(f"gpu-check: skipping {step['command'][:80]}...: time budget spent", flush=True)
        return step
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and its compile workers
        out, _ = proc.communicate()
        rc = f"timeout after {timeout:.0f} s"
    step.update(rc=rc, wall_s=round(time.perf_counter() - t0, 1))
    log.write(f"$ {' '.join(cmd)}\n{out}\n")
    log.flush()
    print(out[-4000:], flush=True)
    return step


def _junit_counts(path: Path) -> dict:
    if not path.is_file():
        return {}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for s in suites:
        for k in counts:
            counts[k] += int(s.get(k, 0))
        for case in s.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_tests"] = failed
    return counts


def _style_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for b in json.loads(path.read_text()).get("benchmarks", []):
        info = b.get("extra_info", {})
        if "median_ms" not in info:
            continue
        case = b["name"].split("[", 1)[-1].rstrip("]")
        rows.append({"case": case, **{k: info[k] for k in (
            "median_ms", "baseline", "ratio_to_eager", "gbps", "pct_of_floor", "rel_err_fp64",
            "peak_mem_mb") if k in info}})
    return rows


def write_results(result: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write ``gpu-results-<card>.json`` and ``.md`` into ``out_dir``.

    Parameters
    ----------
    result : dict
        What :func:`main` gathered: ``card``, ``versions``, ``steps``, ``gpu_tests``,
        ``style_loss`` (rows), ``train_step`` (per precision).
    out_dir : Path
        Folder for the two files (created if missing).

    Returns
    -------
    tuple of Path
        The JSON and the markdown file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"gpu-results-{card_slug(result['card'])}"
    js, md = stem.with_suffix(".json"), stem.with_suffix(".md")
    js.write_text(json.dumps(result, indent=2, default=str) + "\n")
    lines = [f"# `make gpu-check` on {result['card']}", "",
             f"{result['date']}, commit {result['commit']}; "
             + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".", "",
             "## Steps", "", "| step | rc | wall s | command |", "|---|---|---|---|"]
    for name, s in result["steps"].items():
        lines.append(f"| {name} | {s['rc']} | {s['wall_s']} | `{s['command']}` |")
    t = result.get("gpu_tests") or {}
    lines += ["", "## GPU tests (`pytest -m gpu`)", "",
              (f"{t.get('passed', 0)} passed, {t.get('failures', 0)} failed, "
               f"{t.get('errors', 0)} errors, {t.get('skipped', 0)} skipped." if t
               else "not run.")]
    lines += [f"- failed: `{f}`" for f in t.get("failed_tests", [])]
    lines += ["", "## Style loss (`benchmarks/bench_style_loss.py`)", "",
              "`x base`: baseline median / this median (> 1 is faster); baseline is eager for "
              "`fwd_bwd`, `bmm` for `gram_fwd`. `% floor`: time at the measured copy bandwidth / "
              "this time.", "",
              "| case | median ms | x base | GB/s | % floor | rel err vs fp64 | peak MB |",
              "|---|---|---|---|---|---|---|"]
    for r in result.get("style_loss", []):
        lines.append(f"| {r['case']} | {r['median_ms']:.3f} | {r['ratio_to_eager']:.2f} | "
                     f"{r['gbps']:.1f} | {r['pct_of_floor']:.1f} | {r['rel_err_fp64']:.1e} | "
                     f"{r['peak_mem_mb']:.0f} |")
    if not result.get("style_loss"):
        lines.append("| not run | | | | | | |")
    lines += ["", "## Training step (`benchmarks/bench_train_step.py`)", ""]
    for prec, r in (result.get("train_step") or {}).items():
        lines.append(f"### {prec}, batch {r.get('batch')} x {r.get('size')}²")
        lines += ["", "| step | patches/s | x plain |", "|---|---|---|"]
        for k, v in r.get("patches_per_s", {}).items():
            s = r.get("speedup_vs_plain", {}).get(k)
            lines.append(f"| {k} | {v:.1f} | {'' if s is None else f'{s:.2f}'} |")
        lines.append("")
    if not result.get("train_step"):
        lines.append("not run.")
    md.write_text("\n".join(lines).rstrip() + "\n")
    return js, md


def main(argv=None) -> int:
    """Run the check; return the exit status (0 without CUDA)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=480.0,
                    help="seconds for all steps together (default 480)")
    ap.add_argument("--sizes", default="128", help="style-loss input sizes, e.g. 128,256")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks",
                    help="folder for gpu-results-<card>.json/.md (default benchmarks/)")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU present (torch.cuda.is_available() is False); "
              "nothing to check, exiting 0. Run `make gpu-check` on a machine with a GPU.")
        return 0

    import triton

    card = torch.cuda.get_device_name()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                                capture_output=True).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    result = {
        "card": card, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "commit": commit,
        "versions": {"torch": torch.__version__, "triton": triton.__version__,
                     "cuda": torch.version.cuda, "python": platform.python_version()},
        "steps": {}, "gpu_tests": {}, "style_loss": [], "train_step": {},
    }
    print(f"gpu-check on {card} (budget {args.budget:.0f} s)", flush=True)
    deadline = time.perf_counter() + args.budget
    ok = True
    with tempfile.TemporaryDirectory() as tmp, \
            open(Path(tmp) / "log.txt", "w") as log:
        tmp = Path(tmp)

        def left():
            return deadline - time.perf_counter()

        # 1. the GPU-marked tests
        junit = tmp / "gpu-tests.xml"
        s = _pytest(["tests", "-m", "gpu", "-q", f"--junitxml={junit}"], {}, left() - 300, log)
        result["steps"]["gpu tests"] = s
        result["gpu_tests"] = _junit_counts(junit)
        ok &= s["rc"] == 0

        def style(name, cases, timeout):
            bjson = tmp / f"{name}.json"
            nodes = [f"{STYLE_BENCH}::test_style_loss[{c}]" for c in cases]
            s = _pytest([*nodes, "-m", "", "-q", "--benchmark-enable",
                         f"--benchmark-json={bjson}"], {}, timeout, log)
            s["command"] = (f"python -m pytest {STYLE_BENCH} -m '' --benchmark-enable "
                            f"({len(nodes)} cases of scripts/gpu_check.py style_case_ids)")
            result["steps"][name] = s
            result["style_loss"] += _style_rows(bjson)
            return s["rc"] == 0

        # 2. the style-loss cases that matter, torch.compile last: its compilations are the
        #    slowest part, and a run out of time then loses only those cases
        cases = style_case_ids(sizes)
        ok &= style("style-loss benchmark", [c for c in cases if not c.endswith("-compile")],
                    left() - 200)

        # 3. the training step, fp32 then bf16
        ratios = REPO / "benchmarks" / ".train_step_ratios.json"
        for prec in ("fp32", "bf16"):
            if ratios.exists():
                ratios.unlink()
            env = {"MATREP_BENCH_DEVICE": "cuda", "MATREP_BENCH_PRECISION": prec,
                   "MATREP_BENCH_ROUNDS": "10"}
            s = _pytest([TRAIN_BENCH, "-q", "--benchmark-enable"], env,
                        min(150.0, left() - 90), log)
            result["steps"][f"train step {prec}"] = s
            ok &= s["rc"] == 0
            if ratios.exists():
                result["train_step"][prec] = json.loads(ratios.read_text())

        # 4. torch.compile against the kernel
        ok &= style("style-loss benchmark (compile)",
                    [c for c in cases if c.endswith("-compile")], left())
        js, md = write_results(result, args.out)
        log.flush()
        shutil.copyfile(tmp / "log.txt", js.with_suffix(".log"))
    print(f"gpu-check: results in {js.relative_to(REPO) if js.is_relative_to(REPO) else js} "
          f"and {md.name}; {'all steps passed' if ok else 'SOME STEPS FAILED (see the file)'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
