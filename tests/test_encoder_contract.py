"""The declared encoder contract (matrep.encoder): fit context, capability flags, the
generative interface, the shared VGG19 statistics, and the split a texture-VAE records.

Fast: synthetic patches, random VGG19 weights, a tiny texture-VAE.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from matrep import registry
from matrep.encoder import (BaseEncoder, FitContext, GenerativeEncoder, check_patches,
                            contract_problems, fit_encoder)
from matrep.errors import BadInputError, EncoderContractError
from matrep.testing import check_encoder, make_texture_patches

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(latent_dim=4, weights="random", decoder_channels=(8, 8, 8, 8, 8), epochs=1,
            batch_size=4, device="cpu", batch_size_eval=8, keep_best=False)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One torch thread (the shared conftest fixture)."""


class _Mean(BaseEncoder):
    """A trainable encoder that follows the contract: fit takes the context."""

    name = "mean"
    description = "mean grey level minus the training mean"
    trainable = True

    def __init__(self, *, shift=0.0):
        self.shift = shift

    def fit(self, X, y=None, *, context=None):
        X = check_patches(X)
        self.mean_ = float(X.mean()) + float(self.shift)
        self.context_ = context
        return self

    def transform(self, X):
        self._check_fitted()
        X = check_patches(X)
        return (X.reshape(len(X), -1).mean(1, keepdims=True) - self.mean_).astype(np.float32)

    def _get_state(self):
        return {"mean_": np.array([self.mean_])}, {}

    def _set_state(self, arrays, meta):
        self.mean_ = float(arrays["mean_"][0])


class _NoContext(_Mean):
    """Trainable, but its fit does not take the declared context."""

    name = "nocontext"

    def fit(self, X, y=None):  # breaks the contract
        return super().fit(X)


class _DecodesNothing(_Mean):
    """Flagged generative without the generative interface."""

    name = "decodesnothing"
    generative = True


# ---------------------------------------------------------------------------------------
# flags and the generative interface
# ---------------------------------------------------------------------------------------
def test_check_encoder_passes_a_trainable_encoder_that_takes_the_context():
    enc = _Mean()
    check_encoder(enc, check_save=False)
    assert isinstance(enc.context_, FitContext)  # the suite hands it one


def test_check_encoder_rejects_a_trainable_fit_without_context():
    with pytest.raises(AssertionError, match=r"fit must accept fit\(X, context=FitContext"):
        check_encoder(_NoContext(), check_save=False)


def test_a_generative_class_without_decode_is_rejected():
    problems = contract_problems(_DecodesNothing)
    assert problems and "decode, reconstruct, traverse, sample" in problems[0]
    with pytest.raises(AssertionError, match="flagged generative but lacks decode"):
        check_encoder(_DecodesNothing(), check_save=False)
    with pytest.raises(EncoderContractError, match="flagged generative but lacks decode"):
        registry._check_class(_DecodesNothing, "decodesnothing")  # the registry skips it


def test_generative_and_can_decode_are_one_flag():
    class Old(_Mean):
        can_decode = True  # the old spelling

    class New(_Mean):
        generative = True

    assert Old.generative and New.can_decode
    assert not _Mean.generative and not _Mean.can_decode
    vgg, tv = registry.encoder_class("vgg19"), registry.encoder_class("texturevae")
    assert not vgg.generative and tv.generative and tv.trainable and tv.checkpoints
    info = {i.name: i for i in registry.list_encoders()}
    assert info["texturevae"].generative and not info["vgg19"].generative


def test_checkpoints_needs_trainable_and_the_backbone_pair_comes_together():
    class Half(_Mean):
        trainable = False
        checkpoints = True

        def backbone_request(self):  # without transform_from_features
            return None

    problems = " ".join(contract_problems(Half))
    assert "checkpoints but not trainable" in problems
    assert "come as a pair" in problems


def test_fit_encoder_hands_the_context_to_trainable_encoders_only():
    X = make_texture_patches(3, 16)
    ctx = FitContext(micrograph_ids=np.array(["a", "b", "c"]), coords=np.zeros((3, 2), int))
    assert fit_encoder(_Mean(), X, ctx).context_ is ctx
    from matrep.plugins.vgg19 import VGG19Encoder

    fit_encoder(VGG19Encoder(weights="random", layer="pool1"), X, ctx)  # takes no context


@pytest.mark.parametrize("decoder", [{}, {"decoder_input": "modulated",
                                         "decoder_padding": "circular"}])
