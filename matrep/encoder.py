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
from .errors import BadInputError, EncoderContractError, NotFittedError

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
        """Load an encoder written by :meth:`save`."""
        from safetensors.numpy import load_file

        path = Path(path)
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            raise BadInputError(path, f"not a saved matrep model (no {CONFIG_NAME})")
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise BadInputError(cfg_path, f"corrupt model config ({exc})") from None
        if config.get("encoder") != cls.name:
            raise EncoderContractError(f"{path}: holds a {config.get('encoder')!r} model, "
                                       f"expected {cls.name!r}")
        obj = cls(**config.get("params", {}))
        arrays = load_file(str(path / STATE_NAME)) if (path / STATE_NAME).exists() else {}
        obj._set_state(arrays, config.get("meta", {}))
        return obj


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
