"""``TextureVAEEncoder``: the texture-VAE as a matrep encoder (scikit-learn shaped).

Sardeshmukh, Reddy, Gautham & Bhattacharyya (2021), "TextureVAE: Learning Interpretable
Representations of Material Microstructures Using Variational Autoencoders", AAAI-MAKE 2021,
CEUR Workshop Proceedings Vol-2964, paper 59 (CC BY 4.0):
a VAE whose reconstruction loss is the Gatys style loss on VGG19 conv1_1 and pool1..pool4,
with a frozen pretrained VGG19 + trained fully-connected mu/log-variance head as encoder and a
decoder of four (3x3 conv, nearest 2x upsampling, LeakyReLU 0.3) blocks.

The class is assembled from mixins, one responsibility each: :mod:`.params` (checking the
parameters), :mod:`.network` (the frozen VGG19 and the device), :mod:`.generative` (decode,
reconstruct, sample, traverse, style_distance) and :mod:`.persistence` (save and load).

torch is imported only when the encoder is used, so ``matrep encoders`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from matrep.encoder import BaseEncoder, FitContext, _jsonable, check_patches
from matrep.errors import BadInputError, NotFittedError
from matrep.taps import STYLE_TAPS as DEFAULT_TAPS

from .generative import GenerativeMixin
from .network import NetworkMixin, _set_layout
from .params import OUTPUTS, ParamsMixin  # noqa: F401  (OUTPUTS re-exported)
from .persistence import PersistenceMixin


class TextureVAEEncoder(ParamsMixin, NetworkMixin, GenerativeMixin, PersistenceMixin, BaseEncoder):
    """Texture-VAE encoder: patches -> posterior mean ``mu`` (n, latent_dim).

    Parameters
    ----------
    latent_dim : int, default 64
        Size of z (the paper studies 8, 16, 32, 64 and keeps 64).
    pooling : {"meanstd", "mean"}, default "meanstd"
        How VGG19 feature maps become the FC head's input: per-channel spatial mean and standard
        deviation (or mean only) of each tap in ``encoder_taps``. The paper leaves this open.
    encoder_taps : tuple of str, default the five style layers
        VGG19 taps pooled for the encoder. They come from the same VGG19 pass as the style
        targets, so the encoder costs no extra network evaluation.
    style_layers : tuple of str, default ("conv1_1", "pool1", "pool2", "pool3", "pool4")
        Layers of the style loss (the paper's choice).
    layer_weights : tuple of float or None, default None (all 1)
        w_l of the style loss, one per style layer.
    decoder_channels : tuple of 5 int, default (256, 256, 128, 64, 32)
        Channels of the projected P/16 x P/16 map and of the output of each of the 4 blocks.
    epochs, batch_size, lr : training length, batch size, Adam learning rate
    kl_weight : float, default 1e-2
        beta in loss = style + beta * KL (KL summed over latent dims, both batch means); see
        docs/texturevae.md for the scale of the two terms.
    seed : int, default 0
        Seeds the validation split, the data order (per epoch) and the sampling noise.
    val_fraction : float, default 0.1
    val_split : {"region", "patch", "micrograph"}, default "region"
        See :func:`matrep.plugins.texturevae.train.split_patches`.
    max_patches : int or None
        Train on a seeded random subset of at most this many training patches.
    max_val_patches : int or None, default 128
        Evaluate the held-out style loss on at most this many held-out patches.
    checkpoint_every : int or None
        Also checkpoint every N steps (always at the end of each epoch).
    weights : str, default "auto"
        VGG19 weights source (see ``matrep weights``); ``"random"`` only for tests.
    device : str, default "auto"
        ``"auto"`` uses CUDA when present.
    precision : {"auto", "fp32", "bf16"}, default "auto"
        ``"auto"``: bf16 autocast for the decoder and VGG19 on CUDA, float32 on CPU. Gram
        matrices and the loss are float32 in every case.
    cache_memory_gb : float, default 2.0
        RAM for the cached style targets before they spill to a temporary file.
    output : {"mu", "mu_logvar"}, default "mu"
        What :meth:`transform` returns: mu (n, latent_dim), or mu and log-variance side by side
        (n, 2 * latent_dim).
    batch_size_eval : int, default 32
        Batch size of encoding and decoding.
    decoder_input : {"dense", "noise", "modulated"}, default "dense"
        How z enters the decoder: a fully-connected layer to the first feature map (``"dense"``),
        a position-free projection plus noise maps at every block (``"noise"``), or
        per-channel scales and shifts of every block's instance-normalised feature maps with
        noise maps for the placement (``"modulated"``); see
        :class:`matrep.plugins.texturevae.model.Decoder`.
    decoder_upsample : {"nearest", "bilinear"}, default "nearest"
        The decoder blocks' 2x upsampling: nearest (the paper's) or bilinear (periodic with
        circular padding).
    decoder_noise : {"white", "smooth"}, default "white"
        The noise maps of a ``"noise"`` or ``"modulated"`` decoder: white, or each of the 8
        channels smoothed by a Gaussian of its own width (0.5-3 block pixels, two left white;
        :func:`matrep.plugins.texturevae.model.smooth_noise`). Measured on the quick preset:
        no better (docs/texturevae.md, runs 27-28).
    decoder_block : {"conv_up", "up_conv"}, default "conv_up"
        The order inside each decoder block: the paper's 3x3 convolution then 2x upsampling,
        or upsampling then convolution, so every convolution works at its block's output
        resolution (:class:`matrep.plugins.texturevae.model.Decoder`).
    decoder_convs : int, default 1
        3x3 convolutions per decoder block: the paper's one, or 2-3 (the further ones at the
        block's output resolution, without noise; with ``"modulated"`` input each gets its own
        scale and shift from z). See :class:`matrep.plugins.texturevae.model.Decoder`.
    reconstruct_draws : int, default 8
        How many noise draws :meth:`reconstruct` decodes each patch's posterior mean with
        (decoders with noise only): it keeps the draw closest to the patch in style loss, so
        the particles' placement is inferred too. 1 decodes the patch's own seed only (the
        behaviour before 2026-12-05). Inference only; training does not use it. Measured in
        docs/texturevae.md ("Reconstructions: the noise inferred too").
    decoder_noise_start : int, default 0
        The first decoder block (0-3) that gets noise maps; earlier blocks get zeros, so with
        ``decoder_input="modulated"`` and circular padding particles are placed on the finer
        grid of that block instead of one per cell of the ``P/16`` start grid.
    decoder_padding : {"zeros", "circular"}, default "zeros"
        Padding of the decoder's convolutions; ``"circular"`` removes every absolute position,
        so particle placement can only come from the noise. With ``decoder_input="modulated"``
        the decoder is then stationary (:attr:`decodes_any_size`; the quick preset); with
        ``"noise"`` it did not learn within the CPU budget (docs/texturevae.md, run 5).
    downsample : int, default 1
        The model works at ``1 / downsample`` of the input resolution: patches given to
        ``fit``, ``transform``, ``reconstruct`` and ``style_distance`` are cut from images at
        their own resolution and area-averaged by this factor inside the model (anti-aliased);
        ``decode``/``reconstruct``/``sample``/``traverse`` return patches upsampled back to the
        input patch size. ``P / downsample`` must be a multiple of 16 (>= 32). The quick preset
        uses 2 (4x fewer pixels per step).
    logvar_bounds : (float, float) or None, default (-10.0, 4.0)
        Soft bounds of the posterior log-variance (``lo + ... tanh``, see
        :func:`matrep.plugins.texturevae.model.bound_logvar`); keeps the KL term bounded.
    grad_clip : float or None, default 10.0
        Clip the global gradient norm of head + decoder per step (None: no clipping).
    kl_warmup : int, default 0
        Steps over which the KL weight ramps linearly from 0 to ``kl_weight``.
    lr_schedule : {"constant", "cosine"}, default "constant"
        ``"cosine"`` decays the learning rate to 5 % of ``lr`` over the run.
    lr_warmup : int, default 0
        Steps of linear learning-rate warm-up (from ``lr / 10``).
    keep_best : bool, default True
        Keep the model of the epoch with the lowest held-out style loss (epoch 0 = the
        untrained model), not the last one; ``best_epoch_`` says which.
    histogram_weight : float, default 0.0
        Weight of a grey-level histogram term added to the style loss: the squared 1-D
        Wasserstein distance between the reconstruction's and the input's grey-level
        distributions (256 quantiles; :func:`matrep.plugins.texturevae.model.histogram_loss`).
        Position-free like the Gram matrices, but it fixes the share of dark pixels and the
        contrast directly. 0 is the paper's loss; the quick preset sets it (docs/texturevae.md).
    spectrum_weight : float, default 0.0
        Weight of a power-spectrum term added to the style loss: the mean squared difference
        of the reconstruction's and the input's log radially averaged power spectra
        (:func:`matrep.plugins.texturevae.model.spectrum_loss`). Position-free too; it fixes
        the length scales at which grey levels vary (particle size and spacing, sharpness).
        0 is the paper's loss.
    phase_weight : float, default 0.0
        Weight of a two-point term on the graphite phase added to the style loss: each input
        patch's graphite threshold (the segmentation of ``matrep evaluate``) makes a soft
        indicator of the input and of its reconstruction, and the term is the mean squared
        difference of their normalised two-point autocorrelations up to a quarter of the
        patch (:func:`matrep.plugins.texturevae.model.phase_loss`). It fixes particle size and
        spacing on the phase itself, where the spectrum term sees grey levels. 0 is the
        paper's loss; the quick preset sets 300 (docs/texturevae.md, runs 25-32).
    lineal_weight : float, default 0.0
        Weight of a lineal-path term on the graphite phase: as ``phase_weight``, with the
        normalised lineal-path function (the chance that a horizontal or vertical segment
        from a graphite point stays in graphite, up to a quarter of the patch;
        :func:`matrep.plugins.texturevae.model.lineal_path`) in place of the two-point
        autocorrelation. It separates what the two-point term cannot: fragments, ragged
        outlines and merged particles from convex ones of the same size. 0 is the paper's loss.
    minkowski_weight : float, default 0.0
        Weight of a Minkowski-functional term on the graphite phase: as ``phase_weight``,
        with the patch's log area fraction, log boundary length and asinh Euler number (the
        number of particles less their holes) of the soft indicators
        (:func:`matrep.plugins.texturevae.model.minkowski_functionals`) in place of the
        curve. It asks each reconstruction for its input's particle count and outline length.
        0 is the paper's loss.
    spread_weight : float, default 0.0
        Weight of a term asking the posterior means to spread across each batch with the
        prior's variance: the sum over latent dimensions of (batch variance of the posterior
        means + mean posterior variance - 1)² (:func:`matrep.plugins.texturevae.model.
        spread_loss`). With a KL weight below 1 the means spread wider than N(0, 1), so a
        traversal over -3..3 covers less than the data's range and prior samples fall in its
        centre. 0 is the paper's loss.
    lr_scaling : {"none", "linear"}, default "none"
        Under torchrun with W processes: ``"none"`` — ``batch_size`` is the global batch of
        one step (split over the processes) and ``lr`` is used as given, so the run equals
        the single-process run; ``"linear"`` — ``batch_size`` per process (global ``W x
        batch_size``) and learning rate ``W x lr`` (Goyal et al. 2017). See
        :func:`matrep.distributed.scaling_rule` and ``docs/distributed.md``.
    """

    name = "texturevae"
    description = "Texture-VAE (Sardeshmukh et al. 2021): frozen VGG19 + FC head, style-loss decoder; trainable, decodes."
    trainable = True
    checkpoints = True  # fit writes checkpoints and the model into context.run_dir
    generative = True
    #: Named training configurations (``matrep fit --preset NAME``): encoder parameters and
    #: the patching they were measured with. Options given explicitly override them.
    presets = {
        "paper": {
            "description": "the paper's configuration (the defaults): 128² patches at stride 50, "
                           "20 epochs on all patches; meant for a GPU",
            "params": {},
            "patching": {"patch": 128, "stride": 50},
        },
        "quick": {
            "description": "trains in <= 20 min on 2 CPU cores (docs/texturevae.md): 128² "
                           "patches worked at 64² (downsample 2), a stationary decoder (z "
                           "modulates the feature maps, noise places the particles, periodic "
                           "padding, each block upsampling before two convolutions), a "
                           "grey-level histogram term, a power-spectrum term, and two-point "
                           "and lineal-path terms on the graphite phase, pool4 style weight "
                           "0.1, latent 8, "
                           "12 epochs of 1,500 patches, cosine learning rate, KL warm-up",
            "params": {"downsample": 2, "decoder_input": "modulated",
                       "decoder_padding": "circular", "histogram_weight": 4000.0,
                       "spectrum_weight": 40.0, "phase_weight": 300.0,
                       "layer_weights": [1.0, 1.0, 1.0, 1.0, 0.1],
                       "latent_dim": 8, "kl_weight": 0.3, "batch_size": 8,
                       "lr": 2e-3, "lr_schedule": "cosine", "lr_warmup": 50, "kl_warmup": 200,
                       "decoder_block": "up_conv", "decoder_convs": 2,
                       "lineal_weight": 300.0,
                       "max_patches": 1500, "epochs": 12, "max_val_patches": 96},
            "patching": {"patch": 128, "stride": 64},
        },
    }

    def __init__(self, *, latent_dim=64, pooling="meanstd", encoder_taps=DEFAULT_TAPS,
                 style_layers=DEFAULT_TAPS, layer_weights=None,
                 decoder_channels=(256, 256, 128, 64, 32), epochs=20, batch_size=16, lr=1e-3,
                 kl_weight=1e-2, seed=0, val_fraction=0.1, val_split="region", max_patches=None,
                 max_val_patches=128, checkpoint_every=None, weights="auto", device="auto",
                 precision="auto", cache_memory_gb=2.0, output="mu", batch_size_eval=32,
                 lr_scaling="none", decoder_input="dense", decoder_padding="zeros", downsample=1, logvar_bounds=(-10.0, 4.0), grad_clip=10.0,
                 kl_warmup=0, lr_schedule="constant", lr_warmup=0, keep_best=True,
                 histogram_weight=0.0, spectrum_weight=0.0, decoder_upsample="nearest",
                 decoder_noise_start=0, phase_weight=0.0, decoder_noise="white",
                 lineal_weight=0.0, minkowski_weight=0.0, spread_weight=0.0,
                 decoder_block="conv_up", decoder_convs=1, reconstruct_draws=8):
        self.latent_dim = latent_dim
        self.pooling = pooling
        self.encoder_taps = encoder_taps
        self.style_layers = style_layers
        self.layer_weights = layer_weights
        self.decoder_channels = decoder_channels
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.kl_weight = kl_weight
        self.seed = seed
        self.val_fraction = val_fraction
        self.val_split = val_split
        self.max_patches = max_patches
        self.max_val_patches = max_val_patches
        self.checkpoint_every = checkpoint_every
        self.weights = weights
        self.device = device
        self.precision = precision
        self.cache_memory_gb = cache_memory_gb
        self.output = output
        self.batch_size_eval = batch_size_eval
        self.lr_scaling = lr_scaling
        self.decoder_input = decoder_input
        self.decoder_padding = decoder_padding
        self.downsample = downsample
        self.logvar_bounds = logvar_bounds
        self.grad_clip = grad_clip
        self.kl_warmup = kl_warmup
        self.lr_schedule = lr_schedule
        self.lr_warmup = lr_warmup
        self.keep_best = keep_best
        self.histogram_weight = histogram_weight
        self.spectrum_weight = spectrum_weight
        self.decoder_upsample = decoder_upsample
        self.decoder_noise_start = decoder_noise_start
        self.phase_weight = phase_weight
        self.lineal_weight = lineal_weight
        self.minkowski_weight = minkowski_weight
        self.spread_weight = spread_weight
        self.reconstruct_draws = reconstruct_draws
        self.decoder_noise = decoder_noise
        self.decoder_block = decoder_block
        self.decoder_convs = decoder_convs

    # ---------------------------------------------------------------------------------
    # fit
    # ---------------------------------------------------------------------------------
    def fit(self, X, y=None, *, context=None):
        """Train the head and the decoder on patches.

        Parameters
        ----------
        X : array of shape (n_patches, P, P) in [0, 1], or a :class:`matrep.io.PatchSet`
            P must be a multiple of 16. A PatchSet also gives the micrograph ids and
            coordinates used for the held-out split.
        y : ignored
        context : :class:`matrep.encoder.FitContext`, optional
            ``micrograph_ids``, ``coords``: the patches' micrographs and top-left corners (for
            ``val_split="region"``; default: those of a PatchSet ``X``). ``run_dir``: where
            checkpoints, ``log.csv`` and the final model (``config.json`` +
            ``state.safetensors``) go; without it nothing is written. ``resume``: continue
            from ``run_dir/checkpoint``. ``quiet``: no progress bars. ``log``: receives
            one-line progress messages.

        Returns
        -------
        self

        Notes
        -----
        The held-out split is recorded in ``split_`` (saved in ``config.json``): which
        patches were held out (micrograph id and corner when known, else their indices) and
        a sha256 of their pixels, so :meth:`held_out_patches` finds them without replaying
        the random draws.
        """
        import torch

        from .cache import FeatureCache
        from .model import DECODER_CHOICES, TextureVAE, pooled_size
        from .train import (CHECKPOINT_DIR, TrainSettings, fingerprint_arrays,
                            resolve_precision, split_patches, train)

        from matrep.distributed import current, scaling_rule

        ctx = current()
        fc = context if context is not None else FitContext()
        if not isinstance(fc, FitContext):
            raise BadInputError(None, f"context must be a matrep.encoder.FitContext, got "
                                      f"{type(fc).__name__}")
        micrograph_ids, coords, run_dir, resume = fc.micrograph_ids, fc.coords, fc.run_dir, fc.resume
        # a test hook, not an option: stop (without saving) after this many steps
        stop_after_steps = getattr(self, "_stop_after_steps", None)
        log = (fc.log or (lambda msg: None)) if ctx.is_main else (lambda msg: None)
        quiet = fc.quiet or not ctx.is_main
        if hasattr(X, "patches") and hasattr(X, "micrograph_ids"):
            micrograph_ids = X.micrograph_ids if micrograph_ids is None else micrograph_ids
            coords = X.coords if coords is None else coords
            X = X.patches
        X = check_patches(X)
        self._validate_params()
        n, H, W = X.shape
        ds = int(self.downsample)
        if H != W or H % ds or (H // ds) % 16 or H // ds < 32:
            raise BadInputError(None, f"texture-VAE patches must be square with a side that is "
                                      f"{ds} x a multiple of 16 (>= {32 * ds}) for downsample={ds}, "
                                      f"got {H}x{W}; use --patch {128 if ds == 1 else 64 * ds}")
        if n < 2:
            raise BadInputError(None, f"need at least 2 patches to train, got {n}")
        if run_dir is not None:
            ck = Path(run_dir) / CHECKPOINT_DIR
            if ck.exists() and not resume:
                raise BadInputError(run_dir, "already holds a training checkpoint; continue it "
                                             "with --resume (resume=True) or choose a new folder")
        dev = self._torch_device()
        precision = resolve_precision(self.precision, dev)
        # Remove any learned state first (a refit starts fresh).
        for k in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, k)
        backbone = self._get_backbone()

        train_idx, val_idx = split_patches(
            n, micrograph_ids=micrograph_ids, coords=coords, patch=H,
            val_fraction=float(self.val_fraction), how=self.val_split, seed=int(self.seed))
        rng = np.random.default_rng([int(self.seed), 104729])
        if self.max_patches is not None and len(train_idx) > int(self.max_patches):
            train_idx = np.sort(rng.choice(train_idx, int(self.max_patches), replace=False))
        if self.max_val_patches is not None and len(val_idx) > int(self.max_val_patches):
            val_idx = np.sort(rng.choice(val_idx, int(self.max_val_patches), replace=False))
        log(f"{len(train_idx)} training patches, {len(val_idx)} held-out patches "
            f"({self.val_split} split), device {dev}, precision {precision}")
        from .evaluate import split_record

        held_out = split_record(X, train_idx, val_idx, micrograph_ids, coords,
                                how=str(self.val_split))

        encoder_taps, style_taps = tuple(self.encoder_taps), tuple(self.style_layers)
        budget = int(float(self.cache_memory_gb) * 1024**3)
        from tqdm.auto import tqdm
        import sys

        def bar(desc):
            return lambda it: tqdm(it, desc=desc, disable=quiet, file=sys.stderr, leave=False,
                                   dynamic_ncols=True)

        spill = Path(run_dir) if run_dir is not None else None
        Xm = _downsample(X, ds)  # the model's resolution
        Hm = int(Xm.shape[1])
        train_cache = FeatureCache(backbone, Xm[train_idx], encoder_taps=encoder_taps,
                                   style_taps=style_taps, pooling=self.pooling,
                                   batch_size=int(self.batch_size_eval), memory_budget=budget,
                                   directory=spill, progress=bar("caching VGG19 features"))
        val_cache = None
        if len(val_idx):
            val_cache = FeatureCache(backbone, Xm[val_idx], encoder_taps=encoder_taps,
                                     style_taps=style_taps, pooling=self.pooling,
                                     batch_size=int(self.batch_size_eval),
                                     memory_budget=budget, directory=spill,
                                     progress=bar("caching held-out features"))
        log(f"cached VGG19 features and style targets: "
            f"{(train_cache.nbytes + (val_cache.nbytes if val_cache else 0)) / 2**20:.0f} MiB "
            f"({'on disk' if train_cache.on_disk else 'in memory'})")

        if self.layer_weights == "balanced":
            from .train import balanced_layer_weights

            self.layer_weights_ = balanced_layer_weights(backbone, Xm[train_idx], style_taps,
                                                         seed=int(self.seed))
            log("balanced style-layer weights: " + ", ".join(
                f"{t} {w:.3g}" for t, w in zip(style_taps, self.layer_weights_)))
        torch.manual_seed(int(self.seed))
        model = TextureVAE(*self._model_args(pooled_size(encoder_taps, self.pooling), Hm))
        pooled = torch.from_numpy(train_cache.pooled)
        model.feat_mean.copy_(pooled.mean(0))
        # z-score; a feature that hardly varies over the training patches is not blown up
        # more than ~10x relative to the typical one (floor: 0.1 x the median std)
        std = pooled.std(0)
        floor = 0.1 * std.median() + 1e-6
        model.feat_std.copy_(torch.sqrt(std.square() + floor.square()))
        model.to(dev)
        _set_layout(model, dev)

        settings = TrainSettings(epochs=int(self.epochs), batch_size=int(self.batch_size),
                                 lr=float(self.lr), kl_weight=float(self.kl_weight),
                                 layer_weights=self._layer_weights(), seed=int(self.seed),
                                 checkpoint_every=self.checkpoint_every, precision=precision,
                                 grad_clip=None if self.grad_clip is None else float(self.grad_clip),
                                 kl_warmup=int(self.kl_warmup), lr_schedule=str(self.lr_schedule),
                                 lr_warmup=int(self.lr_warmup), keep_best=bool(self.keep_best),
                                 histogram_weight=float(self.histogram_weight),
                                 spectrum_weight=float(self.spectrum_weight),
                                 phase_weight=float(self.phase_weight),
                                 lineal_weight=float(getattr(self, "lineal_weight", 0.0)),
                                 minkowski_weight=float(getattr(self, "minkowski_weight", 0.0)),
                                 spread_weight=float(getattr(self, "spread_weight", 0.0)),
                                 extra={"lr_scaling": str(self.lr_scaling)})
        params = _jsonable(self.get_params(deep=False))
        for k in ("epochs", "checkpoint_every", "device", "cache_memory_gb", "output",
                  "batch_size_eval"):
            params.pop(k, None)  # may change on resume without changing the result
        if params.get("lr_scaling") == "none":
            # the default rule: the run does not depend on the number of processes (and a
            # checkpoint written before the option existed still resumes)
            params.pop("lr_scaling")
        from .step import GREY_TERMS

        for name in (f"{t}_weight" for t in GREY_TERMS):
            if not float(params.get(name, 0.0)):
                params.pop(name, None)  # the paper's loss; older checkpoints resume
        for name, (_, paper) in DECODER_CHOICES.items():
            if params.get(name) == paper:
                params.pop(name)  # the paper's decoder; older checkpoints resume
        if int(params.get("decoder_convs", 1)) == 1:
            params.pop("decoder_convs", None)  # the paper's one convolution; older checkpoints
        if not int(params.get("decoder_noise_start", 0)):
            params.pop("decoder_noise_start", None)  # noise at every block; older checkpoints
        fingerprint = {"data": fingerprint_arrays(X[train_idx], X[val_idx]),
                       "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
                       "params": json.dumps(params, sort_keys=True),
                       "weights_sha256": bb_sha(backbone), "precision": precision}
        try:
            history = train(model, backbone, train_cache, val_cache, settings=settings,
                            style_taps=style_taps, device=dev, run_dir=run_dir, resume=resume,
                            fingerprint=fingerprint, quiet=quiet, log=log,
                            stop_after_steps=stop_after_steps)
        finally:
            train_cache.close()
            if val_cache is not None:
                val_cache.close()
        from .train import best_epoch

        self.model_ = model
        self.history_ = history
        self.best_epoch_ = (best_epoch(history) if self.keep_best else None)
        if self.best_epoch_ is None and history:
            self.best_epoch_ = int(history[-1]["epoch"])
        self.weights_info_ = dict(backbone.weights_info)
        self.patch_size_ = int(H)
        self.model_patch_size_ = int(Hm)
        self.n_features_in_ = int(H * W)
        self.n_train_patches_ = int(len(train_idx))
        self.n_val_patches_ = int(len(val_idx))
        self.split_ = held_out
        self.precision_ = precision
        self.distributed_ = scaling_rule(int(self.batch_size), float(self.lr), ctx.world_size,
                                         str(self.lr_scaling)).to_dict()
        if run_dir is not None and stop_after_steps is None:
            if ctx.is_main:  # one writer; the others wait until the model is on disk
                self.save(run_dir)
            ctx.barrier()
        return self

    # ---------------------------------------------------------------------------------
    # using a trained model
    # ---------------------------------------------------------------------------------
    def _model(self):
        if getattr(self, "model_", None) is None:
            raise NotFittedError("texture-VAE is not trained: call fit(patches), or load a "
                                 "trained run with matrep.load_model('runs/NAME')")
        dev = self._torch_device()
        if next(self.model_.parameters()).device != dev:
            self.model_.to(dev)
        self.model_.eval()
        return self.model_

    def encode_full(self, X):
        """Posterior mean and log-variance of patches.

        Parameters
        ----------
        X : array of shape (n_patches, P, P), float in [0, 1]; P must be the training size.

        Returns
        -------
        mu, logvar : float32 arrays of shape (n_patches, latent_dim)
        """
        import torch

        from .model import downsample_patches, pool_features

        model = self._model()
        X = check_patches(X)
        if X.shape[1:] != (self.patch_size_, self.patch_size_):
            raise BadInputError(None, f"this texture-VAE was trained on {self.patch_size_}x"
                                      f"{self.patch_size_} patches, got {X.shape[1]}x{X.shape[2]}; "
                                      f"use --patch {self.patch_size_}")
        bb = self._get_backbone()
        dev = self._torch_device()
        mus, lvs = [], []
        bs = int(self.batch_size_eval)
        with torch.inference_mode():
            for s in range(0, len(X), bs):
                x = torch.from_numpy(np.ascontiguousarray(X[s:s + bs]))[:, None].to(dev)
                x = downsample_patches(x, self._factor())
                xp = bb.preprocess(x)
                if dev.type == "cuda":
                    xp = xp.contiguous(memory_format=torch.channels_last)
                feats = bb(xp)
                mu, lv = model.encode(pool_features(feats, tuple(self.encoder_taps), self.pooling))
                mus.append(mu.float().cpu().numpy())
                lvs.append(lv.float().cpu().numpy())
        L = int(self.latent_dim)
        if not mus:
            return np.zeros((0, L), np.float32), np.zeros((0, L), np.float32)
        return np.concatenate(mus), np.concatenate(lvs)

    def transform(self, X):
        """Encode patches: mu of shape (n, latent_dim) (``output="mu_logvar"``: (n, 2*latent_dim))."""
        self._check_fitted()
        mu, lv = self.encode_full(X)
        return np.concatenate([mu, lv], axis=1) if self.output == "mu_logvar" else mu

    def _factor(self) -> int:
        """Input patch size / the model's working patch size (1 for models saved before
        ``downsample`` existed)."""
        return int(self.patch_size_) // int(getattr(self, "model_patch_size_", self.patch_size_))

    def held_out_patches(self, patchset):
        """The patches of ``patchset`` that training held out (the run's validation split).

        ``patchset`` (a :class:`matrep.io.PatchSet`) must be cut from the training images with
        the training patching: the held-out patches are those recorded in ``split_`` at fit
        time (:func:`matrep.plugins.texturevae.evaluate.held_out_patches`; models saved
        before the split was recorded replay the draws). Returns a PatchSet.
        """
        from .evaluate import held_out_patches

        self._check_fitted()
        return held_out_patches(self, patchset)


def _downsample(X, factor: int) -> np.ndarray:
    """Patches (n, P, P) area-averaged by ``factor`` (the model's resolution), float32."""
    import torch

    from .model import downsample_patches

    if int(factor) == 1:
        return X
    with torch.inference_mode():
        return downsample_patches(torch.from_numpy(np.ascontiguousarray(X))[:, None],
                                  int(factor))[:, 0].numpy()


def bb_sha(backbone) -> str:
    return str(dict(backbone.weights_info).get("sha256"))
