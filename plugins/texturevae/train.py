"""Training loop of the texture-VAE: functional, checkpointed, resumable, interrupt-safe.

Loss (per batch, mean over the patches of the batch):

.. math::

    \\mathcal{L} = \\mathcal{L}_{style}(x, \\hat x) + \\beta\\,
                   \\mathrm{KL}\\big(\\mathcal N(\\mu, e^{\\lambda}) \\,\\|\\, \\mathcal N(0, I)\\big)

with the style loss of Sardeshmukh et al. (2021) eq. 2 exactly as Gatys et al. (2015) normalise it
(:math:`w_l / (4 C_l^2 M_l^2)` per layer, unnormalised Gram matrices, ``matrep.kernels``), the
KL term summed over latent dimensions, and :math:`\\beta` = ``kl_weight``. See
``docs/texturevae.md`` for why the default ``kl_weight`` balances the two terms.

Data order: epoch ``e`` visits the training patches in the order
``numpy.random.default_rng([seed, e]).permutation(n)``; the reparameterisation noise comes
from one ``torch.Generator`` seeded with ``seed``. A checkpoint holds the model, the Adam
state, that generator's state, the position (epoch, batch) and the running sums of the epoch,
so ``--resume`` continues with exactly the losses of an uninterrupted run.

Checkpoints (``RUN/checkpoint/``: ``state.safetensors`` + ``checkpoint.json``, no pickle) are
written atomically at the end of every epoch, every ``checkpoint_every`` steps, and when the
run is interrupted with Ctrl-C (at the next step boundary, so the state is consistent). A
NaN/inf loss raises :class:`matrep.errors.TrainingDivergedError` before the optimiser touches
the weights; the last checkpoint on disk is left as it was.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from matrep.atomic import atomic_dir, atomic_write_text, recover_dir
from matrep.backbone import resolve_device  # noqa: F401  (re-exported: one implementation)
from matrep.errors import BadInputError, TrainingDivergedError

from .model import histogram_loss, kl_divergence, reparameterize

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_STATE = "state.safetensors"
LOG_CSV = "log.csv"
CHECKPOINT_FORMAT = "matrep-texturevae-checkpoint-v1"
LOG_COLUMNS = ("epoch", "step", "train_loss", "train_style", "train_kl", "val_style", "val_kl",
               "seconds", "patches_per_s", "lr", "kl_weight", "spikes")
#: A loss term above this many times its running median is reported as a spike.
SPIKE_FACTOR = 10.0
#: Steps in the running window of each term (and the fewest before spikes are judged).
SPIKE_WINDOW, SPIKE_MIN_STEPS = 64, 16


# ---------------------------------------------------------------------------------------
# settings, devices, splits
# ---------------------------------------------------------------------------------------
@dataclass
class TrainSettings:
    """Hyper-parameters of one training run (all JSON-serialisable)."""

    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    kl_weight: float = 1e-2
    layer_weights: tuple = (1.0, 1.0, 1.0, 1.0, 1.0)
    seed: int = 0
    checkpoint_every: int | None = None
    precision: str = "fp32"  # resolved: "fp32" or "bf16"
    style_backend: str = "auto"
    #: clip the global gradient norm of head + decoder to this value (None: no clipping)
    grad_clip: float | None = None
    #: steps over which the KL weight ramps linearly from 0 to ``kl_weight`` (0: none)
    kl_warmup: int = 0
    #: "constant", or "cosine": decay from ``lr`` to ``lr * lr_final`` over the run
    lr_schedule: str = "constant"
    #: steps of linear learning-rate warm-up from ``lr / 10`` (0: none)
    lr_warmup: int = 0
    lr_final: float = 0.05
    #: weight of the grey-level histogram term added to the style loss (0: the paper's loss)
    histogram_weight: float = 0.0
    #: keep the model of the epoch with the lowest held-out style loss (needs held-out patches)
    keep_best: bool = True
    extra: dict = field(default_factory=dict)

    def lr_at(self, step: int, total: int, base: float) -> float:
        """Learning rate of global step ``step`` (0-based) of ``total`` steps."""
        lr = base
        if self.lr_schedule == "cosine" and total > 0:
            t = min(1.0, step / max(1, total - 1))
            lr = base * (self.lr_final + (1.0 - self.lr_final) * 0.5 * (1.0 + math.cos(math.pi * t)))
        if self.lr_warmup and step < self.lr_warmup:
            lr *= 0.1 + 0.9 * step / self.lr_warmup
        return lr

    def kl_weight_at(self, step: int) -> float:
        """KL weight of global step ``step`` (linear warm-up over ``kl_warmup`` steps)."""
        if self.kl_warmup and step < self.kl_warmup:
            return self.kl_weight * step / self.kl_warmup
        return self.kl_weight


class SpikeMonitor:
    """Flags a loss term that jumps above ``factor`` x its running median.

    The window holds the last :data:`SPIKE_WINDOW` values of each term; nothing is judged
    before :data:`SPIKE_MIN_STEPS` values. ``state()``/``from_state()`` round-trip through a
    checkpoint so a resumed run flags exactly what the uninterrupted one would.
    """

    def __init__(self, factor=SPIKE_FACTOR, window=SPIKE_WINDOW, min_steps=SPIKE_MIN_STEPS,
                 values=None):
        self.factor, self.window, self.min_steps = float(factor), int(window), int(min_steps)
        self.values = {k: list(v) for k, v in (values or {}).items()}

    def check(self, **terms) -> list:
        """Add this step's values; return ``(name, value, running median)`` of each term that
        spiked."""
        out = []
        for name, v in terms.items():
            hist = self.values.setdefault(name, [])
            if len(hist) >= self.min_steps:
                med = float(np.median(hist))
                if med > 0 and v > self.factor * med:
                    out.append((name, v, med))
            hist.append(float(v))
            del hist[:-self.window]
        return out

    def state(self) -> dict:
        return {"values": self.values}

    @classmethod
    def from_state(cls, state, factor=SPIKE_FACTOR):
        return cls(factor=factor, values=(state or {}).get("values"))


def resolve_precision(precision, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` (autocast) on CUDA, ``"fp32"`` elsewhere."""
    if precision in (None, "auto"):
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise BadInputError(None, f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    return precision


def split_patches(n, *, micrograph_ids=None, coords=None, patch=128, val_fraction=0.1,
                  how="region", seed=0):
    """Split patch indices into training and held-out validation sets.

    ``how="region"`` (default): in each micrograph, the bottom rows of patches (about
    ``val_fraction`` of that micrograph's patches, at least one row) are held out, and the
    training patches are those that do not overlap them (``y + patch <= y_val``); the patches
    in between are dropped. Held-out patches thus come from every micrograph but share no pixel
    with a training patch (with stride 50 < 128, a random patch split would leak pixels).
    ``how="patch"``: a seeded random fraction of the patches (overlap possible).
    ``how="micrograph"``: whole micrographs (a seeded random ``val_fraction`` of them, at least
    one) are held out. Without micrograph ids / coordinates, ``"region"`` falls back to
    ``"patch"``.

    Returns
    -------
    train_idx, val_idx : int64 arrays (sorted)
    """
    rng = np.random.default_rng([int(seed), 7919])
    if val_fraction <= 0 or n < 2:
        return np.arange(n), np.arange(0)
    if how not in ("region", "patch", "micrograph"):
        raise BadInputError(None, f"val_split must be 'region', 'patch' or 'micrograph', got {how!r}")
    if how == "region" and (micrograph_ids is None or coords is None):
        how = "patch"
    if how == "micrograph" and micrograph_ids is None:
        how = "patch"
    if how == "patch":
        k = max(1, int(round(val_fraction * n)))
        val = np.sort(rng.choice(n, k, replace=False))
        return np.setdiff1d(np.arange(n), val), val
    ids = np.asarray(micrograph_ids)
    uniq = list(dict.fromkeys(ids.tolist()))
    if how == "micrograph":
        if len(uniq) < 2:
            raise BadInputError(None, "val_split='micrograph' needs at least 2 micrographs, "
                                      f"got {len(uniq)}; use val_split='region'")
        k = min(len(uniq) - 1, max(1, int(round(val_fraction * len(uniq)))))
        held = set(rng.choice(np.array(uniq, dtype=object), k, replace=False).tolist())
        mask = np.array([i in held for i in ids.tolist()])
        return np.flatnonzero(~mask), np.flatnonzero(mask)
    coords = np.asarray(coords)
    train, val = [], []
    for mg in uniq:
        idx = np.flatnonzero(ids == mg)
        ys = np.unique(coords[idx, 0])
        if len(ys) < 2:
            train.append(idx)
            continue
        # smallest row start whose rows below hold <= val_fraction of the patches (>= 1 row)
        y_val = ys[-1]
        for y in ys[::-1]:
            if (coords[idx, 0] >= y).sum() <= val_fraction * len(idx) or y == ys[-1]:
                y_val = y
            else:
                break
        v = idx[coords[idx, 0] >= y_val]
        t = idx[coords[idx, 0] + patch <= y_val]
        if len(t) == 0:  # micrograph too short for a gap: keep it for training
            train.append(idx)
            continue
        train.append(t)
        val.append(v)
    train = np.sort(np.concatenate(train)) if train else np.arange(0)
    val = np.sort(np.concatenate(val)) if val else np.arange(0)
    return train, val


def fingerprint_arrays(*arrays) -> str:
    """sha256 over the bytes of some arrays (identifies the training data of a run)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# the step
# ---------------------------------------------------------------------------------------
def style_loss_grams(inputs, target_grams, weights, backend="auto"):
    """Style loss of feature maps ``inputs`` against precomputed float32 target Grams.

    :func:`matrep.kernels.style_loss_from_grams` (batch mean); one name here so that tests can
    wrap the step's loss.
    """
    from matrep.kernels import style_loss_from_grams

    return style_loss_from_grams(inputs, target_grams, weights, backend=backend)


def balanced_layer_weights(backbone, patches, style_taps, *, n_pairs=64, seed=0):
    """Style-layer weights that give every layer the same typical share of the loss.

    With equal weights the Gatys normalisation :math:`1/(4 C_l^2 M_l^2)` leaves the deepest
    layer dominant (pool4 carries ~93 % of the loss between two cast-iron patches at 64², ~98 %
    at 128²: its Gram averages only :math:`M = 16` or 64 positions), so fine-scale statistics
    (grey levels, edges, particle outlines) hardly steer the decoder. Here

    .. math:: w_l = \\frac{\\sum_k m_k}{L\\, m_l}

    with :math:`m_l` the median per-layer style loss between ``n_pairs`` seeded random pairs of
    the given (training) patches, so each of the :math:`L` layers contributes
    :math:`\\sum_k m_k / L` to a typical pair's loss and the total keeps the equal-weight scale
    (the KL weight keeps its meaning).

    Parameters
    ----------
    backbone : frozen VGG19Backbone
    patches : array of shape (n, P, P) in [0, 1] (the model's resolution)
    style_taps : sequence of tap names

    Returns
    -------
    tuple of float, one weight per style tap.
    """
    from matrep.kernels import style_loss

    n = len(patches)
    rng = np.random.default_rng([int(seed), 31337])
    k = min(int(n_pairs), n)
    i = rng.choice(n, k, replace=False)
    j = (i + rng.integers(1, max(2, n), size=k)) % n  # a different patch for each
    dev = next(iter(backbone.parameters())).device
    with torch.inference_mode():
        a = torch.from_numpy(np.ascontiguousarray(patches[i]))[:, None].to(dev)
        b = torch.from_numpy(np.ascontiguousarray(patches[j]))[:, None].to(dev)
        fa, fb = backbone(backbone.preprocess(a)), backbone(backbone.preprocess(b))
        med = [float(style_loss([fa[t]], [fb[t]], [1.0], reduction="none").median())
               for t in style_taps]
    med = [max(m, 1e-12) for m in med]
    total = sum(med)
    return tuple(total / (len(med) * m) for m in med)


class VAEForward(torch.nn.Module):
    """The trained part of a training step as one module, for DistributedDataParallel.

    ``forward(pooled, eps)`` returns ``(mu, logvar, decode(mu + exp(logvar / 2) * eps))``
    (the single-process step's operations). DDP hooks the gradients of the head and the
    decoder; the frozen VGG19 and the style loss stay outside it.
    """

    def __init__(self, vae, autocast_dtype=None):
        super().__init__()
        self.vae = vae
        self.autocast_dtype = autocast_dtype

    def forward(self, pooled, eps):
        mu, logvar = self.vae.encode(pooled)
        z = mu + torch.exp(0.5 * logvar) * eps
        with torch.autocast(device_type=pooled.device.type,
                            dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            xhat = self.vae.decode(z)
        return mu, logvar, xhat


def forward_losses(model, backbone, pooled, target_grams, *, style_taps, layer_weights,
                   generator=None, sample=True, autocast_dtype=None, style_backend="auto",
                   net=None, eps=None):
    """One forward pass: (style, kl, reconstruction) for cached inputs.

    ``sample=False`` decodes ``mu`` (used for validation). With ``net`` (a
    :class:`VAEForward`, possibly in DDP) the head and decoder run through it with the given
    noise ``eps`` instead of drawing it from ``generator``.
    """
    dev = pooled.device.type
    if net is not None:
        mu, logvar, xhat = net(pooled, eps)
    else:
        mu, logvar = model.encode(pooled)
        z = reparameterize(mu, logvar, generator) if sample else mu
        with torch.autocast(device_type=dev, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            xhat = model.decode(z)
    with torch.autocast(device_type=dev, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        xp = backbone.preprocess(xhat)
        if dev == "cuda":  # channels-last on CUDA (the backbone's layout there)
            xp = xp.contiguous(memory_format=torch.channels_last)
        feats = backbone(xp)
    style = style_loss_grams([feats[t] for t in style_taps], target_grams, list(layer_weights),
                             backend=style_backend)
    kl = kl_divergence(mu, logvar)
    return style, kl, xhat


def train_step(model, backbone, optimizer, pooled, target_grams, *, kl_weight, style_taps,
               layer_weights, generator=None, autocast_dtype=None, style_backend="auto",
               check_finite=True, grad_clip=None, target_quantiles=None, histogram_weight=0.0):
    """One optimisation step on a batch of cached inputs; returns (loss, style, kl) floats.

    The loss is ``style + histogram_weight * histogram + kl_weight * kl`` (the histogram term,
    :func:`~matrep.plugins.texturevae.model.histogram_loss`, needs ``target_quantiles``).

    Raises
    ------
    TrainingDivergedError
        The loss is NaN or inf (raised before the weights are updated).
    """
    style, kl, xhat = forward_losses(model, backbone, pooled, target_grams,
                                     style_taps=style_taps, layer_weights=layer_weights,
                                     generator=generator, autocast_dtype=autocast_dtype,
                                     style_backend=style_backend)
    loss = style + kl_weight * kl + _histogram_term(xhat, target_quantiles, histogram_weight)
    vals = torch.stack([loss.detach(), style.detach(), kl.detach()]).float().cpu().tolist()
    if check_finite and not all(math.isfinite(v) for v in vals):
        raise TrainingDivergedError(f"loss is not finite (loss={vals[0]}, style={vals[1]}, "
                                    f"kl={vals[2]})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _clip(optimizer, grad_clip)
    optimizer.step()
    return vals


def _histogram_term(xhat, target_quantiles, weight):
    """``weight * histogram_loss`` (0 when the weight is 0)."""
    if not weight:
        return 0.0
    if target_quantiles is None:
        raise ValueError("histogram_weight > 0 needs the target grey-level quantiles")
    return float(weight) * histogram_loss(xhat, target_quantiles)


def _clip(optimizer, grad_clip):
    """Clip the global gradient norm of the optimised parameters (no-op for None)."""
    if grad_clip:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, float(grad_clip))


def distributed_train_step(net, backbone, optimizer, pooled, target_grams, eps, *, n_local,
                           n_global, ctx, kl_weight, style_taps, layer_weights,
                           autocast_dtype=None, style_backend="auto", flag=False,
                           grad_clip=None, target_quantiles=None, histogram_weight=0.0):
    """One DDP step on this rank's part of a global batch; returns ((loss, style, kl), flag).

    ``pooled``/``target_grams``/``eps`` hold this rank's ``n_local`` of the ``n_global``
    patches of the step (``n_local = 0``: a placeholder patch that contributes nothing). The
    rank's mean loss is weighted by ``W * n_local / n_global``
    (:func:`matrep.distributed.local_loss_weight`), so DDP's gradient average is the gradient
    of the mean over the global batch. Before ``backward`` one all-reduce gives every rank the
    global means (for the log), a common NaN verdict and the OR of ``flag`` (Ctrl-C on any
    rank), so all ranks stop together.

    Raises
    ------
    TrainingDivergedError
        The global loss is NaN or inf (on every rank, before the weights are updated).
    """
    from matrep.distributed import local_loss_weight

    style, kl, xhat = forward_losses(None, backbone, pooled, target_grams,
                                     style_taps=style_taps, layer_weights=layer_weights,
                                     autocast_dtype=autocast_dtype, style_backend=style_backend,
                                     net=net, eps=eps)
    loss = style + kl_weight * kl + _histogram_term(xhat, target_quantiles, histogram_weight)
    local = torch.stack([loss.detach(), style.detach(), kl.detach()]).float().cpu().tolist()
    tot = ctx.all_reduce_sum([v * n_local for v in local] + [n_local, 1.0 if flag else 0.0])
    vals = [v / max(tot[3], 1.0) for v in tot[:3]]
    if not all(math.isfinite(v) for v in vals):
        raise TrainingDivergedError(f"loss is not finite (loss={vals[0]}, style={vals[1]}, "
                                    f"kl={vals[2]})")
    optimizer.zero_grad(set_to_none=True)
    (loss * local_loss_weight(n_local, n_global, ctx.world_size)).backward()
    _clip(optimizer, grad_clip)  # after backward: DDP has averaged the gradients
    optimizer.step()
    return vals, tot[4] > 0


@torch.no_grad()
def evaluate(model, backbone, cache, *, style_taps, layer_weights, batch_size, device,
             autocast_dtype=None, style_backend="auto", ctx=None):
    """Mean style loss (reconstruction from ``mu``) and KL over all patches of ``cache``.

    With a distributed ``ctx`` rank ``r`` evaluates batches ``r, r + W, ...`` and the sums
    are all-reduced (every rank returns the same means).
    """
    if cache is None or cache.n == 0:
        return float("nan"), float("nan")
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    s_sum = k_sum = 0.0
    for b, s in enumerate(range(0, cache.n, batch_size)):
        if b % world != rank:
            continue
        idx = np.arange(s, min(cache.n, s + batch_size))
        pooled, grams = cache.batch(idx, device)
        style, kl, _ = forward_losses(model, backbone, pooled, grams, style_taps=style_taps,
                                      layer_weights=layer_weights, sample=False,
                                      autocast_dtype=autocast_dtype, style_backend=style_backend)
        s_sum += float(style) * len(idx)
        k_sum += float(kl) * len(idx)
    if world > 1:
        s_sum, k_sum = ctx.all_reduce_sum([s_sum, k_sum])
    return s_sum / cache.n, k_sum / cache.n


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


# ---------------------------------------------------------------------------------------
# interrupts
# ---------------------------------------------------------------------------------------
class _DeferInterrupt:
    """Turn the first Ctrl-C into a flag checked between steps (a second one raises at once).

    ``sigterm=True`` (under torchrun) treats the first SIGTERM the same way: torchrun answers
    Ctrl-C by sending SIGTERM to its workers, which then finish the step, checkpoint and stop
    together (within torchrun's grace period, 30 s by default).
    """

    def __init__(self, sigterm=False):
        self.flag = False
        self._old = {}
        self._signals = (signal.SIGINT, signal.SIGTERM) if sigterm else (signal.SIGINT,)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():

            def handler(signum, frame):
                if self.flag:
                    raise KeyboardInterrupt
                self.flag = True

            for sig in self._signals:
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        return False


# ---------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------
def _no_buffer_sync() -> dict:
    """DDP keyword that turns off the per-forward buffer broadcast (renamed in torch 2.14)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def train(model, backbone, train_cache, val_cache, *, settings: TrainSettings, style_taps,
          device, run_dir=None, resume=False, fingerprint=None, quiet=True, log=None,
          stop_after_steps=None, warn=None):
    """Train ``model`` (head + decoder) on cached inputs; return the per-epoch history.

    Under torchrun (after :func:`matrep.distributed.init`) the step runs in
    DistributedDataParallel: every rank cuts the same global batch from the epoch order,
    keeps its part ``batch[rank::W]`` and its slice of the noise drawn for the whole global
    batch, and weights its loss so the all-reduced gradient is the global batch mean's — the
    run follows the single-process run over the same global batches. Only rank 0 logs and
    writes (checkpoints, ``log.csv``); the other ranks wait at a barrier after each write.

    Parameters
    ----------
    model : TextureVAE
    backbone : frozen VGG19Backbone on ``device``
    train_cache, val_cache : FeatureCache (``val_cache`` may be None)
    settings : TrainSettings (``extra["lr_scaling"]``: ``"none"`` (default) or ``"linear"``,
        see :func:`matrep.distributed.scaling_rule`)
    style_taps : sequence of the backbone taps of the style loss
    run_dir : folder for checkpoints and ``log.csv`` (None: no checkpoints)
    resume : continue from ``run_dir/checkpoint``
    fingerprint : dict identifying data and settings; a checkpoint with another is refused
    log : callable(str) for messages (default: silent; called on rank 0 only)
    stop_after_steps : stop (after checkpointing) once this many steps ran in this call — for
        tests of resuming

    Raises
    ------
    TrainingDivergedError, KeyboardInterrupt (after a checkpoint is written)
    """
    from tqdm.auto import tqdm

    from matrep.distributed import current, scaling_rule

    ctx = current()
    W, main = ctx.world_size, ctx.is_main
    log = (log or (lambda msg: None)) if main else (lambda msg: None)
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    fingerprint = fingerprint or {}
    s = settings
    rule = scaling_rule(s.batch_size, s.lr, W, s.extra.get("lr_scaling", "none"))
    autocast_dtype = torch.bfloat16 if s.precision == "bf16" else None
    lw = tuple(float(w) for w in s.layer_weights)
    hw = float(s.histogram_weight)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=rule.lr)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(s.seed))
    torch.manual_seed(int(s.seed))
    n = train_cache.n
    bs = int(rule.effective_batch)
    n_batches = max(1, math.ceil(n / bs))
    evaluate_kw = dict(style_taps=style_taps, layer_weights=lw, batch_size=max(bs, 16),
                       device=device, autocast_dtype=autocast_dtype, style_backend=s.style_backend,
                       ctx=ctx if ctx.is_distributed else None)
    log(rule.describe())

    history: list = []
    position = {"epoch": 0, "batch": 0, "global_step": 0, "sums": _new_sums()}
    best_state, spikes = None, SpikeMonitor()
    total_steps = int(s.epochs) * n_batches
    if resume:
        tensors, meta = read_checkpoint(run_dir)
        if meta.get("fingerprint") != json.loads(json.dumps(fingerprint, default=_json_default)):
            old, new = meta.get("fingerprint", {}), fingerprint
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise BadInputError(Path(run_dir) / CHECKPOINT_DIR,
                                f"checkpoint was made with other data or settings (differs in: "
                                f"{', '.join(diff)}); resume with the original options or start "
                                "a new run folder")
        was = meta.get("distributed") or {}
        if was.get("effective_batch", bs) != bs:
            raise BadInputError(Path(run_dir) / CHECKPOINT_DIR,
                                f"checkpoint was written with an effective batch of "
                                f"{was['effective_batch']} ({was.get('world_size')} process(es), "
                                f"lr scaling {was.get('rule')!r}); this run has {bs} "
                                f"({W} process(es), lr scaling {rule.rule!r}). Resume with "
                                f"--nproc {was.get('world_size')} or with --lr-scaling none")
        best_state = restore_checkpoint(tensors, meta, model=model, optimizer=optimizer,
                                        generator=generator, device=device)
        position, history = meta["position"], meta["history"]
        position["sums"] = {**_new_sums(), **position["sums"]}
        spikes = SpikeMonitor.from_state(position.get("spike_monitor"))
        log(f"resuming from epoch {position['epoch'] + 1}, batch {position['batch']} "
            f"(step {position['global_step']})")

    net = None
    if ctx.is_distributed:
        # DDP broadcasts rank 0's parameters (all ranks hold the same anyway) and averages
        # gradients; the buffers (feature mean/std) never change, so no per-step broadcast.
        net = ctx.wrap_model(VAEForward(model, autocast_dtype), **_no_buffer_sync())

    def checkpoint(reason):
        if run_dir is None:
            return None
        path = None
        if main:
            position["spike_monitor"] = spikes.state()
            path = save_checkpoint(run_dir, model=model, optimizer=optimizer,
                                   generator=generator, position=position, history=history,
                                   fingerprint=fingerprint,
                                   extra_meta={"distributed": rule.to_dict()},
                                   best_state=best_state)
        ctx.barrier()  # no rank goes on (or exits) before the checkpoint is on disk
        return path or Path(run_dir) / CHECKPOINT_DIR

    def save_log():
        if run_dir is not None and main:
            write_log(run_dir, history)

    if not history:  # epoch 0: the untrained model
        model.eval()
        vs, vk = evaluate(model, backbone, val_cache, **evaluate_kw)
        history.append({"epoch": 0, "step": 0, "train_loss": float("nan"),
                        "train_style": float("nan"), "train_kl": float("nan"),
                        "val_style": vs, "val_kl": vk, "seconds": 0.0,
                        "patches_per_s": float("nan"), "lr": float("nan"),
                        "kl_weight": float("nan"), "spikes": ""})
        if s.keep_best and best_epoch(history) == 0:
            best_state = _state_copy(model)
        save_log()
        log(f"before training: held-out style loss {vs:.4g}")

    steps_this_call = 0
    latent = int(model.latent_dim)
    with _DeferInterrupt(sigterm=ctx.is_distributed) as intr:
        while position["epoch"] < s.epochs:
            e = position["epoch"]
            order = np.random.default_rng([int(s.seed), e]).permutation(n)
            sums = position["sums"]
            bar = tqdm(total=n_batches, initial=position["batch"], desc=f"epoch {e + 1}/{s.epochs}",
                       disable=quiet or not main, file=sys.stderr, dynamic_ncols=True, leave=False)
            model.train()
            try:
                while position["batch"] < n_batches:
                    b = position["batch"]
                    idx = order[b * bs:(b + 1) * bs]
                    step = position["global_step"]
                    lr_now = s.lr_at(step, total_steps, rule.lr)
                    for g in optimizer.param_groups:
                        g["lr"] = lr_now
                    beta = s.kl_weight_at(step)
                    t0 = time.perf_counter()
                    try:
                        if net is None:
                            pooled, grams = train_cache.batch(idx, device)
                            loss, style, kl = train_step(
                                model, backbone, optimizer, pooled, grams, kl_weight=beta,
                                style_taps=style_taps, layer_weights=lw, generator=generator,
                                autocast_dtype=autocast_dtype, style_backend=s.style_backend,
                                grad_clip=s.grad_clip, histogram_weight=hw,
                                target_quantiles=(train_cache.quantile_batch(idx, device)
                                                  if hw else None))
                            stop = intr.flag
                        else:
                            # the single-process draw for the whole global batch; keep our rows
                            eps = torch.randn((len(idx), latent), generator=generator,
                                              device=device, dtype=torch.float32)
                            rows = ctx.split_batch(np.arange(len(idx)))
                            n_local = len(rows)
                            if n_local == 0:  # more ranks than patches: a weight-0 stand-in
                                rows = np.arange(1)
                            pooled, grams = train_cache.batch(idx[rows], device)
                            (loss, style, kl), stop = distributed_train_step(
                                net, backbone, optimizer, pooled, grams,
                                eps[torch.from_numpy(rows).to(eps.device)], n_local=n_local,
                                n_global=len(idx), ctx=ctx, kl_weight=beta,
                                style_taps=style_taps, layer_weights=lw,
                                autocast_dtype=autocast_dtype, style_backend=s.style_backend,
                                flag=intr.flag, grad_clip=s.grad_clip, histogram_weight=hw,
                                target_quantiles=(train_cache.quantile_batch(idx[rows], device)
                                                  if hw else None))
                    except TrainingDivergedError as exc:
                        ck = Path(run_dir) / CHECKPOINT_DIR if run_dir is not None else None
                        where = (f"the last good checkpoint {ck} is intact; " if ck and ck.exists()
                                 else "no checkpoint was written before it; ")
                        raise TrainingDivergedError(
                            f"training diverged at epoch {e + 1}, batch {b + 1}: {exc}. {where}"
                            "lower --lr or --kl-weight (or use --precision fp32) and start "
                            "again, or --resume from the checkpoint") from None
                    dt = time.perf_counter() - t0
                    sums["loss"] += loss * len(idx)
                    sums["style"] += style * len(idx)
                    sums["kl"] += kl * len(idx)
                    sums["count"] += len(idx)
                    sums["seconds"] += dt
                    sums["lr"], sums["kl_weight"] = lr_now, beta
                    for name, v, med in spikes.check(style=style, kl=kl):
                        sums["spikes"].append(f"{step + 1}:{name}")
                        if main:
                            warn(f"warning: loss spike at epoch {e + 1}, step {step + 1}: {name} "
                                 f"= {v:.4g} is {v / med:.0f}x its running median {med:.4g} "
                                 f"(marked in {LOG_CSV})")
                    position["batch"] = b + 1
                    position["global_step"] += 1
                    steps_this_call += 1
                    bar.update(1)
                    bar.set_postfix(style=f"{style:.4g}", kl=f"{kl:.4g}", refresh=False)
                    if stop:
                        path = checkpoint("interrupt")
                        log(f"interrupted: checkpoint written to {path}; continue with --resume")
                        raise KeyboardInterrupt
                    if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                        checkpoint("stop")
                        return history
                    if (s.checkpoint_every and position["global_step"] % int(s.checkpoint_every) == 0
                            and position["batch"] < n_batches):
                        checkpoint("steps")
            finally:
                bar.close()
            model.eval()
            vs, vk = evaluate(model, backbone, val_cache, **evaluate_kw)
            c = max(1, sums["count"])
            history.append({"epoch": e + 1, "step": position["global_step"],
                            "train_loss": sums["loss"] / c, "train_style": sums["style"] / c,
                            "train_kl": sums["kl"] / c, "val_style": vs, "val_kl": vk,
                            "seconds": sums["seconds"],
                            "patches_per_s": sums["count"] / max(sums["seconds"], 1e-9),
                            "lr": sums["lr"], "kl_weight": sums["kl_weight"],
                            "spikes": ";".join(sums["spikes"])})
            if s.keep_best and best_epoch(history) == e + 1:  # a new best held-out loss
                best_state = _state_copy(model)
            log(f"epoch {e + 1}/{s.epochs}: style {sums['style'] / c:.4g}, kl {sums['kl'] / c:.4g}, "
                f"held-out style {vs:.4g} ({sums['count'] / max(sums['seconds'], 1e-9):.2f} patches/s)")
            position = {"epoch": e + 1, "batch": 0, "global_step": position["global_step"],
                        "sums": _new_sums()}
            save_log()
            checkpoint("epoch")
            stop = intr.flag
            if ctx.is_distributed:
                stop = ctx.all_reduce_sum([1.0 if intr.flag else 0.0])[0] > 0
            if stop:
                log("interrupted: checkpoint written; continue with --resume")
                raise KeyboardInterrupt
    model.eval()
    if s.keep_best and best_state is not None:
        b = best_epoch(history)
        if b is not None and b != history[-1]["epoch"]:
            model.load_state_dict(best_state)
            log(f"kept the model of epoch {b} (held-out style {history[b]['val_style']:.4g}; "
                f"last epoch {history[-1]['val_style']:.4g})")
    return history


def _new_sums():
    return {"loss": 0.0, "style": 0.0, "kl": 0.0, "count": 0, "seconds": 0.0,
            "lr": float("nan"), "kl_weight": float("nan"), "spikes": []}


def _state_copy(model):
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def best_epoch(history):
    """Epoch (row index) with the lowest held-out style loss (the first of ties); None without
    held-out losses."""
    best, out = float("inf"), None
    for h in history:
        v = h.get("val_style")
        if isinstance(v, (int, float)) and math.isfinite(v) and v < best:
            best, out = v, int(h["epoch"])
    return out


__all__ = ["TrainSettings", "train", "train_step", "distributed_train_step", "VAEForward",
           "forward_losses", "evaluate", "split_patches",
           "save_checkpoint", "read_checkpoint", "write_log", "resolve_device",
           "resolve_precision", "fingerprint_arrays", "style_loss_grams", "SpikeMonitor",
           "best_epoch"]
