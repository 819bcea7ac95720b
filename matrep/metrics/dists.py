r"""DISTS, the Deep Image Structure and Texture Similarity metric (Ding et al. 2020).

    K. Ding, K. Ma, S. Wang and E. P. Simoncelli, "Image quality assessment: unifying structure
    and texture similarity", IEEE TPAMI 44(5), 2567-2581, 2022 (arXiv:2004.07728, 2020).

Both images go through ImageNet VGG16 whose max-pooling layers are replaced by L2 pooling
(Hanning 3x3 blur of the squared activations, stride 2). At the input and at relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3 (1475 channels in all) each channel's spatial mean
:math:`\mu` and variance :math:`\sigma^2` and the cross covariance :math:`\sigma_{xy}` give

.. math::

    l_{ij} = \frac{2\mu^x_{ij}\mu^y_{ij} + c_1}{(\mu^x_{ij})^2 + (\mu^y_{ij})^2 + c_1}, \quad
    s_{ij} = \frac{2\sigma^{xy}_{ij} + c_2}{(\sigma^x_{ij})^2 + (\sigma^y_{ij})^2 + c_2},

    D(x, y) = 1 - \sum_{i, j} (\alpha_{ij} l_{ij} + \beta_{ij} s_{ij}),
    \quad \textstyle\sum_{ij} \alpha_{ij} + \beta_{ij} = 1, \quad c_1 = c_2 = 10^{-6},

with the published, learned :math:`\alpha, \beta`. matrep reports the *similarity*
``1 - D`` clipped to [0, 1] (1 = same texture), like the texture-VAE paper's Table 1; the
authors' reference example (their ``r0.png`` vs ``r1.png``) has ``D = 0.3347``.

DISTS has two ingredients that matrep cannot make and never substitutes:

* **ImageNet VGG16 weights**: torchvision's ``vgg16-397923af.pth`` (the ``IMAGENET1K_V1``
  checkpoint the authors use). Looked up as the ``vgg16_weights=`` argument, then
  ``$MATREP_VGG16_WEIGHTS``, then ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``.
  A ``.pth`` is read with ``torch.load(weights_only=True)``; ``.safetensors`` is also accepted
  (keys ``features.N.weight``/``.bias`` or ``N.weight``/``.bias``).
* **the published alpha/beta** (the authors' ``weights.pt``, 1475 + 1475 numbers): the
  ``dists_weights=`` argument, then ``$MATREP_DISTS_WEIGHTS``, then the ``weights.pt`` inside an
  installed ``dists-pytorch`` wheel (``pip install dists-pytorch``; MIT licence; found without
  importing it). Read with ``torch.load(weights_only=True)`` or safetensors (keys ``alpha``,
  ``beta``).

Without either, :func:`dists` raises :class:`matrep.errors.WeightsNotFoundError` naming what
is missing and how to provide it.

Grey images (N, 1, H, W) are replicated to three channels; (N, 3, H, W) RGB is accepted too.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from ..errors import BadInputError, WeightsNotFoundError

ENV_VGG16 = "MATREP_VGG16_WEIGHTS"
ENV_DISTS = "MATREP_DISTS_WEIGHTS"
VGG16_FILE = "vgg16-397923af.pth"
#: sha256 of the authors' ``weights.pt`` as shipped in the dists-pytorch 0.1 wheel.
PUBLISHED_ALPHA_BETA_SHA256 = "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218"
CHANNELS = (3, 64, 128, 256, 512, 512)
#: vgg16().features index ranges of the five stages (max-pool indices 4, 9, 16, 23 become L2 pools)
_STAGES = ((0, 4), (5, 9), (10, 16), (17, 23), (24, 30))
_POOLS = (4, 9, 16, 23)
C1 = C2 = 1e-6
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------
# finding the ingredients
# ---------------------------------------------------------------------------------------
def _torch_hub_vgg16() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def _wheel_alpha_beta() -> Path | None:
    try:
        spec = importlib.util.find_spec("DISTS_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "weights.pt"
        if p.is_file():
            return p
    return None


def find_vgg16_weights(path=None) -> Path | None:
    """The VGG16 weights file DISTS would use, or None (see the module docstring for the order)."""
    given = _given_file(path, "vgg16_weights", ENV_VGG16, "VGG16 weights file")
    if given is not None:
        return given
    p = _torch_hub_vgg16()
    return p if p.is_file() else None


def find_dists_weights(path=None) -> Path | None:
    """The alpha/beta file DISTS would use, or None (see the module docstring for the order)."""
    given = _given_file(path, "dists_weights", ENV_DISTS, "DISTS alpha/beta file")
    return given if given is not None else _wheel_alpha_beta()


def _given_file(path, argname: str, env: str, what: str) -> Path | None:
    """The file named by the argument or else by ``$env``; an error if it names a missing file."""
    for cand in (path, os.environ.get(env)):
        if cand:
            p = Path(cand).expanduser()
            if not p.is_file():
                raise WeightsNotFoundError(f"{p}: {what} not found (given as "
                                           f"{argname if cand == path else '$' + env})")
            return p
    return None


def missing_ingredients(vgg16_weights=None, dists_weights=None) -> list[str]:
    """What DISTS lacks, as short phrases (empty list when it can run)."""
    missing = []
    try:
        if find_vgg16_weights(vgg16_weights) is None:
            missing.append("ImageNet VGG16 weights")
    except WeightsNotFoundError as exc:
        missing.append(f"ImageNet VGG16 weights ({exc})")
    try:
        if find_dists_weights(dists_weights) is None:
            missing.append("DISTS alpha/beta")
    except WeightsNotFoundError as exc:
        missing.append(f"DISTS alpha/beta ({exc})")
    return missing


def dists_available(vgg16_weights=None, dists_weights=None) -> bool:
    """True when both DISTS ingredients are found."""
    return not missing_ingredients(vgg16_weights, dists_weights)


def _how_to(missing: list[str]) -> str:
    lines = [f"DISTS cannot run: missing {' and '.join(missing)}. matrep never substitutes "
             "another network or random weights under the DISTS name."]
    if any(m.startswith("ImageNet VGG16") for m in missing):
        lines.append(f"VGG16: copy torchvision's {VGG16_FILE} (IMAGENET1K_V1) to "
                     f"{_torch_hub_vgg16()} or set {ENV_VGG16}=/path/to/{VGG16_FILE} "
                     "(or a .safetensors of vgg16().features).")
    if any(m.startswith("DISTS alpha/beta") for m in missing):
        lines.append(f"alpha/beta: `pip install dists-pytorch` (ships the authors' weights.pt) or "
                     f"set {ENV_DISTS}=/path/to/weights.pt (DISTS_pytorch/weights.pt in "
                     "the authors' repository dingkeyan93/DISTS).")
    return " ".join(lines)


# ---------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------
def _load_tensors(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
            raise BadInputError(path, f"not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - weights_only refusal or corrupt file
        raise BadInputError(path, f"does not load with torch.load(weights_only=True) "
                                  f"({type(exc).__name__}); matrep never unpickles arbitrary "
                                  "objects: provide a plain state dict or safetensors") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise BadInputError(path, f"expected a dict of tensors, got {type(obj).__name__}")
    return obj


def load_alpha_beta(path) -> tuple:
    """Read (alpha, beta), each a float32 tensor of shape (1, 1475, 1, 1), from ``path``."""
    path = Path(path)
    sd = _load_tensors(path)
    n = sum(CHANNELS)
    out = []
    for key in ("alpha", "beta"):
        if key not in sd:
            raise BadInputError(path, f"no {key!r} tensor (keys: {', '.join(map(str, sd))}); "
                                      "expected the DISTS weights.pt with 'alpha' and 'beta'")
        t = sd[key].detach().float().reshape(-1)
        if t.numel() != n:
            raise BadInputError(path, f"{key!r} has {t.numel()} values, expected {n} "
                                      f"(channels {CHANNELS})")
        out.append(t.reshape(1, n, 1, 1))
    return tuple(out)


def load_vgg16_features(path):
    """``torchvision.models.vgg16().features`` with the weights from ``path`` (eval, frozen)."""
    from torchvision.models import vgg16

    path = Path(path)
    sd = _load_tensors(path)
    feats = vgg16(weights=None).features
    want = feats.state_dict()
    new = {}
    for k in want:
        for cand in (f"features.{k}", k):
            if cand in sd:
                new[k] = sd[cand]
                break
        else:
            raise BadInputError(path, f"no VGG16 tensor for features.{k}; expected torchvision's "
                                      f"{VGG16_FILE} (or its features.* keys in safetensors)")
        if tuple(new[k].shape) != tuple(want[k].shape):
            raise BadInputError(path, f"features.{k} has shape {tuple(new[k].shape)}, VGG16 "
                                      f"needs {tuple(want[k].shape)}: not VGG16 weights")
    feats.load_state_dict({k: v.float() for k, v in new.items()})
    feats.eval()
    for p in feats.parameters():
        p.requires_grad_(False)
    return feats


def _l2pool(channels: int):
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class L2Pool(nn.Module):
        """sqrt(blur(x^2)) with a normalised 3x3 Hanning window, stride 2, padding 1."""

        def __init__(self):
            super().__init__()
            a = np.hanning(5)[1:-1]
            g = torch.tensor(a[:, None] * a[None, :], dtype=torch.float32)
            g = g / g.sum()
            self.register_buffer("filter", g[None, None].repeat(channels, 1, 1, 1))

        def forward(self, x):
            out = F.conv2d(x ** 2, self.filter, stride=2, padding=1, groups=x.shape[1])
            return (out + 1e-12).sqrt()

    return L2Pool()


def build_dists_network(features):
    """The DISTS feature extractor from a VGG16 ``features`` module: a callable returning the
    six feature maps [input, relu1_2, relu2_2, relu3_3, relu4_3, relu5_3]."""
    import torch
    import torch.nn as nn

    class DISTSFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            stages = []
            for s, (a, b) in enumerate(_STAGES):
                layers = [] if s == 0 else [_l2pool(CHANNELS[s])]
                layers += [features[i] for i in range(a, b)]
                stages.append(nn.Sequential(*layers))
            self.stages = nn.ModuleList(stages)
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

        def forward(self, x):
            feats = [x]
            h = (x - self.mean) / self.std
            for stage in self.stages:
                h = stage(h)
                feats.append(h)
            return feats

    return DISTSFeatures().eval()


def dists_from_features(fx, fy, alpha, beta):
    """The DISTS distance D from two lists of feature maps and the raw (unnormalised)
    alpha, beta of shape (1, sum(channels), 1, 1). Returns a tensor of shape (N,).

    This is the metric's arithmetic alone; :func:`dists` supplies VGG16 features.
    """
    import torch

    chns = [f.shape[1] for f in fx]
    if sum(chns) != alpha.numel() or alpha.numel() != beta.numel():
        raise ValueError(f"alpha/beta have {alpha.numel()}/{beta.numel()} entries, the features "
                         f"have {sum(chns)} channels")
    w_sum = alpha.sum() + beta.sum()
    alphas = torch.split(alpha.reshape(1, -1) / w_sum, chns, dim=1)
    betas = torch.split(beta.reshape(1, -1) / w_sum, chns, dim=1)
    d1 = d2 = 0
    for k, (a, b) in enumerate(zip(fx, fy)):
        a = a.double()
        b = b.double()
        ma, mb = a.mean((2, 3)), b.mean((2, 3))
        s1 = (2 * ma * mb + C1) / (ma ** 2 + mb ** 2 + C1)
        va = ((a - ma[..., None, None]) ** 2).mean((2, 3))
        vb = ((b - mb[..., None, None]) ** 2).mean((2, 3))
        cov = (a * b).mean((2, 3)) - ma * mb
        s2 = (2 * cov + C2) / (va + vb + C2)
        d1 = d1 + (alphas[k].double() * s1).sum(1)
        d2 = d2 + (betas[k].double() * s2).sum(1)
    return (1 - (d1 + d2)).float()


class DISTS:
    """A loaded DISTS metric (VGG16 features + alpha/beta) with its provenance."""

    def __init__(self, vgg16_path: Path, alpha_beta_path: Path, device="cpu"):
        from ..weights import sha256_file

        self.vgg16_path = Path(vgg16_path)
        self.alpha_beta_path = Path(alpha_beta_path)
        self.alpha, self.beta = load_alpha_beta(self.alpha_beta_path)
        self.net = build_dists_network(load_vgg16_features(self.vgg16_path))
        self.device = device
        self.net.to(device)
        self.alpha = self.alpha.to(device)
        self.beta = self.beta.to(device)
        ab_sha = sha256_file(self.alpha_beta_path)
        self.provenance = {
            "metric": "DISTS (Ding et al. 2020)",
            "vgg16_weights": str(self.vgg16_path),
            "vgg16_sha256": sha256_file(self.vgg16_path),
            "alpha_beta": str(self.alpha_beta_path),
            "alpha_beta_sha256": ab_sha,
            "alpha_beta_published": ab_sha == PUBLISHED_ALPHA_BETA_SHA256,
        }

    def distance(self, x, y, *, batch_size: int = 16):
        """DISTS distance D (0 = identical) of two batches, shape (N,)."""
        import torch

        x, y = _check_images(x, y)
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                a = x[i:i + batch_size].to(self.device, torch.float32)
                b = y[i:i + batch_size].to(self.device, torch.float32)
                out.append(dists_from_features(self.net(a), self.net(b), self.alpha, self.beta))
        if not out:
            return torch.zeros(0)
        return torch.cat(out)

    def similarity(self, x, y, *, batch_size: int = 16):
        """1 - D clipped to [0, 1] (1 = same texture), shape (N,)."""
        return (1 - self.distance(x, y, batch_size=batch_size)).clamp(0, 1)


def _check_images(x, y):
    import torch

    if not torch.is_tensor(x) or not torch.is_tensor(y):
        raise TypeError(f"expected torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1, H, W) or (N, 3, H, W), got "
                         f"{tuple(x.shape)}")
    if x.shape[1] == 1:
        x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
    return x, y


@lru_cache(maxsize=4)
def _cached(vgg: str, ab: str, device: str) -> DISTS:
    return DISTS(Path(vgg), Path(ab), device)


def load_dists(vgg16_weights=None, dists_weights=None, device=None) -> DISTS:
    """Find both ingredients and return a (cached) :class:`DISTS`; raise
    :class:`WeightsNotFoundError` saying what is missing and how to provide it."""
    missing = missing_ingredients(vgg16_weights, dists_weights)
    if missing:
        raise WeightsNotFoundError(_how_to(missing))
    vgg = find_vgg16_weights(vgg16_weights)
    ab = find_dists_weights(dists_weights)
    return _cached(str(vgg.resolve()), str(ab.resolve()), str(device or "cpu"))


def dists(x, y, *, vgg16_weights=None, dists_weights=None, batch_size: int = 16):
    """DISTS similarity ``1 - D`` of two image batches, clipped to [0, 1].

    Parameters
    ----------
    x, y : tensors of shape (N, 1, H, W) (grey) or (N, 3, H, W) (RGB), values in [0, 1]
    vgg16_weights, dists_weights : paths, optional (otherwise the environment variables and
        default locations in the module docstring)
    batch_size : int, default 16

    Returns
    -------
    tensor of shape (N,), float32, on x's device; 1 for identical images.

    Raises
    ------
    WeightsNotFoundError when VGG16 weights or alpha/beta are missing.
    """
    m = load_dists(vgg16_weights, dists_weights, device=x.device)
    return m.similarity(x, y, batch_size=batch_size)
