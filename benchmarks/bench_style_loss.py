"""Style loss / Gram matrix: the fused Triton kernel against its baselines, in the same run.

Run (CPU subset; GPU-only cases are skipped without CUDA)::

    .venv/bin/python -m pytest benchmarks/bench_style_loss.py --benchmark-enable -q -s

Full set on a GPU (every case; ``-m ""`` lifts the default ``not gpu`` filter)::

    python -m pytest benchmarks/bench_style_loss.py --benchmark-enable -m "" -q -s \
        --benchmark-json=style_loss.json

Cases: the five VGG19 layers (conv1_1, pool1, pool2, pool3, pool4) alone and ``all`` together,
batch 1/8/32/128, 128² and 256² inputs, float32 and bfloat16 features.

* ``fwd_bwd`` (loss and gradient w.r.t. the reconstruction features, target side fixed):
  ``triton`` (``matrep.kernels.style_loss``), ``eager`` (``bmm`` + ``mse_loss``; bf16 under
  autocast, so G is bf16; fp32 with TF32 off), ``eager_tf32`` (fp32 with TF32 matmuls),
  ``compile`` (``torch.compile`` of ``eager``), ``reference`` (``matrep.kernels.reference``, G in
  fp32 always: the torch backend of ``style_loss``).
* ``gram_fwd`` (forward-only Gram): ``triton`` (``gram_matrix``) and ``bmm`` (cuBLAS
  speed of light, output in the input dtype).

``extra_info`` of every case: ``median_ms`` (``triton.testing.do_bench`` on CUDA, median of
repeated calls on CPU), ``ratio_to_eager`` (eager median / this median, > 1 is faster;
for ``gram_fwd`` the ratio is to ``bmm``), ``min_bytes`` (fwd+bwd: read F and Fh, read Fh, write
dFh; gram: read F, write G in fp32), ``gbps`` (min_bytes / median), ``pct_of_floor`` (time at
the copy bandwidth measured in this session / median), ``copy_gbps`` (that bandwidth),
``rel_err_fp64`` (loss or G against float64), ``peak_mem_mb`` (CUDA), ``device``.
A summary table is printed at the end. Nothing asserts on time. With ``--benchmark-disable``
(the project's default addopts) every case runs once as a smoke test, without timing.
"""

from __future__ import annotations

import math
import statistics
import time

import pytest
import torch
import torch.nn.functional as nnf

from matrep.kernels import gram_matrix, style_loss
from matrep.kernels.reference import gram_matrix_reference, style_loss_reference

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
LAYERS = {"conv1_1": (64, 1), "pool1": (64, 2), "pool2": (128, 4), "pool3": (256, 8),
          "pool4": (512, 16)}  # channels, downsampling of the input side
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_MEDIANS: dict = {}
_ROWS: list = []

# ------------------------------------------------------------------------------------ the cases
# the CPU subset: small batches at 128², fp32, no Triton (the interpreter is not a speed)
CPU_SUBSET = {"batch": {1, 8}, "size": {128}, "dtype": {"fp32"},
              "impl": {"eager", "reference", "bmm"}}


def _cases():
    out = []
    for mode, impls in (("fwd_bwd", ("triton", "eager", "eager_tf32", "compile", "reference")),
                        ("gram_fwd", ("triton", "bmm"))):
        for layer in (*LAYERS, "all"):
            if mode == "gram_fwd" and layer == "all":
                continue
            for size in (128, 256):
                for batch in (1, 8, 32, 128):
                    for dt in DTYPES:
                        for impl in impls:
                            if impl == "eager_tf32" and dt != "fp32":
                                continue
                            cpu_ok = (batch in CPU_SUBSET["batch"] and size in CPU_SUBSET["size"]
                                      and dt in CPU_SUBSET["dtype"] and impl in CPU_SUBSET["impl"])
                            marks = () if cpu_ok else (
                                pytest.mark.gpu,
                                pytest.mark.skipif(not HAS_CUDA, reason="GPU-only case"))
                            out.append(pytest.param(mode, layer, size, batch, dt, impl, marks=marks,
                                                    id=f"{mode}-{layer}-{size}-b{batch}-{dt}-{impl}"))
    return out


# ------------------------------------------------------------------------------- implementations
def eager_style_loss(xs, ts, weights=None):
    """What a user writes: two ``bmm`` and one ``mse_loss`` per layer (bf16 G under autocast)."""
    weights = weights or [1.0] * len(xs)
    loss = 0.0
    for x, t, w in zip(xs, ts, weights):
        B, C, H, W = x.shape
        M = H * W
        f, ft = x.reshape(B, C, M), t.reshape(B, C, M)
        g = torch.bmm(f, f.transpose(1, 2))
        gt = torch.bmm(ft, ft.transpose(1, 2))
        loss = loss + w / (4.0 * C * C * M * M * B) * nnf.mse_loss(g, gt, reduction="sum")
    return loss


def _features(layer, size, batch, dtype, seed):
    names = list(LAYERS) if layer == "all" else [layer]
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for n in names:
        C, down = LAYERS[n]
        s = size // down
        out.append(torch.randn(batch, C, s, s, generator=g).abs_().to(DEVICE, DTYPES[dtype]))
    return out


def _sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


