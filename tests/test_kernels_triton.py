"""The Triton Gram / style-loss kernels against a float64 reference.

On CPU the kernels run in Triton's interpreter. ``matrep.kernels`` reads ``TRITON_INTERPRET``
when a kernel is launched (and builds the interpreted kernels then), so the variable is set per
test with monkeypatch and never leaks into other test modules. GPU tests are marked ``gpu``.
"""

import math
import zlib

import pytest
import torch

pytest.importorskip("triton")

from matrep.kernels import gram_matrix, style_loss, style_loss_from_grams  # noqa: E402
from matrep.kernels.reference import gram_matrix_reference, style_loss_reference  # noqa: E402
from matrep.kernels.gram_triton import _config, style_loss_triton  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _interpret(request, monkeypatch):
    if "gpu" not in request.keywords:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


def _seed(*key):
    """A fresh, reproducible seed per case (different draws for every case)."""
    return zlib.crc32(repr(key).encode())


def _draw(shape, dtype, seed, device="cpu", scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g)).to(device=device, dtype=dtype)


def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _check_against_float64(x, t, *, weights=None, tol_loss, tol_grad, grad_targets=True, **kw):
    # 16-bit gradients of this loss are ~1e-6 (float16 subnormals): scale the upstream gradient
    # as a GradScaler would, so that the comparison measures the kernel and not the underflow
    gscale = 2.0 ** 14 if x[0].dtype != torch.float32 else 1.0
    xs = [v.clone().requires_grad_() for v in x]
    ts = [v.clone().requires_grad_(grad_targets) for v in t]
    loss = style_loss_triton(xs, ts, weights or [1.0] * len(xs), target=1, **kw)
    (loss * gscale).backward()
    xd = [v.detach().double().requires_grad_() for v in x]
    td = [v.detach().double().requires_grad_(grad_targets) for v in t]
    ref = style_loss_reference(xd, td, weights)
    (ref * gscale).backward()
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert math.isclose(loss.item(), ref.item(), rel_tol=tol_loss), (loss.item(), ref.item())
    for a, b in zip(xs, xd):
        assert a.grad.shape == a.shape and a.grad.dtype == a.dtype
        assert _rel(a.grad, b.grad) < tol_grad
    for a, b in zip(ts, td):
        if grad_targets:
            assert _rel(a.grad, b.grad) < tol_grad
        else:
            assert a.grad is None
    return loss, [a.grad for a in xs]


TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (1e-4, 2e-3)}

# every value of every axis (C in {1,3,64,130}, M in {1,7,100,300}, B in {1,3}, fp32/fp16),
# paired so that each C meets several M and both dtypes without the full product
CASES = [
    (1, 1, (1, 1), torch.float32),
    (3, 1, (15, 20), torch.float16),
    (3, 3, (1, 7), torch.float32),
    (1, 3, (10, 10), torch.float16),
    (3, 3, (15, 20), torch.float32),
    (1, 64, (1, 1), torch.float16),
    (3, 64, (7, 1), torch.float32),
    (1, 64, (15, 20), torch.float32),
    (3, 64, (10, 10), torch.float16),
    (1, 130, (10, 10), torch.float32),
    (3, 130, (1, 7), torch.float16),
    (1, 130, (15, 20), torch.float16),
]


@pytest.mark.parametrize("B,C,HW,dtype", CASES)
def test_values_and_gradients(B, C, HW, dtype):
    shape = (B, C, *HW)
    x = _draw(shape, dtype, _seed("x", B, C, HW, dtype))
    t = _draw(shape, dtype, _seed("t", B, C, HW, dtype))
    tol_loss, tol_grad = TOL[dtype]
    _check_against_float64([x], [t], tol_loss=tol_loss, tol_grad=tol_grad)


