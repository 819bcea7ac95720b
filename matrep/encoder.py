"""The encoder contract: what every built-in and third-party encoder implements.

An encoder turns grey patches, an array of shape (n_patches, H, W) with values in [0, 1],
into features of shape (n_patches, n_features). It is scikit-learn shaped:

* ``__init__`` takes keyword-only parameters and only stores them (same attribute names);
* ``fit(X, y=None)`` validates, learns, and returns ``self``; learned state ends in ``_``;
* ``transform(X)`` (alias ``encode``) returns a float array of shape (n_patches, n_features);
* ``save(path)`` / ``load(path)`` round-trip through a folder holding ``config.json`` and
  ``state.safetensors`` (never pickle);
* ``provenance()`` returns a JSON-serialisable dict that the feature store records.

Class attributes describe the encoder to ``matrep encoders`` and to the commands; they are
the *capability flags*, and nothing else is guessed (no command reads ``fit``'s signature):

``name``, ``description``
    The registered name and a one-line description.
``trainable``
    ``fit`` learns something from the patches. A trainable encoder's ``fit`` takes one
    optional keyword, ``fit(X, y=None, *, context=None)``: a :class:`FitContext` with the run
    folder, resume flag, the patches' micrograph ids and coordinates, and a progress logger.
    It may ignore any field it has no use for.
``checkpoints``
    (trainable encoders only) ``fit`` writes checkpoints and the final model into
    ``context.run_dir`` and continues from them when ``context.resume``; ``matrep fit`` then
    leaves the run folder to it instead of saving the model itself.
``generative``
    The encoder decodes: it implements :class:`GenerativeEncoder` (``decode``,
    ``reconstruct``, ``traverse``, ``sample``, ``latent_dim``, ``patch_size_`` once fitted).
    ``can_decode`` is the same flag under its old name (either spelling sets both).

An encoder built on the shared frozen VGG19 may also implement the optional pair
``backbone_request()`` / ``transform_from_features(stats)`` (see :class:`BackboneRequest`;
a fitted encoder's ``backbone_request()`` may return None for a configuration that does not
share): a study then runs VGG19 once per patch for all such encoders
(:class:`matrep.backbone.BackboneFeatures`).

``matrep.testing.check_encoder`` checks all of the above.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

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


@dataclass
class FitContext:
    """What a command knows about a fit beyond the patches: handed to a trainable encoder as
    ``fit(X, context=FitContext(...))``. Every field is optional; an encoder uses what it needs.

    Parameters
    ----------
    run_dir : path or None
        The run folder (checkpoints, logs, the final model) of an encoder that
        ``checkpoints``; None: write nothing.
    resume : bool, default False
        Continue from the checkpoint in ``run_dir``.
    micrograph_ids : array of shape (n,) or None
        The micrograph of each patch (for held-out splits by micrograph or region).
    coords : array of shape (n, 2) or None
        Top-left corner (row, column) of each patch in its micrograph.
    log : callable(str) or None
        Receives one-line progress messages.
    quiet : bool, default True
        No progress bars.
    """

    run_dir: Path | None = None
    resume: bool = False
    micrograph_ids: Any = None
    coords: Any = None
    log: Callable[[str], None] | None = None
    quiet: bool = True

    @classmethod
    def from_patchset(cls, patchset, **kw) -> "FitContext":
        """A context carrying the micrograph ids and coordinates of ``patchset``
        (a :class:`matrep.io.PatchSet`), plus the fields ``kw``."""
        return cls(micrograph_ids=patchset.micrograph_ids, coords=patchset.coords, **kw)

    def say(self, msg: str) -> None:
        """Pass ``msg`` to ``log`` when there is one."""
        if self.log is not None:
            self.log(msg)


@dataclass(frozen=True)
class BackboneRequest:
    """The frozen-VGG19 statistics an encoder reads (its optional ``backbone_request()``).

    Parameters
    ----------
    weights : str, path or weights object
        The weights source the encoder resolves (handed to :class:`matrep.backbone.VGG19Backbone`).
    weights_sha256 : str
        Their sha256: requests with the same hash, ``downsample`` and ``device`` share one
        VGG19 pass per patch.
    stats : tuple of (tap, pooling) pairs
        The pooled feature maps wanted, in the order the encoder concatenates them
        (``pooling`` one of :data:`matrep.backbone.POOLINGS`).
    downsample : int, default 1
        Patches are area-averaged by this factor before VGG19.
    device : str, default "cpu"
    """

    weights: Any
    weights_sha256: str
    stats: tuple = field(default_factory=tuple)
    downsample: int = 1
    device: str = "cpu"

    @property
    def key(self) -> tuple:
        """What must agree for two requests to share a VGG19 pass."""
        return (self.weights_sha256, int(self.downsample), str(self.device))


#: The methods a ``generative`` encoder implements (see :class:`GenerativeEncoder`).
GENERATIVE_METHODS = ("decode", "reconstruct", "traverse", "sample")


@runtime_checkable
class GenerativeEncoder(Protocol):
    """The interface of an encoder flagged ``generative = True`` (fitted).

    ``decode(Z, seeds=None)``
        Latent vectors of shape (n, latent_dim) to patches (n, P, P) in [0, 1]; ``seeds``
        (n ints, optional) fix any noise the decoder draws.
    ``reconstruct(X)``
        Patches (n, P, P) to their decoded posterior means, (n, P, P).
    ``traverse(x, dims, values=None)``
        One patch (P, P) to (len(dims), len(values), P, P): row i varies latent ``dims[i]``.
    ``sample(n, seed=0)``
        ``n`` patches decoded from z ~ N(0, I).
    ``latent_dim`` (int) and ``patch_size_`` (int, the training patch side P).

    Optional: a ``decodes_any_size`` property; when it is true, ``decode(Z, seeds=None,
    size=S)`` returns (n, S, S) images.
    """

    latent_dim: int
    patch_size_: int

    def decode(self, Z, seeds=None): ...

    def reconstruct(self, X): ...

    def traverse(self, x, dims, values=None): ...

    def sample(self, n, seed=0): ...


class BaseEncoder(TransformerMixin, BaseEstimator):
    """Base class for matrep encoders (see the module docstring for the contract)."""

    name: str = ""
    description: str = ""
    trainable: bool = False
    checkpoints: bool = False
    generative: bool = False
    can_decode: bool = False  # the old name of ``generative``, kept equal to it

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        own = vars(cls)
        if "generative" in own:
            cls.can_decode = bool(own["generative"])
        elif "can_decode" in own:
            cls.generative = bool(own["can_decode"])

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


def fit_encoder(encoder, X, context: FitContext | None = None):
    """Fit ``encoder`` on ``X`` the declared way: a ``trainable`` encoder gets ``context``
    (``fit(X, context=context)``), any other one only the patches. Returns the fitted encoder."""
    if context is not None and getattr(encoder, "trainable", False):
        return encoder.fit(X, context=context)
    return encoder.fit(X)


def contract_problems(cls) -> list[str]:
    """What the class ``cls`` declares but does not provide (empty when it is consistent).

    Checks the capability flags (booleans) and that a ``generative`` class has every method
    of :data:`GENERATIVE_METHODS`; ``checkpoints`` needs ``trainable``. Used by the registry
    (a plugin that fails is skipped with a warning) and by :func:`matrep.testing.check_encoder`.
    """
    problems = []
    for flag in ("trainable", "checkpoints", "generative", "can_decode"):
        v = getattr(cls, flag, False)
        if not isinstance(v, (bool, type(None))):
            problems.append(f"class attribute {flag!r} must be True or False, got {v!r}")
    generative = bool(getattr(cls, "generative", False) or getattr(cls, "can_decode", False))
    if generative:
        missing = [m for m in GENERATIVE_METHODS if not callable(getattr(cls, m, None))]
        if missing:
            problems.append(f"is flagged generative but lacks {', '.join(missing)} (the "
                            "generative interface, matrep.encoder.GenerativeEncoder)")
    if getattr(cls, "checkpoints", False) and not getattr(cls, "trainable", False):
        problems.append("is flagged checkpoints but not trainable")
    has_req = callable(getattr(cls, "backbone_request", None))
    has_tff = callable(getattr(cls, "transform_from_features", None))
    if has_req != has_tff:
        problems.append("backbone_request and transform_from_features come as a pair; it "
                        f"defines only {'backbone_request' if has_req else 'transform_from_features'}")
    return problems


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
