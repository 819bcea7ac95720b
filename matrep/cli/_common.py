"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import functools
import sys

import click

from ..errors import MatrepError


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.obj and ctx.obj.get("debug"):
            return True
        ctx = ctx.parent
    return False


def handle_errors(func):
    """Turn matrep's typed errors into one-line ``click`` errors (tracebacks with --debug)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MatrepError as exc:
            if _debug():
                raise
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            if _debug():
                raise
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def progress(iterable=None, *, total=None, desc="", quiet=False, **kwargs):
    """A tqdm progress bar on stderr, silent with ``quiet``."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=quiet, file=sys.stderr,
                dynamic_ncols=True, leave=False, **kwargs)


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