@pytest.mark.parametrize("split,fused", [(3, False), (2, True), (1, False), (1, True)])
def test_every_code_path(split, fused):
    """Split-M with the fixed-order reduction, and both backwards (stored D, recomputed D)."""
    shape = (3, 20, 9, 13)
    cfg = _config(20, 9 * 13, 3, torch.float32, torch.device("cpu"), True, split=split, fused=fused)
    assert cfg.split == split and cfg.fused == fused
    x = _draw(shape, torch.float32, _seed("p", split, fused))
    t = _draw(shape, torch.float32, _seed("q", split, fused))
    _check_against_float64([x], [t], tol_loss=2e-5, tol_grad=2e-5, split=split, fused=fused)


def test_several_layers_with_weights_one_call():
    dtype = torch.float32
    shapes = [(2, 5, 12, 12), (2, 17, 6, 6), (2, 33, 3, 3)]
    x = [_draw(s, dtype, _seed("lx", i)) for i, s in enumerate(shapes)]
    t = [_draw(s, dtype, _seed("lt", i)) for i, s in enumerate(shapes)]
    _check_against_float64(x, t, weights=[0.25, 1.0, 4.0], tol_loss=2e-5, tol_grad=2e-5)


def test_targets_without_grad():
    x = _draw((2, 8, 5, 5), torch.float32, _seed("ng", 0))
    t = _draw((2, 8, 5, 5), torch.float32, _seed("ng", 1))
    _check_against_float64([x], [t], tol_loss=2e-5, tol_grad=2e-5, grad_targets=False)


def test_only_targets_require_grad():
    x = _draw((2, 8, 5, 5), torch.float32, _seed("ot", 0))
    t = _draw((2, 8, 5, 5), torch.float32, _seed("ot", 1)).requires_grad_()
    style_loss([x], [t], backend="triton").backward()
    td = t.detach().double().requires_grad_()
    style_loss_reference([x.double()], [td]).backward()
    assert x.grad is None and _rel(t.grad, td.grad) < 2e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_near_perfect_reconstruction(dtype):
    """1 % feature noise: Gh - G is small, and a single float32 accumulator keeps it accurate."""
    shape = (2, 64, 10, 10)
    t = _draw(shape, torch.float32, _seed("np", str(dtype))).abs()
    x = (t + 0.01 * _draw(shape, torch.float32, _seed("nq", str(dtype)))).to(dtype)
    t = t.to(dtype)
    _check_against_float64([x], [t], tol_loss=1e-3, tol_grad=1e-2)


@pytest.mark.parametrize("split,fused", [(1, None), (3, False)])
def test_from_grams_matches_reference(split, fused):
    shape = (3, 20, 7, 11)
    x = _draw(shape, torch.float32, _seed("gx", split)).requires_grad_()
    t = _draw(shape, torch.float32, _seed("gt", split))
    G = gram_matrix(t, backend="triton")
    loss = style_loss_triton([x], [G], [1.0], target=2, split=split, fused=fused)
    loss.backward()
    xd = x.detach().double().requires_grad_()
    ref = style_loss_reference([xd], [t.double()])
    ref.backward()
    assert math.isclose(loss.item(), ref.item(), rel_tol=2e-5)
    assert _rel(x.grad, xd.grad) < 2e-5
    # public entry point, default path
    x.grad = None
    style_loss_from_grams([x], [G], backend="triton").backward()
    assert _rel(x.grad, xd.grad) < 2e-5


@pytest.mark.parametrize("target,split,fused", [(1, 3, False), (1, 1, True), (2, 2, False),
                                                (2, 1, True)])
