"""Features of VGG19-based encoders carry the backbone weights' name and sha256 in the store,
under the same attributes for ``vgg19`` and ``texturevae``."""

from __future__ import annotations

import numpy as np

from matrep.io import PatchSet
from matrep.pipeline import encode_patchset
from matrep.store import FeatureStore
from matrep.testing import make_texture_patches


def _patchset(folder, size=32):
    """Eight patches of two 'micrographs' (the store digests the source files: they exist)."""
    from PIL import Image

    X = make_texture_patches(8, size, 0)
    files = []
    for i, name in enumerate(("a.png", "b.png")):
        Image.fromarray((X[4 * i] * 255).astype(np.uint8)).save(folder / name)
        files += [str(folder / name)] * 4
    ids = np.array(["a"] * 4 + ["b"] * 4)
    coords = np.array([(y * 16, x * 16) for _ in range(2) for y in range(2) for x in range(2)])
    return PatchSet(X, np.array(files), ids, coords, size, 16)


def test_texturevae_and_vgg19_features_carry_the_weights_sha256(tmp_path):
    from matrep.plugins.texturevae import TextureVAEEncoder
    from matrep.plugins.vgg19 import VGG19Encoder

    ps = _patchset(tmp_path)
    out = tmp_path / "f.h5"
    tvae = TextureVAEEncoder(latent_dim=2, weights="random", decoder_channels=(4, 4, 4, 4, 4),
                             epochs=1, batch_size=4, device="cpu",
                             batch_size_eval=8).fit(ps.patches)
    vgg = VGG19Encoder(weights="random", layer="pool1", batch_size=8)
    stored = {}
    for enc in (tvae, vgg):
        res = encode_patchset(enc, ps, out)
        _, attrs = FeatureStore(out).read(res.key)
        stored[enc.name] = attrs
    sha = tvae.weights_info_["sha256"]
    assert len(sha) == 64
    for name in ("texturevae", "vgg19"):
        assert stored[name]["weights_sha256"] == sha, name
        assert stored[name]["weights_name"] == tvae.weights_info_["name"], name
        assert stored[name]["provenance"]["weights"]["sha256"] == sha, name
