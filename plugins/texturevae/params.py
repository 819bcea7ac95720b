"""The texture-VAE encoder's parameters: checked (``_validate_params``) and resolved (style
layer weights, VGG19 taps, log-variance bounds). A mixin of
:class:`matrep.plugins.texturevae.encoder.TextureVAEEncoder`.
"""

from __future__ import annotations

import numpy as np

from matrep.errors import BadInputError

OUTPUTS = ("mu", "mu_logvar")


class ParamsMixin:
    """Checks and resolves the parameters of :class:`TextureVAEEncoder` (see its docstring)."""

    def _validate_params(self):
        from .model import POOLINGS, TAP_CHANNELS

        for name, kind in (("latent_dim", int), ("epochs", int), ("batch_size", int),
                           ("batch_size_eval", int), ("seed", int), ("downsample", int),
                           ("kl_warmup", int), ("lr_warmup", int), ("lr", float),
                           ("kl_weight", float), ("val_fraction", float),
                           ("histogram_weight", float), ("spectrum_weight", float),
                           ("phase_weight", float), ("lineal_weight", float),
                           ("minkowski_weight", float), ("spread_weight", float),
                           ("reconstruct_draws", int),
                           ("cache_memory_gb", float), ("max_patches", int),
                           ("max_val_patches", int), ("checkpoint_every", int)):
            value = getattr(self, name, None)
            if value is None and name in ("max_patches", "max_val_patches", "checkpoint_every"):
                continue
            try:
                kind(value)
            except (TypeError, ValueError, OverflowError):
                raise BadInputError(None, f"{name} must be {'an integer' if kind is int else 'a number'}"
                                          f", got {value!r}") from None
        if int(self.reconstruct_draws) < 1:
            raise BadInputError(None, "reconstruct_draws must be a positive integer (1: the "
                                      f"patch's own noise seed only), got {self.reconstruct_draws!r}")
        if int(self.latent_dim) < 1:
            raise BadInputError(None, f"latent_dim must be a positive integer, got {self.latent_dim!r}")
        if self.pooling not in POOLINGS:
            raise BadInputError(None, f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for t in tuple(self.encoder_taps) + tuple(self.style_layers):
            if t not in TAP_CHANNELS:
                raise BadInputError(None, f"unknown VGG19 tap {t!r}; use one of {sorted(TAP_CHANNELS)}")
        if self.output not in OUTPUTS:
            raise BadInputError(None, f"output must be one of {OUTPUTS}, got {self.output!r}")
        lw = self._layer_weights()
        if any((not np.isfinite(w)) or w < 0 for w in lw):
            raise BadInputError(None, f"layer_weights must be finite and >= 0, got {lw}")
        if not (0 <= float(self.val_fraction) < 1):
            raise BadInputError(None, f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        from .step import GREY_TERMS

        for name in (*(f"{t}_weight" for t in GREY_TERMS), "spread_weight"):
            w = float(getattr(self, name))
            if not (np.isfinite(w) and w >= 0):
                raise BadInputError(None, f"{name} must be a finite number >= 0, got "
                                          f"{getattr(self, name)!r}")
        if float(self.kl_weight) < 0:
            raise BadInputError(None, f"kl_weight must be >= 0, got {self.kl_weight!r}")
        if self.lr_scaling not in ("none", "linear"):
            raise BadInputError(None, f"lr_scaling must be 'none' or 'linear', got {self.lr_scaling!r}")
        from .model import DECODER_INPUTS

        if self.decoder_input not in DECODER_INPUTS:
            raise BadInputError(None, f"decoder_input must be one of {DECODER_INPUTS}, got "
                                      f"{self.decoder_input!r}")
        from .model import DECODER_CHOICES

        for name, (allowed, paper) in DECODER_CHOICES.items():
            if getattr(self, name, paper) not in allowed:
                raise BadInputError(None, f"{name} must be one of {allowed}, got "
                                          f"{getattr(self, name)!r}")
        ns = getattr(self, "decoder_noise_start", 0)
        if isinstance(ns, bool) or not isinstance(ns, (int, np.integer)) or not 0 <= ns <= 3:
            raise BadInputError(None, f"decoder_noise_start must be a block index 0-3, got {ns!r}")
        nc = getattr(self, "decoder_convs", 1)
        if isinstance(nc, bool) or not isinstance(nc, (int, np.integer)) or not 1 <= nc <= 3:
            raise BadInputError(None, f"decoder_convs must be 1, 2 or 3 (convolutions per "
                                      f"block), got {nc!r}")
        if self.decoder_padding not in ("zeros", "circular"):
            raise BadInputError(None, "decoder_padding must be 'zeros' or 'circular', got "
                                      f"{self.decoder_padding!r}")
        if int(self.downsample) < 1:
            raise BadInputError(None, f"downsample must be an integer >= 1, got {self.downsample!r}")
        lb = self.logvar_bounds
        if lb is not None and (len(tuple(lb)) != 2 or not float(lb[0]) < float(lb[1])):
            raise BadInputError(None, f"logvar_bounds must be (lo, hi) with lo < hi, or None; got {lb!r}")
        if self.grad_clip is not None and not float(self.grad_clip) > 0:
            raise BadInputError(None, f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise BadInputError(None, f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if int(self.kl_warmup) < 0 or int(self.lr_warmup) < 0:
            raise BadInputError(None, "kl_warmup and lr_warmup must be >= 0 steps, got "
                                      f"{self.kl_warmup!r} and {self.lr_warmup!r}")
        if not (np.isfinite(float(self.lr)) and float(self.lr) > 0):
            raise BadInputError(None, f"lr must be a finite number > 0, got {self.lr!r}")
        if not np.isfinite(float(self.kl_weight)):
            raise BadInputError(None, f"kl_weight must be finite, got {self.kl_weight!r}")
        if int(self.batch_size) < 1 or int(self.epochs) < 0:
            raise BadInputError(None, "batch_size must be >= 1 and epochs >= 0, got "
                                      f"{self.batch_size!r} and {self.epochs!r}")

    def _layer_weights(self):
        n = len(tuple(self.style_layers))
        if self.layer_weights is None:
            return (1.0,) * n
        if isinstance(self.layer_weights, str):
            if self.layer_weights != "balanced":
                raise BadInputError(None, "layer_weights must be a list of weights, None or "
                                          f"'balanced', got {self.layer_weights!r}")
            lw = getattr(self, "layer_weights_", None)
            return tuple(lw) if lw is not None else (1.0,) * n  # resolved by fit
        lw = tuple(float(w) for w in self.layer_weights)
        if len(lw) != n:
            raise BadInputError(None, f"layer_weights needs one weight per style layer ({n}: "
                                      f"{', '.join(self.style_layers)}), got {len(lw)}")
        return lw

    def _taps(self):
        return tuple(dict.fromkeys(tuple(self.encoder_taps) + tuple(self.style_layers)))

    def _logvar_bounds(self):
        lb = self.logvar_bounds
        return None if lb is None else (float(lb[0]), float(lb[1]))