def test_reduction_none_values_and_gradients(target, split, fused):
    """One loss per image: values and the gradient of a weighted sum over images (a per-image
    upstream gradient read on the device), on both backwards and with the split reduction."""
    layers = [(3, 20, 9, 13), (3, 7, 4, 5)]  # 9*13 > 256 stores D unless fused; 4*5 recomputes
    x = [_draw(s, torch.float32, _seed("rn", target, split, i)) for i, s in enumerate(layers)]
    t = [_draw(s, torch.float32, _seed("rt", target, split, i)) for i, s in enumerate(layers)]
    v = torch.tensor([0.5, -2.0, 3.0])
    xs = [a.clone().requires_grad_() for a in x]
    tt = [gram_matrix(b, backend="triton") for b in t] if target == 2 else t
    per = style_loss_triton(xs, tt, [0.5, 2.0], target=target, split=split, fused=fused,
                            reduction="none")
    (per * v).sum().backward()
    xd = [a.double().requires_grad_() for a in x]
    ref = style_loss_reference(xd, [b.double() for b in t], [0.5, 2.0], reduction="none")
    (ref * v.double()).sum().backward()
    assert per.shape == (3,) and per.dtype == torch.float32
    assert _rel(per, ref) < 2e-5
    for a, b in zip(xs, xd):
        assert _rel(a.grad, b.grad) < 2e-5
    # the mean of the per-image losses is the default reduction
    mean = style_loss_triton(x, tt, [0.5, 2.0], target=target, split=split, fused=fused)
    assert math.isclose(mean.item(), per.mean().item(), rel_tol=1e-6)


def test_gram_matrix_normalize_triton():
    x = _draw((2, 5, 6, 7), torch.float32, _seed("gn", 0))
    G = gram_matrix(x, backend="triton")
    assert torch.equal(gram_matrix(x, normalize=True, backend="triton"), G / 42)


@pytest.mark.parametrize("B,C,HW,dtype", [(3, 130, (15, 20), torch.float32),
                                          (2, 3, (1, 7), torch.float16),
                                          (1, 1, (1, 1), torch.float32)])
def test_gram_matrix(B, C, HW, dtype):
    x = _draw((B, C, *HW), dtype, _seed("gm", B, C, dtype)).requires_grad_()
    G = gram_matrix(x, backend="triton")
    assert G.shape == (B, C, C) and G.dtype == torch.float32
    xd = x.detach().double().requires_grad_()
    Gr = gram_matrix_reference(xd)
    assert _rel(G, Gr) < 1e-5
    w = _draw((B, C, C), torch.float32, _seed("gw", C))
    (G * w).sum().backward()
    (Gr * w.double()).sum().backward()
    assert _rel(x.grad, xd.grad) < (1e-5 if dtype == torch.float32 else 2e-3)


def test_non_contiguous_inputs():
    base = _draw((2, 24, 9, 10), torch.float32, _seed("nc"))
    tb = _draw((2, 24, 9, 10), torch.float32, _seed("nt"))
    views = {
        "channels_last": (base.to(memory_format=torch.channels_last),
                          tb.to(memory_format=torch.channels_last)),
        "channel_slice": (base[:, ::2], tb[:, 1::2]),
        "transposed_hw": (base.transpose(2, 3), tb.transpose(2, 3)),  # H, W do not merge: copied
    }
    for name, (x, t) in views.items():
        assert not x.is_contiguous(), name
        _check_against_float64([x], [t], tol_loss=2e-5, tol_grad=2e-5)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_and_inf_propagate():
    x = _draw((2, 5, 6, 6), torch.float32, _seed("nan"))
    t = _draw((2, 5, 6, 6), torch.float32, _seed("nan2"))
    xn = x.clone()
    xn[1, 3, 2, 2] = float("nan")
    assert torch.isnan(style_loss([xn], [t], backend="triton"))
    tn = t.clone()
    tn[0, 0, 0, 0] = float("inf")
    assert not torch.isfinite(style_loss([x], [tn], backend="triton"))
    Gn = gram_matrix(xn, backend="triton")
    assert torch.isnan(Gn[1, 3]).all() and torch.isfinite(Gn[0]).all()


