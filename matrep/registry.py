"""Encoder registry: every encoder, built-in or third-party, is an entry point.

Encoders are discovered through the ``matrep.encoders`` entry-point group (matrep's own
``twopoint``, ``vgg19`` and ``texturevae`` are registered there in its ``pyproject.toml``, the
same way a plugin registers)::

    [project.entry-points."matrep.encoders"]
    myencoder = "my_package.module:MyEncoder"

A plugin that fails to import (even by calling ``sys.exit()`` or raising ``KeyboardInterrupt``
at import), or whose object is not an encoder class, produces one warning naming the plugin
and the error; every other encoder keeps working. Two distributions that
register the same name produce a warning naming both; matrep's built-in wins, otherwise the
first in sorted distribution order.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import EncoderContractError, EncoderNotFoundError

GROUP = "matrep.encoders"
_REQUIRED = ("fit", "transform", "get_params", "save", "load", "provenance")


class PluginWarning(UserWarning):
    """A plugin could not be loaded or clashes with another; the rest keeps working."""


@dataclass
class EncoderInfo:
    """What ``matrep encoders`` shows about one encoder."""

    name: str
    distribution: str
    version: str
    description: str
    trainable: bool
    can_decode: bool
    cls: type
    entry_point: str

    @property
    def generative(self) -> bool:
        """The declared capability flag (``can_decode`` is its old name)."""
        return self.can_decode


def _dist_of(ep) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"], dist.version


def _check_class(obj, name: str):
    if not isinstance(obj, type):
        raise EncoderContractError(f"entry point resolves to {type(obj).__name__}, expected an "
                                   "encoder class")
    missing = [m for m in _REQUIRED if not callable(getattr(obj, m, None))]
    if missing:
        raise EncoderContractError(f"class {obj.__qualname__} lacks {', '.join(missing)} "
                                   "(subclass matrep.encoder.BaseEncoder)")
    from .encoder import contract_problems

    problems = contract_problems(obj)
    if problems:
        raise EncoderContractError(f"class {obj.__qualname__} " + "; ".join(problems))
    declared = getattr(obj, "name", None)
    if declared != name:
        raise EncoderContractError(f"class {obj.__qualname__} declares name={declared!r}, "
                                   f"but is registered as {name!r}")


def _load_entry_points(eps) -> dict[str, EncoderInfo]:
    found: dict[str, EncoderInfo] = {}
    seen = set()
    for ep in sorted(eps, key=lambda e: (e.name, _dist_of(e)[0] != "matrep", _dist_of(e)[0])):
        dist, version = _dist_of(ep)
        if (ep.name, ep.value, dist) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((ep.name, ep.value, dist))
        if ep.name in found:
            warnings.warn(f"matrep: encoder name {ep.name!r} is registered by two distributions: "
                          f"{found[ep.name].distribution} ({found[ep.name].entry_point}) and "
                          f"{dist} ({ep.value}); using the one from {found[ep.name].distribution}",
                          PluginWarning, stacklevel=3)
            continue
        try:
            cls = ep.load()
            _check_class(cls, ep.name)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # noqa: BLE001 - a broken
            # plugin must not break matrep, not even one that calls sys.exit() at import
            why = " ".join(f"{type(exc).__name__}: {exc}".split())
            if not isinstance(exc, Exception):
                why = f"it raised {type(exc).__name__}({exc}) while being imported"
            warnings.warn(f"matrep: encoder plugin {ep.name!r} from {dist} ({ep.value}) could not "
                          f"be loaded and is skipped: {why}", PluginWarning, stacklevel=3)
            continue
        found[ep.name] = EncoderInfo(
            name=ep.name, distribution=dist, version=version,
            description=(getattr(cls, "description", "") or (cls.__doc__ or "").strip().split("\n")[0]),
            trainable=bool(getattr(cls, "trainable", False)),
            can_decode=bool(getattr(cls, "generative", False) or getattr(cls, "can_decode", False)),
            cls=cls, entry_point=ep.value)
    return found


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, EncoderInfo]:
    return _load_entry_points(metadata.entry_points(group=GROUP))


def refresh() -> None:
    """Forget the cached registry (after installing a plugin in the same process)."""
    _registry.cache_clear()


def list_encoders() -> list[EncoderInfo]:
    """The installed encoders, sorted by name."""
    return [info for _, info in sorted(_registry().items())]


def encoder_class(name: str) -> type:
    """The class registered as ``name``; :class:`EncoderNotFoundError` lists the installed ones."""
    reg = _registry()
    if name not in reg:
        installed = ", ".join(sorted(reg)) or "none"
        raise EncoderNotFoundError(
            f"unknown encoder {name!r}; installed encoders: {installed}. To add one, install a "
            f"package that registers it in the {GROUP!r} entry-point group "
            "(see examples/matrep-example-plugin)")
    return reg[name].cls


def get_encoder(name: str, **params):
    """An instance of the encoder ``name`` with keyword ``params``."""
    cls = encoder_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        import inspect

        accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise EncoderContractError(f"encoder {name!r} does not accept these parameters "
                                   f"({exc}); it accepts: {', '.join(accepted)}") from None


def load_model(path):
    """Load a saved encoder folder (``config.json`` names the encoder)."""
    from .encoder import read_config

    return encoder_class(read_config(path)["encoder"]).load(Path(path))
