"""The torch reference of the Gram matrix / style loss, argument checks and backend dispatch.

No Triton kernel runs here (see test_kernels_triton.py for those).
"""

import math

import pytest
import torch

from matrep.kernels import (
    gram_matrix,
    resolve_backend,
    style_loss,
    style_loss_from_grams,
)
from matrep.kernels.reference import (
    gram_matrix_reference,
    style_loss_from_grams_reference,
    style_loss_reference,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _loss_by_hand(inputs, targets, weights):
    """The paper's formula written out with numpy-style loops over images and layers."""
    B = inputs[0].shape[0]
    total = 0.0
    for b in range(B):
        for x, t, w in zip(inputs, targets, weights):
            C = x.shape[1]
            M = x.shape[2] * x.shape[3]
            f = x[b].reshape(C, M).double()
            g = t[b].reshape(C, M).double()
            d = f @ f.T - g @ g.T
            total += w / (4 * C * C * M * M) * float((d * d).sum())
    return total / B


def test_gram_matrix_values_and_dtype():
    g = _gen(1)
    x = torch.randn(2, 3, 4, 5, generator=g)
    G = gram_matrix_reference(x)
    assert G.shape == (2, 3, 3) and G.dtype == torch.float32
    F = x.reshape(2, 3, 20)
    torch.testing.assert_close(G, F @ F.transpose(1, 2))
    # tiny exact example: one channel of ones over M = 6 pixels gives G = 6
    assert gram_matrix(torch.ones(1, 1, 2, 3), backend="torch").item() == 6.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_keeps_gram_in_float32(dtype):
    x = torch.randn(2, 4, 6, 6, generator=_gen(2)).to(dtype)
    G = gram_matrix_reference(x)
    assert G.dtype == torch.float32
    exact = gram_matrix_reference(x.double())
    torch.testing.assert_close(G.double(), exact, rtol=1e-5, atol=1e-5)
    # autocast must not round G to 16 bits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        Ga = gram_matrix_reference(x)
    assert Ga.dtype == torch.float32
    torch.testing.assert_close(Ga, G)


def test_style_loss_matches_formula_with_weights():
    g = _gen(3)
    inputs = [torch.randn(3, 2, 3, 4, generator=g), torch.randn(3, 5, 2, 2, generator=g)]
    targets = [torch.randn(3, 2, 3, 4, generator=g), torch.randn(3, 5, 2, 2, generator=g)]
    weights = [0.5, 2.0]
    got = style_loss_reference(inputs, targets, weights)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert math.isclose(got.item(), _loss_by_hand(inputs, targets, weights), rel_tol=1e-5)
    # public API on CPU with backend auto/torch dispatches to the reference
    assert style_loss(inputs, targets, weights).item() == got.item()


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_reduction_none_gives_each_images_loss(backend):
    g = _gen(11)
    shapes = [(3, 4, 5, 6), (3, 7, 2, 3)]
    x = [torch.randn(*s, generator=g) for s in shapes]
    t = [torch.randn(*s, generator=g) for s in shapes]
    w = [0.5, 3.0]
    per = style_loss(x, t, w, reduction="none", backend=backend)
    assert per.shape == (3,) and per.dtype == torch.float32
    for b in range(3):
        want = _loss_by_hand([v[b:b + 1] for v in x], [v[b:b + 1] for v in t], w)
        assert math.isclose(per[b].item(), want, rel_tol=1e-5)
    assert torch.allclose(per.mean(), style_loss(x, t, w, backend=backend), rtol=1e-6, atol=0)
    grams = [gram_matrix(v) for v in t]
    assert torch.allclose(style_loss_from_grams(x, grams, w, reduction="none", backend=backend),
                          per, rtol=1e-6)
    # identical pairs give exactly zero, image by image
    assert torch.equal(style_loss(x, x, w, reduction="none"), torch.zeros(3))


def test_reduction_none_gradient_is_per_image():
    g = _gen(12)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: style_loss_reference([a], [t], reduction="none"),
                                    (x,))
    # image 1's loss does not depend on image 0's features
    style_loss_reference([x], [t], reduction="none")[1].backward()
    assert torch.equal(x.grad[0], torch.zeros_like(x.grad[0])) and x.grad[1].abs().sum() > 0


def test_bad_reduction_is_refused():
    x = torch.ones(1, 2, 3, 3)
    for fn, args in ((style_loss, ([x], [x])), (style_loss_from_grams, ([x], [gram_matrix(x)])),
                     (style_loss_reference, ([x], [x]))):
        with pytest.raises(ValueError, match="reduction must be one of"):
            fn(*args, reduction="sum")


def test_gram_matrix_normalize_divides_by_positions():
    x = torch.randn(2, 3, 4, 5, generator=_gen(13))
    G = gram_matrix(x)
    assert torch.equal(gram_matrix(x, normalize=True), G / 20)
    assert torch.equal(gram_matrix_reference(x, normalize=True), G / 20)
    assert gram_matrix(torch.ones(1, 1, 2, 3), normalize=True).item() == 1.0


def test_identical_inputs_give_zero_loss():
    x = torch.randn(2, 3, 5, 5, generator=_gen(4))
    assert style_loss([x], [x.clone()], backend="torch").item() == 0.0


