"""The models judged: loading one, its patch and latent sizes, the patches it held out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import BadInputError, MatrepError


def _patch_size(model) -> int:
    for attr in ("patch_size_", "patch_size"):
        v = getattr(model, attr, None)
        if v is not None:
            return int(v)
    raise BadInputError(None, f"model {type(model).__name__} has no patch_size_; is it fitted?")


def _latent_dim(model):
    v = getattr(model, "latent_dim", None)
    return int(v) if v is not None else None


def _resolve_model(m):
    """(name, model) from a path or an encoder object."""
    if isinstance(m, (str, Path)):
        from ..registry import load_model

        return str(m), load_model(m)
    return getattr(m, "name", type(m).__name__), m

def _held_out_pool(ps, models, images, stride, crop, crop_bottom) -> np.ndarray:
    """Indices of ``ps`` that every model held out from training."""
    keep = np.ones(len(ps), bool)
    for name, model in models:
        if not hasattr(model, "held_out_patches"):
            raise BadInputError(None, f"{name}: this model does not say which patches it held "
                                      "out from training; evaluate it on other images without "
                                      "--held-out")
        _check_training_patching(name, images, stride, crop, crop_bottom)
        val = model.held_out_patches(ps)
        expected = getattr(model, "n_val_patches_", None)
        if expected is not None and len(val) != int(expected):
            raise BadInputError(None, f"{name}: held out {int(expected)} patches in training but "
                                      f"{len(val)} of these images; pass the training --images, "
                                      "--stride and --crop options of `matrep fit`")
        key = {(s, int(c[0]), int(c[1])) for s, c in zip(val.sources.tolist(), val.coords)}
        keep &= np.array([(s, int(c[0]), int(c[1])) in key
                          for s, c in zip(ps.sources.tolist(), ps.coords)])
    pool = np.flatnonzero(keep)
    if len(pool) == 0:
        raise BadInputError(None, "the models hold out no common patch of these images; "
                                  "evaluate them one at a time")
    return pool


def _check_training_patching(name, images, stride, crop, crop_bottom):
    """With a run folder's ``fit.json``: the images and patching must be those of training."""
    from ..io import list_images

    fit = Path(name) / "fit.json"
    if not fit.is_file():
        return
    rec = json.loads(fit.read_text()).get("patches", {})
    want = {"stride": rec.get("stride"), "crop": rec.get("crop"),
            "crop_bottom": rec.get("crop_bottom", 0)}
    got = {"stride": int(stride), "crop": list(crop) if crop is not None else None,
           "crop_bottom": int(crop_bottom)}
    diff = [f"--{k.replace('_', '-')} {want[k]} (got {got[k]})" for k in want
            if want[k] is not None and want[k] != got[k]]
    tr = rec.get("images")
    if tr:
        def files(src):
            return sorted(str(Path(f).resolve()) for f in list_images(
                src[0] if isinstance(src, (list, tuple)) and len(src) == 1 else src))
        try:
            same = files(tr) == files(images)
        except MatrepError:
            same = False
        if not same:
            diff.insert(0, f"--images {' '.join(map(str, tr))}")
    if diff:
        raise BadInputError(fit, "--held-out finds the training split's held-out patches, which needs the "
                                 f"training patching: {'; '.join(diff)}")
