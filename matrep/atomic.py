"""Atomic file and folder writes, locks, and the cleanup of what dead writers left behind.

Everything matrep writes (feature stores, checkpoints, models, reports) goes through these
helpers, so a ``kill -9`` at any moment leaves either the previous complete file or the new
complete file, plus at most a stray temporary that the next write to the same target removes.

Temporaries are named for their writer: ``.tmp-<name>-<pid>@<host>-<random>`` (files and
folders) and ``.old-<name>-<pid>@<host>`` (the previous folder, moved aside during a folder
swap). The next write to ``<name>`` removes those whose process on this host is gone
(``.old-<name>-<pid>``, the older format, counts as this host's); those of another host, or
without a writer (the older ``.tmp-<name>-<random>``), once they are :data:`STALE_AGE_S` old,
or at once while the caller holds the target's lock. A folder swap killed between its two
renames (``<name>`` missing, ``.old-<name>-*`` present) is recovered by :func:`recover_dir`.

:func:`lock` serialises writers of one target through a ``filelock`` lock file
``.<name>.lock`` beside it (an empty file that stays; the operating system releases the lock
when its process dies, even by ``kill -9``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

#: Age (seconds) after which a temporary whose writer cannot be checked counts as dead.
STALE_AGE_S = 3600.0

_HELD: dict = {}  # (lock file, thread) -> depth, for re-entry
_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


def _tag() -> str:
    """``<pid>@<host>``: names this process in the temporaries it creates."""
    return f"{os.getpid()}@{_HOST}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _writer(name: str, kind: str, entry: str):
    """``(pid, host)`` of a leftover ``entry`` of ``name`` (``kind`` "tmp" or "old"), ``(None,
    None)`` when the entry names no writer, or ``False`` when it is not a leftover of ``name``."""
    esc = re.escape(name)
    if kind == "tmp":
        m = re.fullmatch(rf"\.tmp-{esc}-(?:(\d+)@([A-Za-z0-9_]+)-)?[A-Za-z0-9_]{{8}}"
                         r"(\.[A-Za-z0-9_.]*)?", entry)
    else:
        m = re.fullmatch(rf"\.old-{esc}-(\d+)(?:@([A-Za-z0-9_]+))?", entry)
    if m is None:
        return False
    pid, host = m.group(1), m.group(2)
    return (int(pid) if pid else None), host


def _is_stale(p: Path, pid, host, locked: bool) -> bool:
    """Whether the writer of leftover ``p`` is gone (see the module docstring)."""
    if pid is not None and host in (None, _HOST):  # ``.old-<name>-<pid>``: this host's
        return not _pid_alive(pid)
    if locked:
        return True
    try:
        return time.time() - p.lstat().st_mtime > STALE_AGE_S
    except OSError:
        return False


def _remove(p: Path) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink()
    except OSError:
        pass


def leftovers(path) -> list[Path]:
    """The temporaries of ``path`` beside it (``.tmp-<name>-*``, ``.old-<name>-*``), any writer."""
    path = Path(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    tmp, old = f".tmp-{path.name}-", f".old-{path.name}-"
    return sorted(path.parent / e for e in names
                  if (e.startswith(tmp) and _writer(path.name, "tmp", e) is not False)
                  or (e.startswith(old) and _writer(path.name, "old", e) is not False))


def remove_leftovers(path, *, locked: bool = False) -> list[Path]:
    """Remove the temporaries that dead writers of ``path`` left beside it; return them.

    ``locked``: the caller holds ``path``'s :func:`lock`, so every writer that names no
    process (older format) is known to be dead.
    """
    path = Path(path)
    removed = []
    for p in leftovers(path):
        w = _writer(path.name, "tmp", p.name)
        if w is False:
            w = _writer(path.name, "old", p.name)
            if not (path.exists() or path.is_symlink()):
                continue  # the only copy of the previous folder: recover_dir's business
        if _is_stale(p, *w, locked=locked):
            _remove(p)
            removed.append(p)
    return removed


def recover_dir(path) -> bool:
    """Finish a folder swap of :func:`atomic_dir` that a dead writer left between its renames.

    When ``path`` is missing and a dead writer's ``.old-<name>-<writer>`` is beside it: if the
    same writer's ``.tmp-<name>-<writer>-*`` folder is there too, it is complete (the old folder
    is moved aside only once the new one is written) and becomes ``path``; otherwise the old
    folder is put back. Then the other leftovers of dead writers are removed.

    Returns
    -------
    bool : whether a folder was put back at ``path``
    """
    path = Path(path)
    recovered = False
    if not (path.exists() or path.is_symlink()):
        olds = []
        for p in leftovers(path):
            w = _writer(path.name, "old", p.name)
            if w is not False and p.is_dir() and _is_stale(p, *w, locked=False):
                olds.append((p, w))
        if olds:
            old, (pid, host) = max(olds, key=lambda t: t[0].lstat().st_mtime)
            new = None
            if pid is not None and host is not None:
                for p in leftovers(path):
                    if p.is_dir() and _writer(path.name, "tmp", p.name) == (pid, host):
                        new = p
            try:
                os.replace(new or old, path)
                recovered = True
            except OSError:
                return False
            _fsync_dir(path.parent)
            if new is not None:
                shutil.rmtree(old, ignore_errors=True)
            # temporaries without a writer from the interrupted swap's time are its own
            for p in leftovers(path):
                w = _writer(path.name, "tmp", p.name)
                if w is not False and w[0] is None:
                    _remove(p)
    remove_leftovers(path)
    return recovered


@contextlib.contextmanager
def lock(path, *, wait: bool = True, on_wait=None):
    """Hold the lock of target ``path`` (``.<name>.lock`` beside it) for the ``with`` block.

    Re-entrant within a thread; other threads and processes wait (or are refused).

    Parameters
    ----------
    path : the file or folder being written
    wait : wait for another holder to finish (default); ``False``: raise :class:`LockedError`
    on_wait : callable(str), optional — told once when the lock is busy and this call waits

    Raises
    ------
    LockedError
        ``wait=False`` and another process (or thread) holds the lock.
    """
    from filelock import FileLock, Timeout

    from .errors import LockedError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_file = path.parent / f".{path.name}.lock"
    key = (str(lock_file.resolve()), threading.get_ident())
    if key not in _HELD:  # filelock polls forever on a lock file it cannot create (read-only
        try:              # folder): say so, naming the folder
            os.close(os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666))
        except OSError as exc:
            raise type(exc)(exc.errno, exc.strerror, str(path.parent)) from None
    if key in _HELD:  # re-entered by the thread that holds it
        _HELD[key] += 1
        try:
            yield lock_file
        finally:
            _HELD[key] -= 1
        return
    fl = FileLock(str(lock_file), thread_local=False)
    try:
        fl.acquire(timeout=0 if not wait else 0.2)
    except Timeout:
        if not wait:
            raise LockedError(f"{path}: another matrep process is writing it (lock "
                              f"{lock_file.name}); wait for it to finish or choose another "
                              "output") from None
        if on_wait is not None:
            on_wait(f"waiting for another matrep process writing {path} (lock {lock_file.name})")
        fl.acquire()
    _HELD[key] = 1
    try:
        yield lock_file
    finally:
        del _HELD[key]
        fl.release()


def holds_lock(path) -> bool:
    """Whether this thread holds :func:`lock` of ``path``."""
    path = Path(path)
    lock_file = path.parent / f".{path.name}.lock"
    return (str(lock_file.resolve()), threading.get_ident()) in _HELD


@contextlib.contextmanager
def atomic_path(path, suffix: str = "", *, locked: bool = False):
    """Yield a temporary path beside ``path``; on success move it over ``path``.

    The caller writes the complete file to the yielded path (with any library: h5py,
    safetensors, PIL ...). On an exception the temporary file is removed and ``path`` is
    untouched. Temporaries of dead writers of ``path`` are removed first (``locked``: the
    caller holds ``path``'s :func:`lock`, see :func:`remove_leftovers`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path, locked=locked)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-{_tag()}-", suffix=suffix,
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # after the writer, which may have made the file anew (safetensors: mode 0600)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` as a whole.

    A previous folder at ``path`` is moved aside first and deleted only after the new one is
    in place, so an interruption leaves one complete folder (old or new); a swap killed
    between the two renames is finished by :func:`recover_dir`, which runs first here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-{_tag()}-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    old = None
    try:
        yield tmp
        mask = _umask()
        for f in tmp.rglob("*"):  # some writers (safetensors) create files 0600
            if f.is_file() and not f.is_symlink():
                os.chmod(f, (f.stat().st_mode | 0o666) & 0o777 & ~mask)
        if path.exists():
            old = path.parent / f".old-{path.name}-{_tag()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if old is not None and old.exists() and not path.exists():
            with contextlib.suppress(OSError):
                os.replace(old, path)  # interrupted between the renames: put the old one back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