def test_texturevae_passes_the_contract_suite_and_is_a_generative_encoder(decoder):
    enc = registry.get_encoder("texturevae", **TINY, **decoder)
    check_encoder(enc, make_texture_patches(4, 32))  # a stationary decoder: also decode(size=)
    assert isinstance(enc, GenerativeEncoder)
    assert enc.decodes_any_size == bool(decoder)


def test_the_study_hands_each_split_fit_its_context(plugins, dataset, tmp_path):
    import sys

    from matrep.study import MethodSpec, Study, prepare_data

    data = prepare_data(dataset / "images", dataset / "labels.csv", "modulus", patch=32,
                        stride=32)
    study = Study(data, [MethodSpec("spy")], tmp_path / "out", split="grouped", folds=2,
                  regressors=["linear"])
    splits = study.make_splits()
    study.run()
    spy = sys.modules["spy_plugin"]  # imported fresh by the registry for this test
    assert len(spy.CONTEXTS) == len(splits) == 2
    for ctx, split in zip(spy.CONTEXTS, splits):
        assert isinstance(ctx, FitContext)
        assert ctx.micrograph_ids.tolist() == data.patchset.micrograph_ids[split.train].tolist()
        np.testing.assert_array_equal(ctx.coords, data.patchset.coords[split.train])
        assert ctx.run_dir is None  # the spy does not declare checkpoints


# ---------------------------------------------------------------------------------------
# no signature sniffing; core code reaches plugins through the registry
# ---------------------------------------------------------------------------------------
def _code(path: Path) -> str:
    """Source without docstrings and comments (what runs)."""
    import ast

    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            body[0].value.value = ""
    return ast.unparse(tree)


def test_no_command_reads_fits_signature_and_core_imports_no_plugin():
    sniff = re.compile(r"signature\(\s*\w+\.fit|co_varnames|__code__")
    plugin = re.compile(r"(^|[^\w.])(matrep\.plugins|plugins\.(texturevae|vgg19|twopoint))\b")
    for path in sorted((ROOT / "matrep").rglob("*.py")):
        code = _code(path)
        assert not sniff.search(code), f"{path} reads a fit signature"
        assert not plugin.search(code), f"{path} imports a plugin by name"
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        assert not re.search(r"def fit\([^)]*_stop_after_steps", path.read_text()), path


# ---------------------------------------------------------------------------------------
# one VGG19 pass per patch in a study
# ---------------------------------------------------------------------------------------
def _count_forward(monkeypatch):
    from matrep.backbone import VGG19Backbone

    seen = []
    real = VGG19Backbone.forward

    def spy(self, x):
        seen.append(int(x.shape[0]))
        return real(self, x)

    monkeypatch.setattr(VGG19Backbone, "forward", spy)
    return seen


@pytest.mark.parametrize("share", [True, False])
def test_study_runs_vgg19_once_per_patch_for_all_vgg_encoders(dataset, tmp_path, monkeypatch,
                                                             share):
    from matrep.study import MethodSpec, Study, prepare_data
    from study_utils import train_tiny_vae

    data = prepare_data(dataset / "images", dataset / "labels.csv", "modulus", patch=32,
                        stride=32)
    model = train_tiny_vae(data.patchset, tmp_path / "vae", keep_best=False)
    n = len(data.patchset)
    seen = _count_forward(monkeypatch)
    vgg = {"weights": "random", "layer": "pool4", "device": "cpu"}  # where the VAE runs
    specs = [MethodSpec("vgg19", vgg),
             MethodSpec("texturevae", model=str(model))]
    res = Study(data, specs, tmp_path / f"out{share}", split="grouped", folds=2,
                regressors=["linear"], controls=False, share_backbone=share).run()
    assert sum(seen) == (n if share else 2 * n)  # shared: one pass per patch for both
    # the features are those of the encoders' own transform
    from matrep.store import FeatureStore

    feats = {k: m["features"][0] for k, m in res.methods.items()}
    for key, enc in (("vgg19", registry.get_encoder("vgg19", **vgg).fit(data.patchset.patches[:1])),
                     ("texturevae", registry.load_model(model))):
        X, _ = FeatureStore(tmp_path / f"out{share}" / feats[key]["store"]).read(feats[key]["key"])
        np.testing.assert_allclose(X, enc.transform(data.patchset.patches), rtol=1e-4, atol=1e-5)


