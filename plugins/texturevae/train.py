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

The pieces live in their own modules and are re-exported here: :mod:`.settings`
(:class:`TrainSettings`, :class:`SpikeMonitor`, :func:`split_patches`), :mod:`.step` (the
loss, :func:`train_step`, :func:`distributed_train_step`, :func:`evaluate`) and
:mod:`.checkpoint` (:func:`save_checkpoint`, :func:`read_checkpoint`, :func:`write_log`).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from matrep.backbone import resolve_device  # noqa: F401  (re-exported: one implementation)
from matrep.errors import BadInputError, TrainingDivergedError

from .checkpoint import (CHECKPOINT_DIR, CHECKPOINT_FORMAT, CHECKPOINT_JSON,  # noqa: F401
                         CHECKPOINT_STATE, LOG_COLUMNS, LOG_CSV, _json_default,
                         _optimizer_from_flat, _optimizer_to_flat, read_checkpoint,
                         restore_checkpoint, save_checkpoint, write_log)
from .settings import (SPIKE_FACTOR, SPIKE_MIN_STEPS, SPIKE_WINDOW, SpikeMonitor,  # noqa: F401
                       TrainSettings, fingerprint_arrays, resolve_precision, split_patches)
from .step import (GREY_TERMS, VAEForward, _clip, _grey_term, balanced_layer_weights,  # noqa: F401
                   distributed_train_step, evaluate, forward_losses, style_loss_grams,
                   train_step)


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
    gw = {t: float(getattr(s, f"{t}_weight")) for t in GREY_TERMS}
    use_grey = any(gw.values())
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
                                grad_clip=s.grad_clip, grey_weights=gw,
                                grey_targets=(train_cache.grey_batch(idx, device)
                                              if use_grey else None),
                                spread_weight=s.spread_weight)
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
                                flag=intr.flag, grad_clip=s.grad_clip, grey_weights=gw,
                                grey_targets=(train_cache.grey_batch(idx[rows], device)
                                              if use_grey else None),
                                spread_weight=s.spread_weight)
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
