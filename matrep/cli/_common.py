"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import errno
import functools
import sys
import warnings
from pathlib import Path

import click

from ..errors import MatrepError


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.obj and ctx.obj.get("debug"):
            return True
        ctx = ctx.parent
    return False


_OS_PROBLEMS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "not a folder (a part of this path is a file)",
    errno.EISDIR: "is a folder, expected a file",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EEXIST: "already exists",
    errno.ENOENT: "no such file or folder",
    errno.ELOOP: "too many levels of symbolic links (a link loop?)",
    errno.ENAMETOOLONG: "file name too long",
}


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the path it concerns and the problem, e.g.
    ``"out/f.h5: permission denied"``.

    >>> os_error_line(PermissionError(errno.EACCES, "Permission denied", "ro/f.h5"))
    'ro/f.h5: permission denied'
    """
    name = exc.filename2 if exc.filename2 is not None else exc.filename
    problem = _OS_PROBLEMS.get(exc.errno) or exc.strerror or " ".join(str(exc).split())
    if name is None:
        return " ".join(str(exc).split()) or type(exc).__name__
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # mkdir/open below something that is a file
        for part in [Path(str(name)), *Path(str(name)).parents]:
            if part.is_file():
                where = "" if str(part) == str(name) else f" (needed for {name})"
                return f"{part}: is a file where a folder is needed{where}"
    if exc.errno == errno.ENOENT and Path(str(name)).is_dir():
        return f"{name}: cannot create files in this folder"
    return f"{name}: {problem}"


_SHOWN: set = set()
_DEPTH = [0]


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one ``warning: ...`` line on stderr (no source line), each text once."""
    text = " ".join(str(message).split())
    if text in _SHOWN:
        return
    _SHOWN.add(text)
    click.echo(f"warning: {text}", err=True)


def handle_errors(func):
    """Turn matrep's typed errors and OS errors into one-line ``click`` errors (tracebacks with
    --debug), and print warnings as one line each."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if _DEPTH[0] == 0:
            _SHOWN.clear()
        _DEPTH[0] += 1
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return func(*args, **kwargs)
        except MatrepError as exc:
            if _debug():
                raise
            raise click.ClickException(" ".join(str(exc).split())) from None
        except OSError as exc:  # an output folder that is read-only, or a file in its path ...
            if _debug():
                raise
            raise click.ClickException(os_error_line(exc)) from None
        except KeyboardInterrupt:
            if _debug():
                raise
            click.echo("interrupted", err=True)
            sys.exit(130)
        finally:
            _DEPTH[0] -= 1

    return wrapper


def progress(iterable=None, *, total=None, desc="", quiet=False, **kwargs):
    """A tqdm progress bar on stderr, silent with ``quiet``."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=quiet, file=sys.stderr,
                dynamic_ncols=True, leave=False, **kwargs)


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