@pytest.mark.parametrize("precision", ["ieee", "tf32", "tf32x3"])
def test_input_precision_accepted(precision):
    # the interpreter multiplies in exact fp32 whatever the precision: values must match ieee
    x = _draw((2, 6, 5, 5), torch.float32, _seed("ip", precision))
    t = _draw((2, 6, 5, 5), torch.float32, _seed("it", precision))
    a = style_loss([x], [t], backend="triton", input_precision=precision)
    ref = style_loss_reference([x.double()], [t.double()])
    assert math.isclose(a.item(), ref.item(), rel_tol=2e-5)


@pytest.mark.parametrize("split,fused", [(1, None), (3, False)])
def test_bitwise_deterministic(split, fused):
    shape = (3, 40, 8, 9)
    x = _draw(shape, torch.float32, _seed("det", split))
    t = _draw(shape, torch.float32, _seed("det2", split))
    runs = []
    for _ in range(2):
        xs, ts = x.clone().requires_grad_(), t.clone().requires_grad_()
        loss = style_loss_triton([xs], [ts], [1.0], target=1, split=split, fused=fused)
        loss.backward()
        runs.append((loss.detach(), xs.grad, ts.grad))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_misuse_with_triton_backend():
    x = _draw((2, 3, 4, 4), torch.float32, 0)
    with pytest.raises(ValueError, match="dtype of inputs"):
        style_loss([x], [x.half()], backend="triton")
    with pytest.raises(ValueError, match="empty batch"):
        style_loss([x[:0]], [x[:0]], backend="triton")


# ------------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("C,HW", [(64, (128, 128)), (128, (32, 32)), (512, (8, 8)), (3, (7, 13))])
def test_gpu_values_and_gradients(dtype, C, HW, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    shape = (4, C, *HW)
    x = _draw(shape, dtype, _seed("gpu", C, dtype), device="cuda")
    t = _draw(shape, dtype, _seed("gpu2", C, dtype), device="cuda")
    tol_grad = {torch.bfloat16: 2e-2, torch.float16: 3e-3, torch.float32: 1e-4}[dtype]
    _check_against_float64([x], [t], tol_loss=1e-4, tol_grad=tol_grad)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("precision,tol", [("ieee", 1e-5), ("tf32x3", 1e-4), ("tf32", 5e-3)])
def test_gpu_tf32_tolerances(precision, tol, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    shape = (4, 64, 64, 64)
    x = _draw(shape, torch.float32, _seed("tf", precision), device="cuda")
    t = _draw(shape, torch.float32, _seed("tf2", precision), device="cuda")
    loss = style_loss([x], [t], backend="triton", input_precision=precision)
    ref = style_loss_reference([x.double()], [t.double()])
    assert math.isclose(loss.item(), ref.item(), rel_tol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_bitwise_deterministic_and_graph_capturable(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    shapes = [(8, 64, 128, 128), (8, 64, 64, 64), (8, 128, 32, 32), (8, 256, 16, 16),
              (8, 512, 8, 8)]
    xs = [_draw(s, torch.bfloat16, _seed("gd", i), device="cuda").requires_grad_()
          for i, s in enumerate(shapes)]
    ts = [_draw(s, torch.bfloat16, _seed("ge", i), device="cuda") for i, s in enumerate(shapes)]

    def step():
        for v in xs:
            v.grad = None
        loss = style_loss(xs, ts, backend="triton")
        loss.backward()
        return loss.detach().clone(), [v.grad.clone() for v in xs]

    a, b = step(), step()
    assert torch.equal(a[0], b[0]) and all(torch.equal(u, v) for u, v in zip(a[1], b[1]))
    # no host synchronisation in forward or backward: the step captures into a CUDA graph
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = style_loss(xs, ts, backend="triton")
        grads = torch.autograd.grad(loss, xs)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(loss, a[0]) and all(torch.equal(u, v) for u, v in zip(grads, a[1]))


def test_public_names_survive_submodule_import():
    import matrep.kernels as k
    import matrep.kernels.gram_triton  # noqa: F401
    assert callable(k.style_loss) and callable(k.gram_matrix) and callable(k.style_loss_from_grams)
