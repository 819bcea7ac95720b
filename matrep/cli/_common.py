"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import errno
import functools
import json
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
                _apply_aliases(kwargs)
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


# ---------------------------------------------------------------------------------------
# the one grammar: options shared by the commands, defined once (docs/cli.md)
# ---------------------------------------------------------------------------------------
quiet_option = click.option(
    "--quiet", "-q", is_flag=True,
    help="No progress bars or progress notes on stderr (results, warnings and errors are "
         "still printed).")


def warn_deprecated(old: str, new: str) -> None:
    """One ``warning:`` line on stderr: the old spelling ``old`` still works, use ``new``."""
    ctx = click.get_current_context(silent=True)
    seen = ctx.meta.setdefault("matrep.deprecated", set()) if ctx is not None else set()
    if old in seen:
        return
    seen.add(old)
    click.echo(f"warning: deprecated spelling {old}: use {new} (the old spelling will be "
               "removed in the next release)", err=True)


_ALIASES = "matrep.aliases"


def deprecated_option(*decls: str, dest: str, new: str, value=None, **kw):
    """A hidden option spelled ``decls`` that sets the parameter ``dest`` as ``new`` would.

    It prints one deprecation line naming ``new``; ``value`` is what ``dest`` receives (default:
    the option's own value). :func:`handle_errors` applies it. Giving both spellings is refused.
    """

    def callback(ctx, param, v):
        if v is None or v is False or v == ():
            return
        warn_deprecated("/".join(decls), new)
        ctx.meta.setdefault(_ALIASES, {})[dest] = (v if value is None else value, decls[0], new)

    return click.option(*decls, hidden=True, expose_value=False, callback=callback, **kw)


def _apply_aliases(kwargs: dict) -> None:
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    for dest, (v, old, new) in ctx.meta.pop(_ALIASES, {}).items():
        if ctx.get_parameter_source(dest) == ParameterSource.COMMANDLINE:
            raise click.UsageError(f"give {new} or the deprecated {old}, not both")
        kwargs[dest] = v
        ctx.meta.setdefault("matrep.alias_given", set()).add(dest)


