"""Helpers of the study tests: tiny labelled micrographs, a spy encoder plugin, a tiny VAE.

Not a test module: the fixtures built on these (``dataset``, ``plugins``) are in conftest.py;
test_study*.py and test_compare_cli.py import the helpers they call directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from matrep import registry

from plugin_utils import activate, install_example_plugin, make_dist

SPY_MODULE = '''
import hashlib
import numpy as np
from matrep.encoder import BaseEncoder, check_patches

FITTED = []  # one list of patch fingerprints per fit call
CONTEXTS = []  # the FitContext of each fit call (None when none was given)


def fingerprint(p):
    return hashlib.sha1(np.ascontiguousarray(p, np.float32).tobytes()).hexdigest()


class SpyEncoder(BaseEncoder):
    """Records the patches it is fitted on; features are simple statistics."""

    name = "spy"
    description = "test spy: records the patches it was fitted on"
    trainable = True
    can_decode = False

    def __init__(self, *, shift=0.0):
        self.shift = shift

    def fit(self, X, y=None, *, context=None):
        X = check_patches(X)
        FITTED.append([fingerprint(p) for p in X])
        CONTEXTS.append(context)
        self.mean_ = float(X.mean()) + float(self.shift)
        return self

    def transform(self, X):
        self._check_fitted()
        X = check_patches(X)
        f = X.reshape(len(X), -1).astype(np.float64)
        return np.stack([f.mean(1) - self.mean_, f.std(1), (f > 0.5).mean(1)], 1).astype(np.float32)

    def _get_state(self):
        return {"mean_": np.array([self.mean_])}, {}

    def _set_state(self, arrays, meta):
        self.mean_ = float(arrays["mean_"][0])
'''


def install_plugins(root: Path, monkeypatch) -> None:
    """The example ``histogram`` plugin and the ``spy`` encoder, importable and registered."""
    install_example_plugin(root / "hist")
    make_dist(root / "spy", "matrep-spy-plugin", "0.0.1", {"spy": "spy_plugin:SpyEncoder"},
              {"spy_plugin": SPY_MODULE})
    import sys

    sys.modules.pop("spy_plugin", None)
    monkeypatch.syspath_prepend(str(root / "spy"))
    activate(monkeypatch, root / "hist")


def make_dataset(folder: Path, *, n: int = 6, size: int = 96, seed: int = 0) -> Path:
    """``n`` noisy two-phase micrographs whose bright fraction sets a 'modulus' label.

    labels.csv columns: file, modulus (numeric, distinct per image), phase (two classes),
    sample (pairs of images), constant (one value), empty (no values).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = ["file,modulus,phase,sample,constant,empty"]
    for i in range(n):
        frac = 0.2 + 0.6 * i / max(n - 1, 1)
        img = (rng.random((size, size)) < frac).astype(np.uint8) * 200 \
            + rng.integers(0, 40, (size, size)).astype(np.uint8)
        Image.fromarray(img).save(folder / "images" / f"m{i}.png")
        rows.append(f"images/m{i}.png,{100 + 50 * frac:.3f},{'coarse' if i % 2 else 'fine'},"
                    f"s{i // 2},7,")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


#: A texture-VAE small enough for the default suite (random VGG19 weights, tiny decoder).
TINY_VAE = dict(latent_dim=4, weights="random", decoder_channels=(8, 8, 8, 8, 8), epochs=1,
                batch_size=8, device="cpu", batch_size_eval=16, max_val_patches=8)


def train_tiny_vae(patchset, folder: Path, **params) -> Path:
    """Train and save a tiny texture-VAE on a PatchSet (its micrograph ids and corners give
    the held-out split, as ``matrep fit`` does); returns the model folder."""
    enc = registry.get_encoder("texturevae", **{**TINY_VAE, **params})
    if "keep_best" in enc.get_params() and "keep_best" not in params:
        enc.set_params(keep_best=False)  # keep the trained weights even if epoch 0 scored best
    enc.fit(patchset)
    enc.save(folder)
    return folder