def _median_ms(fn) -> float:
    if HAS_CUDA:
        import triton.testing
        return float(triton.testing.do_bench(fn, return_mode="median"))
    fn()  # warm up
    times, t_end = [], time.perf_counter() + 1.0
    while len(times) < 5 or (time.perf_counter() < t_end and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _copy_gbps() -> float:
    """Achievable bandwidth of this device: a large device-to-device copy (read + write)."""
    if "copy" not in _MEDIANS:
        n = (256 if HAS_CUDA else 32) * 2 ** 20 // 4
        a = torch.empty(n, device=DEVICE)
        b = torch.empty_like(a)
        ms = _median_ms(lambda: b.copy_(a))
        _MEDIANS["copy"] = 2 * a.numel() * 4 / (ms * 1e-3) / 1e9
    return _MEDIANS["copy"]


def _make_fn(mode, impl, xs, ts, dtype):
    bf16 = DTYPES[dtype] == torch.bfloat16
    if mode == "gram_fwd":
        x = xs[0]
        B, C, H, W = x.shape
        if impl == "bmm":
            f = x.reshape(B, C, H * W)
            return lambda: torch.bmm(f, f.transpose(1, 2))
        return lambda: gram_matrix(x, backend="triton")

    xs = [x.requires_grad_() for x in xs]
    if impl == "triton":
        loss_fn = lambda: style_loss(xs, ts, backend="triton")  # noqa: E731
    elif impl == "reference":
        loss_fn = lambda: style_loss_reference(xs, ts)  # noqa: E731
    elif impl in ("eager", "eager_tf32"):
        def loss_fn():
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
                return eager_style_loss(xs, ts)
    elif impl == "compile":
        compiled = torch.compile(eager_style_loss, dynamic=False)

        def loss_fn():
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
                return compiled(xs, ts)
    else:
        raise ValueError(impl)

    def step():
        loss = loss_fn()
        return torch.autograd.grad(loss, xs)

    return step, loss_fn


def _min_bytes(mode, xs):
    if mode == "gram_fwd":
        x = xs[0]
        B, C = x.shape[:2]
        return x.numel() * x.element_size() + B * C * C * 4
    return sum(4 * x.numel() * x.element_size() for x in xs)


def _rel_err(mode, impl, fn_loss, xs, ts):
    with torch.no_grad():
        if mode == "gram_fwd":
            got = fn_loss().double()
            ref = gram_matrix_reference(xs[0].double())
        else:
            got = fn_loss().double()
            ref = style_loss_reference([x.double() for x in xs], [t.double() for t in ts])
    return float(((got - ref).abs().max() / ref.abs().max()).item())


@pytest.fixture(scope="module", autouse=True)
def _summary():
    yield
    if not _ROWS:
        return
    dev = torch.cuda.get_device_name() if HAS_CUDA else "cpu"
    print(f"\nstyle loss benchmark on {dev} (copy bandwidth {_copy_gbps():.1f} GB/s)")
    print(f"{'case':<44} {'median ms':>10} {'x eager':>8} {'GB/s':>8} {'% floor':>8} {'rel err':>9}")
    for r in _ROWS:
        print(f"{r['case']:<44} {r['median_ms']:>10.3f} {r['ratio_to_eager']:>8.2f} "
              f"{r['gbps']:>8.1f} {r['pct_of_floor']:>8.1f} {r['rel_err_fp64']:>9.1e}")


@pytest.mark.parametrize("mode,layer,size,batch,dtype,impl", _cases())
def test_style_loss(benchmark, mode, layer, size, batch, dtype, impl):
    if not HAS_CUDA:
        torch.set_num_threads(1)  # a shared, loaded CPU: one thread gives stable medians
    xs = _features(layer, size, batch, dtype, seed=1)
    ts = _features(layer, size, batch, dtype, seed=2)
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = impl == "eager_tf32"  # compile: TF32 off, like eager
    try:
        if mode == "gram_fwd":
            fn = _make_fn(mode, impl, xs, ts, dtype)
            fn_loss = fn
            base_impl, base_key = "bmm", (mode, layer, size, batch, dtype, "bmm")
        else:
            fn, fn_loss = _make_fn(mode, impl, xs, ts, dtype)
            base_impl, base_key = "eager", (mode, layer, size, batch, dtype, "eager")
        if getattr(benchmark, "disabled", False):
            # --benchmark-disable (the default addopts): a smoke run, no timing
            benchmark(fn)
            assert math.isfinite(_rel_err(mode, impl, fn_loss, xs, ts))
            return
        if HAS_CUDA:
            torch.cuda.reset_peak_memory_stats()
        median = _median_ms(fn)
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 if HAS_CUDA else float("nan")
        _MEDIANS[(mode, layer, size, batch, dtype, impl)] = median
        if base_key not in _MEDIANS:
            xb = _features(layer, size, batch, dtype, seed=1)
            tb = _features(layer, size, batch, dtype, seed=2)
            torch.backends.cuda.matmul.allow_tf32 = False
            base = _make_fn(mode, base_impl, xb, tb, dtype)
            _MEDIANS[base_key] = _median_ms(base if mode == "gram_fwd" else base[0])
        nbytes = _min_bytes(mode, xs)
        gbps = nbytes / (median * 1e-3) / 1e9
        info = {
            "device": torch.cuda.get_device_name() if HAS_CUDA else "cpu",
            "median_ms": median,
            "ratio_to_eager": _MEDIANS[base_key] / median,
            "baseline": base_impl,
            "min_bytes": nbytes,
            "gbps": gbps,
            "copy_gbps": _copy_gbps(),
            "pct_of_floor": 100.0 * gbps / _copy_gbps(),
            "rel_err_fp64": _rel_err(mode, impl, fn_loss, xs, ts),
            "peak_mem_mb": peak,
        }
        benchmark.extra_info.update(info)
        _ROWS.append({"case": f"{mode}-{layer}-{size}-b{batch}-{dtype}-{impl}", **info})

        def timed():
            fn()
            _sync()

        benchmark.pedantic(timed, rounds=5 if not HAS_CUDA else 20, iterations=1, warmup_rounds=1)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