def given(name: str) -> bool:
    """Whether the parameter ``name`` of the running command was given (by the user, under any
    spelling, or from the environment), not left at its default."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return True
    if name in ctx.meta.get("matrep.alias_given", ()):
        return True
    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT,
                                                  ParameterSource.DEFAULT_MAP)


def resume_option(what: str):
    """``--resume/--no-resume`` (default: resume) and the deprecated ``--restart``."""

    def deco(func):
        func = deprecated_option("--restart", dest="resume", new="--no-resume", value=False,
                                 is_flag=True)(func)
        return click.option("--resume/--no-resume", default=True, show_default=True,
                            help=f"{what} --no-resume starts over, discarding the earlier work.")(func)

    return deco


def held_out_option(func):
    """``--held-out``: only the patches the model(s) held out from training (one option, one
    help text, for every command that measures a trained model)."""
    return click.option(
        "--held-out", is_flag=True,
        help="Draw the patches only from those the model(s) held out from training (the run's "
             "validation split, recorded at fit time); --images and the patching options must "
             "be those of `matrep fit` (checked against the run's fit.json).")(func)


def n_option(default: int, help: str, *, min: int = 1):
    """``-n/--n``: how many (patches, samples, designs)."""
    return click.option("-n", "--n", "n", default=default, type=click.IntRange(min), help=help)


def jobs_option(help: str, default=1):
    """``-j/--jobs``: worker processes."""
    return click.option("-j", "--jobs", "jobs", default=default, type=click.IntRange(1),
                        help=help)


def seed_option(help: str):
    return click.option("--seed", default=0, type=int, help=help)


def param_option(*, per_method: bool = False, example: str = "n_components=8"):
    """``--param KEY=VALUE`` (repeatable); with several methods ``METHOD.KEY=VALUE``."""
    if per_method:
        return click.option(
            "--param", "params", multiple=True, metavar="[METHOD.]KEY=VALUE",
            help="Encoder parameter (repeatable; values parsed as JSON): METHOD.KEY=VALUE, "
                 "e.g. vgg19.layer=pool4; plain KEY=VALUE when one --method is given.")
    return click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                        help="Encoder parameter (repeatable; values parsed as JSON), e.g. "
                             f"{example}.")


def _json_value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def parse_params(pairs) -> dict:
    """``key=value`` strings → dict; values parsed as JSON when possible (``3``, ``true``, ``[1,2]``).

    >>> parse_params(["n=3", "layer=pool4"])
    {'n': 3, 'layer': 'pool4'}
    """
    out = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint="--param")
        k, v = p.split("=", 1)
        out[k.strip()] = _json_value(v)
    return out


def parse_method_params(pairs, methods) -> dict:
    """``vgg19.layer=pool5`` → ``{"vgg19": {"layer": "pool5"}}`` (values parsed as JSON).

    With a single method, ``layer=pool5`` is that method's parameter.

    >>> parse_method_params(["vgg19.layer=pool5", "twopoint.n_components=8"], ["vgg19", "twopoint"])
    {'vgg19': {'layer': 'pool5'}, 'twopoint': {'n_components': 8}}
    >>> parse_method_params(["layer=pool5"], ["vgg19"])
    {'vgg19': {'layer': 'pool5'}}
    """
    out: dict = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"expected METHOD.KEY=VALUE, got {p!r}", param_hint="--param")
        k, v = p.split("=", 1)
        if "." in k:
            name, key = k.split(".", 1)
        elif len(methods) == 1:
            name, key = methods[0], k
        else:
            raise click.BadParameter(f"expected METHOD.KEY=VALUE with several methods, got {p!r}",
                                     param_hint="--param")
        name = name.strip()
        if name not in methods:
            raise click.BadParameter(f"{p!r} names {name!r}, which is not one of the methods "
                                     f"({', '.join(methods)})", param_hint="--param")
        out.setdefault(name, {})[key.strip()] = _json_value(v)
    return out


def model_option(help: str = "A trained run folder (matrep fit --out).", *, required=True,
                 multiple=False, metavar="PATH"):
    """``--model PATH``: a saved model folder (``matrep fit --out``)."""
    return click.option("--model", "models" if multiple else "model", required=required,
                        multiple=multiple, metavar=metavar,
                        type=click.Path(exists=True, file_okay=False)
                        if metavar == "PATH" else None, help=help)


def images_option(help: str = "Folder, glob pattern or file of micrographs (repeatable).",
                  required: bool = True):
    return click.option("--images", "images", required=required, multiple=True, help=help)


def labels_option(help: str, required: bool = False):
    return click.option("--labels", default=None, required=required,
                        type=click.Path(exists=True, dir_okay=False), help=help)


file_column_option = click.option("--file-column", default="file",
                                  help="Column of --labels naming the image files.")


def out_option(help: str, *, default=None, required: bool = False, file_form: bool = False,
               metavar: str = "FOLDER"):
    """``--out FOLDER``: every command writes into a folder.

    ``file_form``: the command also accepts the path of its one output file (see
    :func:`out_file`), so the option's type allows a file.
    """
    return click.option("--out", "out", default=default, required=required,
                        type=click.Path(file_okay=file_form), metavar=metavar, help=help)


def out_file(out, name: str, suffixes: tuple, *, deprecated: bool = True) -> Path:
    """The file a command writes in the folder ``out``: ``out/name``.

    A file form of ``out`` (ending in one of ``suffixes``, or an existing file) is used as
    given; with ``deprecated`` it prints one deprecation line. Commands call this when they
    write, after their input checks, so a refused input gives only its one error line.
    """
    out = Path(out)
    if out.suffix.lower() in suffixes or out.is_file():
        if deprecated:
            warn_deprecated(f"--out FILE ({out.name})",
                            f"--out FOLDER (the command writes FOLDER/{name})")
        return out
    return out / name


def parse_crop(value):
    if value is None:
        return None
    parts = value.replace(" ", "").split(",")
    if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
        raise click.BadParameter(f"expected TOP,LEFT,HEIGHT,WIDTH (4 integers), got {value!r}",
                                 param_hint="--crop")
    return tuple(int(p) for p in parts)


def window_options(func=None, *, stride: int = 50):
    """--stride, --crop and --crop-bottom (for commands whose patch size comes from a model);
    ``@window_options`` or ``@window_options(stride=128)`` for another default stride."""
    if func is None:
        return lambda f: window_options(f, stride=stride)
    opts = [
        click.option("--stride", default=stride, type=click.IntRange(1), show_default=True,
                     help="Sliding-window stride."),
        click.option("--crop", default=None, metavar="TOP,LEFT,HEIGHT,WIDTH",
                     help="Crop box applied to every image before patching (default: none)."),
        click.option("--crop-bottom", default=0, type=click.IntRange(0),
                     help="Rows removed at the bottom first (UHCS data bar: 38)."),
    ]
    for o in reversed(opts):
        func = o(func)
    return func


def patch_options(func=None, *, images_required: bool = True, images_help: str = ""):
    """The patching options shared by commands that read micrographs: --images, --patch,
    --stride, --crop, --crop-bottom, --skip-bad.

    ``@patch_options`` or ``@patch_options(images_required=False, images_help="...")`` (the
    command then checks that it has images).
    """
    if func is None:
        return lambda f: patch_options(f, images_required=images_required,
                                       images_help=images_help)
    func = click.option("--skip-bad", is_flag=True,
                        help="Skip unreadable or too-small images and list them at the end.")(func)
    func = window_options(func)
    func = click.option("--patch", default=128, type=click.IntRange(8),
                        help="Patch size in pixels.")(func)
    return images_option("Folder, glob pattern or file of micrographs (repeatable)."
                         + (f" {images_help}" if images_help else ""),
                         required=images_required)(func)


def read_patchset(images, patch, stride, crop, crop_bottom, skip_bad, quiet, lazy=False, **kw):
    """Read the patches of ``images`` as the patching options say (a :class:`PatchSet`)."""
    from ..io import load_patches

    imgs = list(images) if len(images) > 1 else images[0]
    if lazy:  # patch records now, pixels when encoded (matrep.patchsource)
        from ..patchsource import lazy_patches

        load_patches = lazy_patches
    return load_patches(imgs, patch=patch, stride=stride, crop=parse_crop(crop),
                        crop_bottom=crop_bottom, skip_bad=skip_bad,
                        progress=lambda it: progress(it, desc="read", quiet=quiet), **kw)


def report_skipped(ps):
    for path, problem in ps.skipped:
        click.echo(f"skipped {path}: {problem}", err=True)
