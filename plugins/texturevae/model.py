"""The texture-VAE's trainable parts: the latent head and the decoder (Sardeshmukh et al. 2021).

The encoder is a *frozen* pretrained VGG19 (:class:`matrep.backbone.VGG19Backbone`) whose
feature maps are pooled into a fixed-length vector (:func:`pool_features`), standardised with
statistics of the training patches, and mapped by two fully-connected layers to the posterior
mean ``mu`` and log-variance ``logvar`` (:class:`LatentHead`). Only the head and the
:class:`Decoder` are trained; that is what :class:`TextureVAE` holds.

Choices where the paper is open (all are parameters of
:class:`matrep.plugins.texturevae.TextureVAEEncoder`):

* **Pooling before the FC layers** (``pooling``): ``"meanstd"`` (default) concatenates the
  per-channel spatial mean and standard deviation of each tap in ``encoder_taps`` (default the
  five style layers, 2 x (64 + 64 + 128 + 256 + 512) = 2048 features). Mean and standard
  deviation per channel are the diagonal of the (centred) Gram matrix: texture statistics that
  do not depend on where in the patch a nodule sits, computed from the very same VGG19 pass
  that gives the style targets. ``"mean"`` is global average pooling only (1024 features).
* **Feature standardisation**: each pooled feature is z-scored with the mean and standard
  deviation over the training patches (stored with the model), so the head's inputs are O(1)
  whichever VGG19 weights are used.
* **Decoder input projection**: one fully-connected layer from z to a
  ``decoder_channels[0] x (P/16) x (P/16)`` map (P the patch size, a multiple of 16) followed by
  LeakyReLU(0.3); then the paper's four blocks of (3x3 conv, nearest 2x upsampling,
  LeakyReLU(0.3)); **output layer**: a 3x3 convolution to one channel and a sigmoid, so the
  reconstruction is a grey patch in [0, 1] like the input.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# the paper's style layers and the channels of every VGG19 tap: one table, in matrep.taps
from matrep.taps import STYLE_TAPS, TAP_CHANNELS  # noqa: F401  (re-exported)

POOLINGS = ("meanstd", "mean")
LEAKY_SLOPE = 0.3


def pooled_size(taps, pooling: str) -> int:
    """Length of the pooled feature vector for ``taps`` and ``pooling``."""
    per = 2 if pooling == "meanstd" else 1
    return per * sum(TAP_CHANNELS[t] for t in taps)


def pool_features(feats: dict, taps, pooling: str = "meanstd") -> torch.Tensor:
    """Pool VGG19 feature maps into one vector per image.

    Parameters
    ----------
    feats : dict of tap name -> Tensor of shape (B, C, H, W)
    taps : sequence of tap names, in order
    pooling : ``"meanstd"`` or ``"mean"``

    Returns
    -------
    Tensor of shape (B, pooled_size(taps, pooling)), float32.

    .. math:: m_c = \\frac{1}{M}\\sum_p F_{cp}, \\qquad
              s_c = \\sqrt{\\frac{1}{M}\\sum_p (F_{cp} - m_c)^2 + 10^{-8}}
    """
    out = []
    for t in taps:
        f = feats[t].float().flatten(2)
        m = f.mean(dim=2)
        out.append(m)
        if pooling == "meanstd":
            out.append(torch.sqrt(f.var(dim=2, unbiased=False) + 1e-8))
    return torch.cat(out, dim=1)


def bound_logvar(raw, bounds):
    """Soft-bound a raw log-variance to ``bounds = (lo, hi)`` (``None``: unbounded).

    .. math:: \\lambda = c + h \\tanh\\big((r - c) / h\\big), \\quad
              c = (lo + hi) / 2, \\; h = (hi - lo) / 2

    The identity near the centre (slope 1 at ``r = c``), smooth, and never outside
    ``[lo, hi]``: the posterior variance cannot explode the KL term (``e^{hi}``) nor collapse to
    a numerically zero width (``e^{lo}``).
    """
    if bounds is None:
        return raw
    lo, hi = float(bounds[0]), float(bounds[1])
    c, h = 0.5 * (lo + hi), 0.5 * (hi - lo)
    return c + h * torch.tanh((raw - c) / h)


class LatentHead(nn.Module):
    """The two trained fully-connected layers of the encoder: pooled features -> (mu, logvar).

    ``logvar_bounds = (lo, hi)`` soft-bounds the log-variance (:func:`bound_logvar`); ``None``
    leaves it free.
    """

    def __init__(self, in_features: int, latent_dim: int, logvar_bounds=None):
        super().__init__()
        self.fc_mu = nn.Linear(in_features, latent_dim)
        self.fc_logvar = nn.Linear(in_features, latent_dim)
        self.logvar_bounds = None if logvar_bounds is None else tuple(float(b) for b in logvar_bounds)
        # Start near the prior: small weights, log-variance around log(0.1).
        nn.init.normal_(self.fc_mu.weight, std=1.0 / math.sqrt(in_features))
        nn.init.zeros_(self.fc_mu.bias)
        nn.init.normal_(self.fc_logvar.weight, std=0.1 / math.sqrt(in_features))
        nn.init.constant_(self.fc_logvar.bias, math.log(0.1))

    def forward(self, h):
        return self.fc_mu(h), bound_logvar(self.fc_logvar(h), self.logvar_bounds)


class Decoder(nn.Module):
    """z -> grey patch: FC projection, four (3x3 conv, nearest 2x up, LeakyReLU 0.3) blocks,
    3x3 output conv + sigmoid.

    Parameters
    ----------
    latent_dim : int
    patch_size : int, a multiple of 16 (the four blocks upsample 16x)
    channels : sequence of 5 ints — the projected map's channels, then each block's output
    """

    def __init__(self, latent_dim: int, patch_size: int, channels=(256, 256, 128, 64, 32)):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 5:
            raise ValueError(f"decoder_channels needs 5 entries (projection + 4 blocks), "
                             f"got {len(channels)}: {channels}")
        if patch_size % 16:
            raise ValueError(f"patch size must be a multiple of 16 for the 4 upsampling blocks, "
                             f"got {patch_size}")
        self.start = patch_size // 16
        self.channels = channels
        self.project = nn.Linear(latent_dim, channels[0] * self.start * self.start)
        blocks = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            blocks += [nn.Conv2d(cin, cout, 3, padding=1),
                       nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.LeakyReLU(LEAKY_SLOPE)]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(channels[-1], 1, 3, padding=1)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        #: run the convolutions in channels-last layout (faster with oneDNN and cuDNN)
        self.channels_last = True

    def forward(self, z):
        h = self.act(self.project(z)).view(z.shape[0], self.channels[0], self.start, self.start)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(self.out(self.blocks(h)))


class TextureVAE(nn.Module):
    """The trained part of the texture-VAE: feature standardisation, latent head, decoder.

    The frozen VGG19 is *not* a submodule: it is shared, never saved with the model, and
    identified in the saved config by its weights' name and sha256.
    """

    def __init__(self, in_features: int, latent_dim: int, patch_size: int,
                 decoder_channels=(256, 256, 128, 64, 32), logvar_bounds=None):
        super().__init__()
        self.register_buffer("feat_mean", torch.zeros(in_features))
        self.register_buffer("feat_std", torch.ones(in_features))
        self.head = LatentHead(in_features, latent_dim, logvar_bounds)
        self.decoder = Decoder(latent_dim, patch_size, decoder_channels)
        self.latent_dim = latent_dim
        self.patch_size = patch_size

    def encode(self, pooled):
        """Pooled VGG19 features (B, D) -> (mu, logvar), each (B, latent_dim)."""
        h = (pooled.float() - self.feat_mean) / self.feat_std
        return self.head(h)

    def decode(self, z):
        """Latent vectors (B, latent_dim) -> patches (B, 1, P, P) in [0, 1]."""
        return self.decoder(z)


def downsample_patches(x, factor: int):
    """Area (box-filter) downsampling of patches by an integer ``factor``: (B, 1, P, P) ->
    (B, 1, P/factor, P/factor). Each output pixel is the mean of a ``factor x factor`` block,
    which is the anti-aliased resampling for integer factors. ``factor = 1`` returns ``x``."""
    factor = int(factor)
    if factor == 1:
        return x
    return torch.nn.functional.avg_pool2d(x, factor)


def upsample_patches(x, factor: int):
    """Bilinear upsampling by an integer ``factor`` (the inverse size change of
    :func:`downsample_patches`), clamped to [0, 1]."""
    factor = int(factor)
    if factor == 1:
        return x
    y = torch.nn.functional.interpolate(x, scale_factor=factor, mode="bilinear",
                                        align_corners=False)
    return y.clamp_(0.0, 1.0)


def kl_divergence(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dimensions, mean over the batch.

    .. math:: \\mathrm{KL} = \\tfrac12 \\sum_k (\\mu_k^2 + e^{\\lambda_k} - 1 - \\lambda_k)
    """
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()


def reparameterize(mu, logvar, generator=None):
    """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I) drawn from ``generator``."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps
