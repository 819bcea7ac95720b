"""Checkpoints and the log of a texture-VAE training run.

``RUN/checkpoint/`` holds ``state.safetensors`` (model, best model, Adam state, RNG states)
and ``checkpoint.json`` (position, history, fingerprint, the optimiser's non-tensor state),
written atomically; no pickle. ``RUN/log.csv`` has one row per epoch. Used by the training
loop (:mod:`matrep.plugins.texturevae.train`, which re-exports these names).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import torch

from matrep.atomic import atomic_dir, atomic_write_text, recover_dir
from matrep.errors import BadInputError

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_STATE = "state.safetensors"
LOG_CSV = "log.csv"
CHECKPOINT_FORMAT = "matrep-texturevae-checkpoint-v1"
LOG_COLUMNS = ("epoch", "step", "train_loss", "train_style", "train_kl", "val_style", "val_kl",
               "seconds", "patches_per_s", "lr", "kl_weight", "spikes")


# ---------------------------------------------------------------------------------------
# checkpoints (safetensors for tensors, JSON for the rest; never pickle)
# ---------------------------------------------------------------------------------------
def _optimizer_to_flat(optimizer):
    sd = optimizer.state_dict()
    tensors, state_meta = {}, {}
    for pid, st in sd["state"].items():
        state_meta[str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
                state_meta[str(pid)][k] = "tensor"
            else:
                state_meta[str(pid)][k] = {"value": v}
    groups = json.loads(json.dumps(sd["param_groups"], default=_json_default))
    return tensors, {"state": state_meta, "param_groups": groups}


def _json_default(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if torch.is_tensor(o):
        return o.item()
    return repr(o)


def _optimizer_from_flat(optimizer, tensors, meta, device):
    state = {}
    for pid, entries in meta["state"].items():
        st = {}
        for k, v in entries.items():
            if v == "tensor":
                t = tensors[f"optim.{pid}.{k}"]
                st[k] = t if k == "step" else t.to(device)
            else:
                st[k] = v["value"]
        state[int(pid)] = st
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(run_dir, *, model, optimizer, generator, position: dict, history: list,
                    fingerprint: dict, extra_meta: dict | None = None, best_state=None) -> Path:
    """Write ``run_dir/checkpoint/`` atomically (state.safetensors + checkpoint.json).

    ``best_state``: the state dict of the best model so far (kept as ``best.*`` tensors).
    """
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for k, v in (best_state or {}).items():
        tensors[f"best.{k}"] = v.detach().cpu().contiguous()
    opt_tensors, opt_meta = _optimizer_to_flat(optimizer)
    tensors.update(opt_tensors)
    tensors["rng.generator"] = generator.get_state().cpu()
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    meta = {"format": CHECKPOINT_FORMAT, "position": position, "history": history,
            "fingerprint": fingerprint, "optimizer": opt_meta,
            "generator_device": str(generator.device), **(extra_meta or {})}
    dest = Path(run_dir) / CHECKPOINT_DIR
    with atomic_dir(dest) as tmp:
        save_file(tensors, str(tmp / CHECKPOINT_STATE))
        (tmp / CHECKPOINT_JSON).write_text(json.dumps(meta, indent=1, default=_json_default))
    return dest


def read_checkpoint(run_dir):
    """Return (tensors, meta) of ``run_dir/checkpoint`` or raise BadInputError."""
    from safetensors.torch import load_file

    d = Path(run_dir) / CHECKPOINT_DIR
    recover_dir(d)  # a checkpoint write killed between the two renames of its folder swap
    if not (d / CHECKPOINT_JSON).is_file() or not (d / CHECKPOINT_STATE).is_file():
        raise BadInputError(d, "no checkpoint to resume from (expected checkpoint.json and "
                               "state.safetensors); start without --resume")
    from safetensors import SafetensorError

    try:
        meta = json.loads((d / CHECKPOINT_JSON).read_text())
        tensors = load_file(str(d / CHECKPOINT_STATE))
    except (json.JSONDecodeError, OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise BadInputError(d, f"corrupt checkpoint ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())})") from None
    if not isinstance(meta, dict):
        raise BadInputError(d / CHECKPOINT_JSON, f"corrupt checkpoint: a JSON "
                                                 f"{type(meta).__name__}, not an object")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise BadInputError(d, f"not a texture-VAE checkpoint (format {meta.get('format')!r}, "
                               f"expected {CHECKPOINT_FORMAT!r})")
    return tensors, meta


def restore_checkpoint(tensors, meta, *, model, optimizer, generator, device):
    """Load model, optimiser and RNG states; return the best model's state dict (or None)."""
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items()
                           if k.startswith("model.")})
    _optimizer_from_flat(optimizer, tensors, meta["optimizer"], device)
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch_cpu"])
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
    return best or None


def write_log(run_dir, history):
    """Rewrite ``run_dir/log.csv`` (one row per epoch; epoch 0 = before training)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else
                        (f"{v:.6g}" if isinstance(v, float) else v))
                    for k, v in row.items()})
    atomic_write_text(Path(run_dir) / LOG_CSV, buf.getvalue())