def test_shared_statistics_match_each_encoders_transform():
    from matrep.backbone import BackboneFeatures

    X = make_texture_patches(5, 64)
    vgg = registry.get_encoder("vgg19", weights="random", layer="style", pooling="meanstd",
                               downsample=2, device="cpu").fit(X[:1])
    tv = registry.get_encoder("texturevae", **{**TINY, "downsample": 2}).fit(X)
    shared = BackboneFeatures(X, batch_size=2)
    for enc in (vgg, tv):
        shared.register(enc.backbone_request())
    assert vgg.backbone_request().key == tv.backbone_request().key  # one pass serves both
    for enc in (vgg, tv):
        got = enc.transform_from_features(shared.get(enc.backbone_request(), 1, 4))
        np.testing.assert_allclose(got, enc.transform(X[1:4]), rtol=1e-4, atol=1e-5)
    assert list(shared.passes.values()) == [5]
    gram = registry.get_encoder("vgg19", weights="random", layer="pool1", pooling="gram")
    assert gram.fit(X[:1]).backbone_request() is None  # too big to keep: its own pass


# ---------------------------------------------------------------------------------------
# the training split is recorded at fit time
# ---------------------------------------------------------------------------------------
def _patchset(n_img=3, size=96, patch=32):
    from matrep.io import PatchSet

    rng = np.random.default_rng(1)
    patches, ids, coords = [], [], []
    for m in range(n_img):
        img = (rng.random((size, size)) < 0.3 + 0.2 * m).astype(np.float32) * 0.8 + 0.1
        for y in range(0, size - patch + 1, patch):
            for x in range(0, size - patch + 1, patch):
                patches.append(img[y:y + patch, x:x + patch])
                ids.append(f"m{m}")
                coords.append((y, x))
    return PatchSet(np.stack(patches), np.array([f"/d/m{i}.png" for i in ids]), np.array(ids),
                    np.array(coords, dtype=np.int64), patch=patch, stride=patch)


def test_the_held_out_split_is_read_from_the_saved_model(tmp_path, monkeypatch):
    ps = _patchset()
    enc = registry.get_encoder("texturevae", **{**TINY, "val_fraction": 0.3, "seed": 3})
    enc.fit(ps.patches, context=FitContext.from_patchset(ps, run_dir=tmp_path / "run"))
    rec = enc.split_
    assert rec["n_val"] == enc.n_val_patches_ > 0 and rec["n_patches"] == len(ps)
    loaded = registry.load_model(tmp_path / "run")
    assert loaded.split_ == rec
    # the replay is not used: break it, and the held-out patches are still found
    import matrep.plugins.texturevae.evaluate as ev

    monkeypatch.setattr(ev, "_replayed_held_out", lambda *a: pytest.fail("replayed the draws"))
    held = loaded.held_out_patches(ps)
    want = {(m, int(y), int(x)) for m, (y, x) in zip(rec["val_micrographs"], rec["val_coords"])}
    assert {(m, int(c[0]), int(c[1])) for m, c in zip(held.micrograph_ids, held.coords)} == want
    # the same patches in another order are found by micrograph and corner
    perm = np.random.default_rng(0).permutation(len(ps))
    assert len(loaded.held_out_patches(ps.subset(perm))) == len(held)
    # other pixels at the same places: refused, naming what to pass
    other = ps.subset(np.arange(len(ps)))
    other.patches = np.clip(other.patches * 0.5, 0, 1)
    with pytest.raises(BadInputError, match="differ in their pixels"):
        loaded.held_out_patches(other)
    with pytest.raises(BadInputError, match="not among these patches"):
        loaded.held_out_patches(ps.subset(np.arange(2)))


def test_a_model_saved_before_the_split_was_recorded_replays_it(tmp_path):
    ps = _patchset()
    enc = registry.get_encoder("texturevae", **{**TINY, "val_fraction": 0.3})
    enc.fit(ps)  # a PatchSet gives the micrograph ids and corners itself
    want = enc.held_out_patches(ps)
    enc.split_ = None  # as loaded from an older config.json
    old = enc.held_out_patches(ps)
    assert sorted(map(tuple, old.coords.tolist())) == sorted(map(tuple, want.coords.tolist()))
    assert old.micrograph_ids.tolist() == want.micrograph_ids.tolist()


def test_stop_after_is_a_test_hook_not_a_fit_argument(tmp_path):
    from matrep.testing import stop_after

    ps = _patchset()
    enc = stop_after(registry.get_encoder("texturevae", **TINY), 1)
    enc.fit(ps, context=FitContext(run_dir=tmp_path / "r"))
    assert (tmp_path / "r" / "checkpoint").is_dir() and not (tmp_path / "r" / "config.json").exists()
    with pytest.raises(TypeError):
        registry.get_encoder("texturevae", **TINY).fit(ps, _stop_after_steps=1)
