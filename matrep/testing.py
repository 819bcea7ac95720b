"""The encoder contract suite: ``check_encoder(encoder)``, for built-ins and plugin authors.

Like scikit-learn's ``check_estimator``: call it in your plugin's tests::

    from matrep.testing import check_encoder
    def test_contract():
        check_encoder(MyEncoder(n_features=4))

It raises :class:`AssertionError` (an ordinary test failure) naming the broken rule.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from pathlib import Path

import numpy as np


def make_texture_patches(n: int = 6, size: int = 64, seed: int = 0) -> np.ndarray:
    """Deterministic test patches: thresholded smooth noise with different grain sizes, in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        sigma = 1.0 + 3.0 * (i % 3)
        field = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
        field = (field - field.min()) / (np.ptp(field) + 1e-12)
        out[i] = np.clip(0.15 + 0.7 * (field > np.median(field)) + 0.1 * field, 0, 1)
    return out


def package_doctests(package) -> tuple[int, int]:
    """Run the doctests of every submodule of ``package``; return (attempted, failed).

    ``doctest.testmod`` on a package alone sees no examples of the names it re-exports."""
    import doctest
    import importlib
    import pkgutil

    attempted = failed = 0
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        res = doctest.testmod(importlib.import_module(info.name),
                              optionflags=doctest.NORMALIZE_WHITESPACE)
        attempted += res.attempted
        failed += res.failed
    return attempted, failed


def stop_after(encoder, steps: int):
    """Make a checkpointing encoder's next ``fit`` stop after ``steps`` optimiser steps, leaving
    its checkpoint and no final model (a test hook for resuming; not part of ``fit``'s
    signature). Returns ``encoder``."""
    encoder._stop_after_steps = int(steps)
    return encoder


def _fail(name, rule):
    raise AssertionError(f"encoder {name!r} breaks the contract: {rule}")