def test_from_grams_equals_feature_targets():
    g = _gen(5)
    x = torch.randn(2, 4, 3, 3, generator=g)
    t = torch.randn(2, 4, 3, 3, generator=g)
    a = style_loss_reference([x], [t])
    b = style_loss_from_grams([x], [gram_matrix(t)], backend="torch")
    assert math.isclose(a.item(), b.item(), rel_tol=1e-6)
    assert math.isclose(style_loss_from_grams_reference(x, gram_matrix(t)).item(), a.item(),
                        rel_tol=1e-6)


def test_gradcheck_reference_float64():
    g = _gen(6)
    x = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 1, 1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 1, 1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: style_loss_reference([a, c], [b, d], [1.0, 3.0]), (x, t, y, u))
    G = gram_matrix_reference(t.detach())
    assert torch.autograd.gradcheck(lambda a: style_loss_from_grams_reference([a], [G]), (x,))
    assert torch.autograd.gradcheck(gram_matrix_reference, (x,))


def test_gradient_closed_form():
    """dL/dFh = 4 s / B * (Gh - G) Fh for one layer (what the Triton backward streams)."""
    g = _gen(7)
    x = torch.randn(3, 4, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, 2, 5, generator=g, dtype=torch.float64)
    style_loss_reference([x], [t], [2.0]).backward()
    F, Ft = x.detach().reshape(3, 4, 10), t.reshape(3, 4, 10)
    D = F @ F.transpose(1, 2) - Ft @ Ft.transpose(1, 2)
    s = 2.0 / (4 * 16 * 100)
    torch.testing.assert_close(x.grad.reshape(3, 4, 10), 4 * s / 3 * D @ F)


def test_nan_and_inf_propagate():
    x = torch.randn(2, 3, 4, 4, generator=_gen(8))
    t = torch.randn(2, 3, 4, 4, generator=_gen(9))
    xn = x.clone()
    xn[1, 2, 0, 3] = float("nan")
    assert torch.isnan(style_loss([xn], [t], backend="torch"))
    xi = x.clone()
    xi[0, 0, 1, 1] = float("inf")
    assert not torch.isfinite(style_loss([xi], [t], backend="torch"))


def test_c_and_m_of_one():
    g = _gen(10)
    x = torch.randn(2, 1, 1, 1, generator=g)
    t = torch.randn(2, 1, 1, 1, generator=g)
    expected = ((x.double() ** 2 - t.double() ** 2) ** 2).mean() / 4
    assert math.isclose(style_loss([x], [t]).item(), expected.item(), rel_tol=1e-6)


# ----------------------------------------------------------------------------------- misuse
def _pair(shape=(2, 3, 4, 4), dtype=torch.float32):
    return torch.randn(*shape).to(dtype), torch.randn(*shape).to(dtype)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_misuse_raises_clear_errors(backend):
    x, t = _pair()
    with pytest.raises(ValueError, match="shape of inputs"):
        style_loss([x], [t[:, :2]], backend=backend)
    with pytest.raises(ValueError, match="dtype of inputs"):
        style_loss([x], [t.half()], backend=backend)
    with pytest.raises(ValueError, match="empty batch"):
        style_loss([x[:0]], [t[:0]], backend=backend)
    with pytest.raises(ValueError, match="at least one"):
        style_loss([], [], backend=backend)
    with pytest.raises(ValueError, match="one feature map per layer"):
        style_loss([x, x], [t], backend=backend)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        style_loss([x[0]], [t[0]], backend=backend)
    with pytest.raises(ValueError, match="one entry per layer"):
        style_loss([x], [t], [1.0, 2.0], backend=backend)
    with pytest.raises(ValueError, match="same batch size"):
        style_loss([x, x[:1]], [t, t[:1]], backend=backend)
    with pytest.raises(ValueError, match="dtype"):
        style_loss([x.int()], [t.int()], backend=backend)
    with pytest.raises(TypeError, match="list or tuple"):
        style_loss(iter([x]), [t], backend=backend)
    with pytest.raises(ValueError, match=r"shape \(B, C, C\)"):
        style_loss_from_grams([x], [torch.zeros(2, 4, 4)], backend=backend)
    with pytest.raises(ValueError, match="float32"):
        style_loss_from_grams([x], [torch.zeros(2, 3, 3, dtype=torch.float16)], backend=backend)
    with pytest.raises(ValueError, match="input_precision"):
        style_loss([x], [t], backend=backend, input_precision="fp8")


def test_bad_backend_name():
    x, t = _pair()
    with pytest.raises(ValueError, match="backend must be one of"):
        style_loss([x], [t], backend="cuda")


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, t = _pair()
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        style_loss([x], [t], backend="triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        gram_matrix(x, backend="triton")


def test_triton_float64_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, t = _pair(dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        style_loss([x], [t], backend="triton")


def test_auto_picks_torch_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # auto never chooses the interpreter
    x, t = _pair()
    assert resolve_backend("auto", [x, t]) == "torch"
    assert resolve_backend("torch", [x]) == "torch"
    assert resolve_backend("triton", [x]) == "triton"


def test_gram_matrix_empty_shapes():
    assert gram_matrix(torch.zeros(0, 3, 4, 4)).shape == (0, 3, 3)
    G = gram_matrix(torch.zeros(2, 3, 0, 4))
    assert G.shape == (2, 3, 3) and not G.any()


def test_single_tensor_counts_as_one_layer():
    x, t = _pair()
    assert style_loss(x, t).item() == style_loss([x], [t]).item()


def test_import_kernels_does_not_import_triton():
    import subprocess
    import sys
    code = ("import sys, matrep.kernels as k; import torch; "
            "x = torch.randn(1, 2, 3, 3); k.style_loss([x], [x]); "
            "print('triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
