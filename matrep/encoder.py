"""The encoder contract: what every built-in and third-party encoder implements.

An encoder turns grey patches, an array of shape (n_patches, H, W) with values in [0, 1],
into features of shape (n_patches, n_features). It is scikit-learn shaped:

* ``__init__`` takes keyword-only parameters and only stores them (same attribute names);
* ``fit(X, y=None)`` validates, learns, and returns ``self``; learned state ends in ``_``;
* ``transform(X)`` (alias ``encode``) returns a float array of shape (n_patches, n_features);
* ``save(path)`` / ``load(path)`` round-trip through a folder holding ``config.json`` and
  ``state.safetensors`` (never pickle);
* ``provenance()`` returns a JSON-serialisable dict that the feature store records.

Class attributes describe the encoder to ``matrep encoders``: ``name``, ``description``,
``trainable`` (``fit`` learns something), ``can_decode`` (``decode``/``sample`` exist).

``matrep.testing.check_encoder`` checks all of the above.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ._version import __version__ as _matrep_version
from .atomic import atomic_dir
from .errors import BadInputError, EncoderContractError, MatrepError, NotFittedError

CONFIG_NAME = "config.json"
STATE_NAME = "state.safetensors"


def check_patches(X, *, name: str = "X") -> np.ndarray:
    """Validate patches: shape (n, H, W), finite, values in [0, 1]; return float32."""
    X = np.asarray(X)
    if X.ndim != 3:
        raise BadInputError(None, f"{name} must have shape (n_patches, H, W), got shape {X.shape}; "
                                  "cut patches with matrep.io.extract_patches")
    if not np.issubdtype(X.dtype, np.floating):
        raise BadInputError(None, f"{name} must be float in [0, 1], got dtype {X.dtype}; "
                                  "scale with matrep.io.to_unit_float")
    X = X.astype(np.float32, copy=False)
    if X.size and not np.isfinite(X).all():
        raise BadInputError(None, f"{name} contains NaN or inf values")
    if X.size and (X.min() < -1e-6 or X.max() > 1 + 1e-6):
        raise BadInputError(None, f"{name} values must lie in [0, 1], got [{X.min():.3g}, {X.max():.3g}]")
    return X


class BaseEncoder(TransformerMixin, BaseEstimator):
    """Base class for matrep encoders (see the module docstring for the contract)."""

    name: str = ""
    description: str = ""
    trainable: bool = False
    can_decode: bool = False

    # -- to implement -------------------------------------------------------------------
    def fit(self, X, y=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, X):  # pragma: no cover - abstract
        raise NotImplementedError

    def _get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Return (arrays, json_meta) describing the learned state (keys end in ``_``)."""
        return {}, {}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Restore the learned state written by :meth:`_get_state`."""

    # -- provided -----------------------------------------------------------------------
    def encode(self, X):
        """Alias of :meth:`transform`."""
        return self.transform(X)

    def __sklearn_is_fitted__(self):
        return any(k.endswith("_") and not k.startswith("__") for k in vars(self))

    def _check_fitted(self):
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(f"encoder {self.name!r} is not fitted: call fit(patches) first, "
                                 "or load a fitted model with matrep.load_model(path)")

    def provenance(self) -> dict:
        """JSON-serialisable record of what produced the features."""
        from importlib import metadata

        dist, version = "matrep", _matrep_version
        mod = type(self).__module__.split(".")[0]
        if mod != "matrep":
            try:
                name = _packages_distributions().get(mod, [mod])[0]
                d = metadata.distribution(name)
                dist, version = d.metadata["Name"], d.version
            except Exception:  # noqa: BLE001 - provenance must never fail
                dist, version = mod, "unknown"
        return {
            "encoder": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "distribution": dist,
            "version": version,
            "params": _jsonable(self.get_params(deep=False)),
        }

    def save(self, path) -> Path:
        """Write the encoder (parameters + learned state) to the folder ``path`` atomically."""
        from safetensors.numpy import save_file

        arrays, meta = self._get_state()
        config = {
            "encoder": self.name,
            "matrep_version": _matrep_version,
            "params": _jsonable(self.get_params(deep=False)),
            "meta": _jsonable(meta),
            "provenance": self.provenance(),
        }
        path = Path(path)
        with atomic_dir(path) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / STATE_NAME))
        return path

    @classmethod
    def load(cls, path):
        """Load an encoder written by :meth:`save`.

        Raises
        ------
        BadInputError
            Naming the folder or file: no or corrupt ``config.json`` (see :func:`read_config`),
            a parameter this encoder does not take, a ``state.safetensors`` that is not a
            readable safetensors file, or a state that does not match the config.
        """
        from .tensorfile import read_tensors

        path = Path(path)
        config = read_config(path)
        if config["encoder"] != cls.name:
            raise EncoderContractError(f"{path}: holds a {config['encoder']!r} model, "
                                       f"expected {cls.name!r}")
        params = config.get("params", {})
        accepted = _init_params(cls)
        unknown = sorted(set(params) - set(accepted)) if accepted is not None else []
        if unknown:
            raise BadInputError(path / CONFIG_NAME, f"encoder {cls.name!r} takes no parameter(s) "
                                                    f"{', '.join(map(repr, unknown))} (it takes: "
                                                    f"{', '.join(accepted)}); was the model saved by "
                                                    "another version of the encoder?")
        try:
            obj = cls(**params)
        except (TypeError, ValueError) as exc:
            raise BadInputError(path / CONFIG_NAME, f"parameters do not fit encoder {cls.name!r} "
                                                    f"({type(exc).__name__}: {exc})") from exc
        state = path / STATE_NAME
        arrays = read_tensors(state, hint="save the model again or refit it") \
            if state.exists() or state.is_symlink() else {}
        try:
            obj._set_state(arrays, config.get("meta", {}))
        except BadInputError as exc:
            if exc.path is not None:
                raise
            raise BadInputError(path, exc.problem) from exc
        except MatrepError as exc:  # same type, with the folder named
            if str(path) in str(exc):
                raise
            try:
                named = type(exc)(f"{path}: {exc}")
            except TypeError:
                raise exc from None
            raise named from exc
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            raise BadInputError(path, f"the saved state does not match {CONFIG_NAME} "
                                      f"({type(exc).__name__}: {exc}); save the model again or "
                                      "refit it") from exc
        return obj


#: A model's ``config.json`` is small; anything bigger is not one.
MAX_CONFIG_BYTES = 64 * 2**20


def read_config(path) -> dict:
    """The ``config.json`` of a saved model folder ``path``, checked.

    Returns
    -------
    dict with at least ``"encoder"`` (str); ``"params"`` and ``"meta"``, when present, are dicts.

    Raises
    ------
    BadInputError
        Naming the folder or the file: no ``config.json``, not UTF-8, not JSON, not a JSON
        object, no encoder name, ``params``/``meta`` that are not objects.
    """
    path = Path(path)
    cfg = path / CONFIG_NAME
    if not cfg.is_file():
        if path.is_file():
            raise BadInputError(path, "is a file; a saved matrep model is a folder holding "
                                      f"{CONFIG_NAME} and {STATE_NAME}")
        raise BadInputError(path, f"not a saved matrep model (no {CONFIG_NAME}); train one with "
                                  "`matrep fit` or save an encoder with encoder.save(path)")
    if cfg.stat().st_size > MAX_CONFIG_BYTES:
        raise BadInputError(cfg, f"corrupt model config: {cfg.stat().st_size:,} bytes, more than "
                                 f"a config can hold ({MAX_CONFIG_BYTES:,})")
    try:
        text = cfg.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputError(cfg, f"corrupt model config: not UTF-8 text (byte {exc.start})") from None
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadInputError(cfg, f"corrupt model config: not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise BadInputError(cfg, f"corrupt model config: expected a JSON object, got a JSON "
                                 f"{_json_type(config)}")
    if not isinstance(config.get("encoder"), str) or not config["encoder"]:
        raise BadInputError(cfg, "corrupt model config: no \"encoder\" name (a string)")
    for key in ("params", "meta"):
        if key in config and not isinstance(config[key], dict):
            raise BadInputError(cfg, f"corrupt model config: \"{key}\" must be a JSON object, "
                                     f"got a JSON {_json_type(config[key])}")
    return config


def _json_type(obj) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null", dict: "object"}.get(type(obj), type(obj).__name__)


def _init_params(cls) -> list[str] | None:
    """Keyword parameters of ``cls.__init__`` (None when it takes ``**kwargs``)."""
    import inspect

    sig = inspect.signature(cls.__init__)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return [n for n, p in sig.parameters.items() if n != "self"
            and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict:
    """importlib.metadata.packages_distributions(), scanned once per process (it is slow)."""
    from importlib import metadata

    return metadata.packages_distributions()


def _jsonable(obj):
    """Best-effort conversion to JSON-compatible builtins."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)
