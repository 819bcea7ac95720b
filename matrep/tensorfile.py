"""Reading safetensors files that may be damaged, truncated, or not safetensors at all.

Every safetensors file matrep reads (weights, a model's ``state.safetensors``, a training
checkpoint) goes through :func:`read_tensors` or :func:`read_metadata`, so a pickle renamed
``.safetensors``, an empty or truncated file, or a header that claims more data than the file
holds is one :class:`~matrep.errors.BadInputError` naming the file, never a
``SafetensorError`` traceback. The ``safetensors`` library itself checks that the header's
offsets fit the file before anything is allocated, and it never runs code from the file.
"""

from __future__ import annotations

from pathlib import Path

from .errors import BadInputError

#: what a file starting with these bytes is, for the error message
_MAGIC = (
    (b"PK\x03\x04", "a zip archive (a torch .pth checkpoint?)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x89PNG", "a PNG image"),
    (b"\x93NUMPY", "a numpy .npy file"),
)


def sniff(path) -> str | None:
    """What ``path`` is when it is plainly *not* a safetensors file (else None).

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"\\x80\\x04K\\x01.")
    >>> sniff(f.name)
    'a Python pickle'
    >>> os.unlink(f.name)
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    if not head:
        return "an empty file"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "a Python pickle"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    return None


def _problem(path: Path, exc: BaseException) -> str:
    what = sniff(path)
    if what is not None:
        return f"is {what}, not a safetensors file"
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return f"not a readable safetensors file ({msg})"


def _check_file(path: Path, hint: str) -> None:
    if not path.is_file():
        what = "is a folder, expected a safetensors file" if path.is_dir() else "no such file"
        raise BadInputError(path, what + (f"; {hint}" if hint else ""))


def read_metadata(path, *, hint: str = "") -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file (``{}`` when it has none).

    Parameters
    ----------
    path : str or Path
    hint : str
        What the user can do about a bad file; appended to the error message.

    Raises
    ------
    BadInputError
        Naming ``path``: missing, empty, a pickle/zip/other format, truncated, corrupt header.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _check_file(path, hint)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata()
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as exc:
        raise BadInputError(path, _problem(path, exc) + (f"; {hint}" if hint else "")) from None
    return dict(meta or {})


def read_tensors(path, *, framework: str = "numpy", hint: str = "") -> dict:
    """All tensors of a safetensors file, as numpy arrays (or torch tensors with ``framework="pt"``).

    Raises
    ------
    BadInputError
        Naming ``path``, as :func:`read_metadata`; also for a dtype numpy cannot hold (bf16).
    """
    from safetensors import SafetensorError

    path = Path(path)
    _check_file(path, hint)
    if framework == "pt":
        from safetensors.torch import load_file
    else:
        from safetensors.numpy import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError, MemoryError) as exc:
        raise BadInputError(path, _problem(path, exc) + (f"; {hint}" if hint else "")) from None
