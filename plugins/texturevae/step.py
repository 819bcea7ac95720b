"""One training step of the texture-VAE: the loss (style + grey-level terms + KL), the
single-process and the DistributedDataParallel step, the held-out evaluation and the
balanced style-layer weights.

The training loop (:mod:`matrep.plugins.texturevae.train`) calls these and re-exports them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from matrep.errors import TrainingDivergedError

from .model import (histogram_loss, kl_divergence, lineal_loss, minkowski_loss, phase_loss,
                    reparameterize, spectrum_loss, spread_loss)

#: the optional grey-level terms added to the style loss, by name: (reconstruction (B, 1, P, P),
#: the cached targets of its inputs) -> scalar. Their weights are ``<name>_weight``.
GREY_TERMS = {"histogram": histogram_loss, "spectrum": spectrum_loss, "phase": phase_loss,
              "lineal": lineal_loss, "minkowski": minkowski_loss}


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
    """One forward pass: (style, kl, reconstruction, spread) for cached inputs
    (:func:`~matrep.plugins.texturevae.model.spread_loss` of the batch's posteriors).

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
    return style, kl, xhat, spread_loss(mu, logvar)


def train_step(model, backbone, optimizer, pooled, target_grams, *, kl_weight, style_taps,
               layer_weights, generator=None, autocast_dtype=None, style_backend="auto",
               check_finite=True, grad_clip=None, grey_targets=None, grey_weights=None,
               spread_weight=0.0):
    """One optimisation step on a batch of cached inputs; returns (loss, style, kl) floats.

    The loss is ``style + sum_t grey_weights[t] * term_t + kl_weight * kl + spread_weight *
    spread`` over the grey-level terms :data:`GREY_TERMS` with a nonzero weight (each needs its
    ``grey_targets[t]``, see :meth:`~matrep.plugins.texturevae.cache.FeatureCache.grey_batch`).

    Raises
    ------
    TrainingDivergedError
        The loss is NaN or inf (raised before the weights are updated).
    """
    style, kl, xhat, spread = forward_losses(model, backbone, pooled, target_grams,
                                             style_taps=style_taps, layer_weights=layer_weights,
                                             generator=generator, autocast_dtype=autocast_dtype,
                                             style_backend=style_backend)
    loss = style + kl_weight * kl + _grey_term(xhat, grey_targets, grey_weights)
    if spread_weight:
        loss = loss + float(spread_weight) * spread
    vals = torch.stack([loss.detach(), style.detach(), kl.detach()]).float().cpu().tolist()
    if check_finite and not all(math.isfinite(v) for v in vals):
        raise TrainingDivergedError(f"loss is not finite (loss={vals[0]}, style={vals[1]}, "
                                    f"kl={vals[2]})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _clip(optimizer, grad_clip)
    optimizer.step()
    return vals


def _grey_term(xhat, targets, weights):
    """``sum_t weights[t] * GREY_TERMS[t](xhat, targets[t])`` over the nonzero weights (0.0
    when there are none)."""
    total = 0.0
    for name, w in (weights or {}).items():
        if not w:
            continue
        if targets is None or name not in targets:
            raise ValueError(f"{name}_weight > 0 needs the {name} targets of the input patches")
        total = total + float(w) * GREY_TERMS[name](xhat, targets[name])
    return total


def _clip(optimizer, grad_clip):
    """Clip the global gradient norm of the optimised parameters (no-op for None)."""
    if grad_clip:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, float(grad_clip))


def distributed_train_step(net, backbone, optimizer, pooled, target_grams, eps, *, n_local,
                           n_global, ctx, kl_weight, style_taps, layer_weights,
                           autocast_dtype=None, style_backend="auto", flag=False,
                           grad_clip=None, grey_targets=None, grey_weights=None,
                           spread_weight=0.0):
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

    style, kl, xhat, spread = forward_losses(None, backbone, pooled, target_grams,
                                             style_taps=style_taps, layer_weights=layer_weights,
                                             autocast_dtype=autocast_dtype,
                                             style_backend=style_backend, net=net, eps=eps)
    loss = style + kl_weight * kl + _grey_term(xhat, grey_targets, grey_weights)
    if spread_weight:  # over this rank's part of the batch
        loss = loss + float(spread_weight) * spread
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
        style, kl, _, _ = forward_losses(model, backbone, pooled, grams, style_taps=style_taps,
                                      layer_weights=layer_weights, sample=False,
                                      autocast_dtype=autocast_dtype, style_backend=style_backend)
        s_sum += float(style) * len(idx)
        k_sum += float(kl) * len(idx)
    if world > 1:
        s_sum, k_sum = ctx.all_reduce_sum([s_sum, k_sum])
    return s_sum / cache.n, k_sum / cache.n