def check_encoder(encoder, patches=None, *, check_save: bool = True) -> None:
    """Check that ``encoder`` (an unfitted instance) follows matrep's encoder contract.

    Parameters
    ----------
    encoder : an encoder instance, not fitted
    patches : ndarray of shape (n, H, W) in [0, 1], optional — defaults to synthetic textures
        of ``encoder.patch_size`` (or 64) pixels
    check_save : bool, default True — also check the save/load round trip
    """
    from sklearn.base import clone

    from .errors import MatrepError

    cls = type(encoder)
    name = getattr(encoder, "name", cls.__name__)
    from .encoder import GENERATIVE_METHODS, FitContext, contract_problems

    for attr, typ in (("name", str), ("description", str), ("trainable", bool),
                      ("generative", bool)):
        if not isinstance(getattr(cls, attr, None), typ):
            _fail(name, f"class attribute {attr!r} must be a {typ.__name__}")
    if not name or not cls.description:
        _fail(name, "name and description must be non-empty")
    for problem in contract_problems(cls):
        _fail(name, problem)

    # __init__ stores keyword-only params unchanged
    sig = inspect.signature(cls.__init__)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    for p in params:
        if p.kind not in (p.KEYWORD_ONLY, p.VAR_KEYWORD):
            _fail(name, f"__init__ parameter {p.name!r} must be keyword-only")
    got = encoder.get_params(deep=False)
    for p in params:
        if p.kind is p.KEYWORD_ONLY and p.name not in got:
            _fail(name, f"get_params() lacks {p.name!r}: __init__ must store each parameter "
                        "under its own name")
    learned = [k for k in vars(encoder) if k.endswith("_") and not k.startswith("_")]
    if learned:
        _fail(name, f"__init__ sets learned attributes {learned} (learned state belongs in fit)")
    twin = clone(encoder)
    if twin.get_params(deep=False).keys() != got.keys():
        _fail(name, "sklearn.base.clone does not reproduce the parameters")

    if patches is None:
        size = int(getattr(encoder, "patch_size", None) or 64)
        patches = make_texture_patches(6, size)
    patches = np.asarray(patches, np.float32)

    # bad input is refused with a matrep error
    for bad, what in ((patches[0], "a 2-D array"), (patches * 255.0, "values outside [0, 1]")):
        try:
            clone(encoder).fit(bad)
        except (MatrepError, ValueError):
            pass
        else:
            _fail(name, f"fit accepted {what}; it must raise a matrep error (BadInputError)")

    if cls.trainable:
        # the declared way commands hand a trainable encoder what they know (matrep.encoder)
        ctx = FitContext(micrograph_ids=np.zeros(len(patches), np.int64),
                         coords=np.zeros((len(patches), 2), np.int64), quiet=True)
        try:
            fitted = encoder.fit(patches, context=ctx)
        except TypeError as exc:
            _fail(name, f"a trainable encoder's fit must accept fit(X, context=FitContext(...)) "
                        f"(matrep.encoder.FitContext); it raised TypeError: {exc}")
    else:
        fitted = encoder.fit(patches)
    if fitted is not encoder:
        _fail(name, "fit must return self")
    if not any(k.endswith("_") and not k.startswith("_") for k in vars(encoder)):
        _fail(name, "after fit, learned state must be stored in attributes ending in '_'")

    X = np.asarray(encoder.transform(patches))
    if X.ndim != 2 or X.shape[0] != len(patches) or X.shape[1] < 1:
        _fail(name, f"transform must return (n_patches, n_features), got {X.shape}")
    if not np.issubdtype(X.dtype, np.floating) or not np.isfinite(X).all():
        _fail(name, "transform must return finite floats")
    X2 = np.asarray(encoder.encode(patches))
    if not np.allclose(X, X2, rtol=1e-5, atol=1e-6):
        _fail(name, "transform is not deterministic (or encode differs from transform)")
    X1 = np.asarray(encoder.transform(patches[1:2]))
    if X1.shape != (1, X.shape[1]) or not np.allclose(X1[0], X[1], rtol=1e-4, atol=1e-5):
        _fail(name, "a patch's features depend on the other patches in the batch")
    try:
        encoder.transform(patches[0])
    except (MatrepError, ValueError):
        pass
    else:
        _fail(name, "transform accepted a 2-D array; it must raise a matrep error")

    prov = encoder.provenance()
    try:
        json.dumps(prov)
    except TypeError as exc:
        _fail(name, f"provenance() must be JSON-serialisable ({exc})")
    for k in ("encoder", "version", "params"):
        if k not in prov:
            _fail(name, f"provenance() lacks {k!r}")

    if check_save:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "model"
            encoder.save(path)
            files = sorted(p.name for p in path.rglob("*") if p.is_file())
            bad_files = [f for f in files if not f.endswith((".json", ".safetensors", ".csv", ".txt", ".md"))]
            if bad_files:
                _fail(name, f"save wrote files that are not JSON/safetensors: {bad_files}")
            loaded = cls.load(path)
            Xl = np.asarray(loaded.transform(patches))
            if not np.allclose(X, Xl, rtol=1e-4, atol=1e-5):
                _fail(name, "a saved and loaded encoder gives different features")

    if cls.generative:
        for attr in ("latent_dim", "patch_size_"):
            if not isinstance(getattr(encoder, attr, None), (int, np.integer)):
                _fail(name, f"a generative encoder must have an integer {attr!r} once fitted "
                            "(matrep.encoder.GenerativeEncoder)")
        for m in GENERATIVE_METHODS:
            if not callable(getattr(encoder, m, None)):
                _fail(name, f"is flagged generative but has no {m}()")
        Z = np.asarray(encoder.transform(patches[:2]))[:, : int(encoder.latent_dim)]
        dec = np.asarray(encoder.decode(Z))
        if dec.ndim != 3 or dec.shape[0] != 2:
            _fail(name, f"decode must return (n, H, W), got {dec.shape}")
        if dec.min() < -1e-6 or dec.max() > 1 + 1e-6:
            _fail(name, "decode must return values in [0, 1]")
        s = np.asarray(encoder.sample(3, seed=0))
        if s.shape[0] != 3 or s.ndim != 3:
            _fail(name, f"sample(3) must return (3, H, W), got {s.shape}")
        r = np.asarray(encoder.reconstruct(patches[:2]))
        if r.shape != (2,) + patches.shape[1:]:
            _fail(name, f"reconstruct must return patches of the input's shape "
                        f"{(2,) + patches.shape[1:]}, got {r.shape}")
        t = np.asarray(encoder.traverse(patches[0], [0], values=[-1.0, 0.0, 1.0]))
        if t.shape[:2] != (1, 3) or t.ndim != 4:
            _fail(name, f"traverse(x, [0], 3 values) must return (1, 3, H, W), got {t.shape}")
        if getattr(encoder, "decodes_any_size", False):
            S = 2 * int(encoder.patch_size_)
            big = np.asarray(encoder.decode(Z[:1], size=S))
            if big.shape != (1, S, S):
                _fail(name, f"decodes_any_size is true, but decode(Z, size={S}) returned "
                            f"{big.shape}, not (1, {S}, {S})")

    if callable(getattr(encoder, "backbone_request", None)):
        from .backbone import BackboneFeatures

        shared = BackboneFeatures(patches)
        req = encoder.backbone_request()
        Xs = X if req is None else \
            np.asarray(encoder.transform_from_features(shared.get(req, 0, len(patches))))
        if Xs.shape != X.shape or not np.allclose(Xs, X, rtol=1e-3, atol=1e-4):
            _fail(name, "transform_from_features(shared VGG19 statistics) differs from "
                        "transform (matrep.backbone.BackboneFeatures)")
