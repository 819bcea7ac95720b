"""`matrep fit`: train an encoder through the registry and save it to a run folder.

Any trainable encoder trains through the registry (``matrep.get_encoder``) and receives a
:class:`matrep.encoder.FitContext` (run folder, resume, patch records, progress); encoders
flagged ``checkpoints`` (the texture-VAE) checkpoint into the run folder, and running the
command again continues the run (``--resume``, the default; docs/cli.md).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from ._common import given as option_given
from ._common import (handle_errors, out_option, param_option, parse_crop, parse_params,
                      patch_options, quiet_option, read_patchset, report_skipped, resume_option)
from ._scale import report_scale, scale_options, to_options

FIT_JSON = "fit.json"


def _floats(value, name):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}",
                                 param_hint=name) from None


def _echo(quiet):
    return (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))


@click.command("fit")
@click.option("--method", default="texturevae", help="Encoder to train (see `matrep encoders`).")
@click.option("--preset", default=None, metavar="NAME",
              help="A named training configuration the method declares (texturevae: 'paper', "
                   "the paper's configuration and the default, meant for GPUs; 'quick', trains "
                   "in <= 20 min on 2 CPU cores, see docs/texturevae.md). It sets parameters and "
                   "patching; options given explicitly override it.")
@patch_options(images_required=False,
               images_help="Required, except when resuming a run (default: the run's fit.json).")
@scale_options
@out_option("Run folder: checkpoints, log.csv, and the final model (config.json + "
            "state.safetensors) for `--model`.", required=True)
@click.option("--latent-dim", type=int, default=None,
              help="Latent size (texturevae: 8/16/32/64; default 64).")
@click.option("--epochs", type=click.IntRange(0), default=None, help="Epochs (texturevae default 20).")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Patches per step (texturevae default 16).")
@click.option("--lr", type=float, default=None, help="Adam learning rate (texturevae default 1e-3).")
@click.option("--kl-weight", type=float, default=None,
              help="Weight of the KL term: loss = style + KL_WEIGHT * KL (texturevae default 1e-2).")
@click.option("--layer-weights", default=None, metavar="W1,W2,...",
              help="Style-loss weight per layer conv1_1,pool1..pool4 (default: all 1).")
@click.option("--seed", type=int, default=None, help="Seed of split, data order and noise (default 0).")
@click.option("--device", default=None, help="auto (CUDA when present), cpu, cuda, cuda:1 ... (default auto).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=None,
              help="auto: bf16 autocast on GPU, fp32 on CPU (default auto).")
@click.option("--weights", default=None,
              help="VGG19 weights source: auto, torchvision, gatys, imported, or a file "
                   "(see `matrep weights`; default auto).")
@click.option("--checkpoint-every", type=click.IntRange(1), default=None,
              help="Also checkpoint every N steps (always at the end of each epoch).")
@click.option("--max-patches", type=click.IntRange(1), default=None,
              help="Train on a seeded random subset of at most N training patches.")
@param_option(example="val_split=micrograph")
@resume_option("Continue the run in --out from its last checkpoint when it has one (options not "
               "given are taken from the run's fit.json; the texture-VAE refuses settings that "
               "change the training, such as another --lr, while --epochs may grow). "
               "Works with another --nproc.")
@click.option("--nproc", type=click.IntRange(1), default=1,
              help="Train with DistributedDataParallel on N processes of this machine (re-runs "
                   "the command under torchrun; on GPUs one process per GPU). For several "
                   "machines start torchrun yourself (docs/distributed.md).")
@click.option("--lr-scaling", type=click.Choice(["none", "linear"]), default=None,
              help="With several processes: none = --batch-size is the global batch and the "
                   "learning rate is unchanged (same result as 1 process); linear = --batch-size "
                   "per process and lr x N (default none).")
@quiet_option
@handle_errors
def fit_cmd(method, preset, images, patch, stride, crop, crop_bottom, skip_bad, out, latent_dim,
            epochs, batch_size, lr, kl_weight, layer_weights, seed, device, precision, weights,
            checkpoint_every, max_patches, params, resume, nproc, lr_scaling, quiet, scale):
    """Train an encoder on micrographs and save it to a run folder.

    Example (the quick CPU configuration of docs/texturevae.md, used by `make demo`):

    \b
        matrep fit --method texturevae --preset quick \\
            --images "$(matrep datasets path)/images" --out runs/quick

    Ctrl-C writes a checkpoint; running the command again continues it (`--resume`, the
    default) with the same losses as an uninterrupted run; `--no-resume` deletes the checkpoint
    and starts over. A NaN/inf loss stops with the last good checkpoint intact.

    `--nproc N` (or `torchrun --nproc-per-node N -m matrep fit ...`) trains with
    DistributedDataParallel (gloo on CPU, NCCL on GPUs); only process 0 writes.
    """
    import sys

    from .. import distributed

    if nproc > 1 and not distributed.in_torchrun():
        argv = sys.argv[1:]
        if "fit" not in argv:
            raise click.ClickException("--nproc re-runs the command line under torchrun; call "
                                       "`matrep fit --nproc N ...` from a shell, or start "
                                       "`torchrun --nproc-per-node N -m matrep fit ...` yourself")
        sys.exit(distributed.launch(nproc, distributed.strip_option(argv, "--nproc")))
    if not distributed.in_torchrun():
        return _fit(method, preset, images, patch, stride, crop, crop_bottom, skip_bad, out,
                    latent_dim,
                    epochs, batch_size, lr, kl_weight, layer_weights, seed, device, precision,
                    weights, checkpoint_every, max_patches, params, resume, lr_scaling, quiet,
                    distributed.SINGLE, scale=scale)
    dist = distributed.init(device=device or "auto")
    try:
        if nproc > 1 and nproc != dist.world_size and dist.is_main:
            click.echo(f"warning: --nproc {nproc} ignored: already running under torchrun with "
                       f"{dist.world_size} processes", err=True)
        return _fit(method, preset, images, patch, stride, crop, crop_bottom, skip_bad, out,
                    latent_dim,
                    epochs, batch_size, lr, kl_weight, layer_weights, seed, device, precision,
                    weights, checkpoint_every, max_patches, params, resume, lr_scaling,
                    quiet or not dist.is_main, dist, scale=scale)
    finally:
        distributed.destroy(dist)


def _fit(method, preset, images, patch, stride, crop, crop_bottom, skip_bad, out, latent_dim,
         epochs, batch_size, lr, kl_weight, layer_weights, seed, device, precision, weights,
         checkpoint_every, max_patches, params, resume, lr_scaling, quiet, dist, scale=None):
    from .. import registry
    from ..distributed import scaling_rule

    given = {"latent_dim": latent_dim, "epochs": epochs, "batch_size": batch_size, "lr": lr,
             "kl_weight": kl_weight, "layer_weights": _floats(layer_weights, "--layer-weights"),
             "seed": seed, "device": device, "precision": precision, "weights": weights,
             "checkpoint_every": checkpoint_every, "max_patches": max_patches,
             "lr_scaling": lr_scaling}
    given = {k: v for k, v in given.items() if v is not None}
    given.update(parse_params(params))
    out = Path(out)
    from ..atomic import recover_dir

    recover_dir(out / "checkpoint")  # a checkpoint swap killed between its two renames
    explicit = option_given("resume")
    has_checkpoint = (out / "checkpoint").is_dir()
    restart = not resume and explicit and has_checkpoint  # --no-resume: start over
    if resume and not explicit and not has_checkpoint:
        resume = False  # the default: resume when there is something to resume
    if resume:
        saved = _resume_options(out, method=method, images=images, patch=patch, stride=stride,
                                crop=crop, crop_bottom=crop_bottom, skip_bad=skip_bad)
        method, images, patch, stride = (saved["method"], saved["images"], saved["patch"],
                                         saved["stride"])
        crop, crop_bottom, skip_bad = saved["crop"], saved["crop_bottom"], saved["skip_bad"]
        given = {**saved["params"], **given}
    elif not images:
        raise click.UsageError("Missing option '--images'.")

    cls = registry.encoder_class(method)
    if preset is not None:  # on resume the run's recorded patching stays
        p2, s2, given = _apply_preset(cls, method, preset, patch, stride, given)
        if not resume:
            patch, stride = p2, s2
    if not getattr(cls, "trainable", False):
        raise click.ClickException(f"encoder {method!r} is not trainable; use `matrep encode "
                                   f"--method {method}` directly")
    valid = set(cls().get_params(deep=False))
    unknown = sorted(set(given) - valid)
    if unknown:
        raise click.ClickException(f"encoder {method!r} has no parameter(s) {', '.join(unknown)}; "
                                   f"it takes: {', '.join(sorted(valid))}")
    enc = registry.get_encoder(method, **given)
    # a resumed run keeps the scale it was started at (recorded in fit.json)
    opts = to_options(scale, models=[out] if resume else [], quiet=quiet)
    ps = read_patchset(images, patch, stride, crop, crop_bottom, skip_bad, quiet, scale=opts)
    report_skipped(ps)
    report_scale(ps, quiet)
    log = _echo(quiet)
    log(f"{len(ps)} patches of {patch}x{patch} from {len(ps.files)} micrographs")
    main = dist.is_main
    if dist.is_distributed:
        log(f"training on {dist.world_size} processes ({dist.backend}, {dist.device})")
    from ..atomic import atomic_write_text
    from ..encoder import FitContext, _jsonable, fit_encoder

    record = {"method": method, "preset": preset, "params": _jsonable(given),
              "patches": {"images": [str(i) for i in images], "patch": patch,
                          "stride": stride, "crop": parse_crop(crop),
                          "crop_bottom": crop_bottom,
                          # the scale the model is trained at: encode applies it
                          "scale_um_per_px": ps.scale.target_um_per_px,
                          "pixel_sizes": ps.scale.summary()}}
    if getattr(cls, "checkpoints", False):  # the declared flag (matrep.encoder)
        if restart and main:
            import shutil

            shutil.rmtree(out / "checkpoint")
            click.echo(f"warning: --no-resume: deleted the checkpoint in {out}; training starts "
                       "over", err=True)
        dist.barrier()
        if resume and not explicit:
            log(f"continuing the run in {out} from its checkpoint (--no-resume starts over)")
        p = enc.get_params(deep=False)
        if "batch_size" in p and "lr" in p:
            record["distributed"] = scaling_rule(p["batch_size"], p["lr"], dist.world_size,
                                                 p.get("lr_scaling", "none")).to_dict()
            record["distributed"]["backend"] = dist.backend
        if resume and not (out / "checkpoint").is_dir():
            raise click.ClickException(f"{out} holds no checkpoint to resume from; start "
                                       "without --resume (or with --no-resume)")
        record["patches"]["skip_bad"] = bool(skip_bad)
        context = FitContext.from_patchset(ps, run_dir=out, resume=resume, quiet=quiet, log=log)
        with _run_folder(out, record, main=main):
            enc.fit(ps.patches, context=context)
    else:
        if resume and explicit:
            raise click.ClickException(f"encoder {method!r} does not checkpoint; run without "
                                       "--resume")
        fit_encoder(enc, ps.patches, FitContext.from_patchset(ps, quiet=quiet, log=log))
        if main:
            enc.save(out)
            atomic_write_text(out / FIT_JSON, json.dumps(record, indent=2))
        dist.barrier()
    if not main:
        return
    hist = getattr(enc, "history_", None)
    if hist:
        click.echo(training_summary(hist, getattr(enc, "best_epoch_", None)), err=True)
    click.echo(f"model saved to {out} (load it with --model {out})")


def training_summary(history, best=None) -> str:
    """One line on the held-out style loss: before training and of the saved model; ``best``
    is the saved model's epoch when the encoder keeps its best epoch (``best_epoch_``)."""
    first, last = history[0].get("val_style"), history[-1].get("val_style")
    n = history[-1].get("epoch")
    kept = [h for h in history if best is not None and h.get("epoch") == best]
    if kept and best != n:
        return (f"held-out style loss: {first:.4g} before training -> "
                f"{kept[0].get('val_style'):.4g} at epoch {best} (the saved model; epoch {n}, "
                f"the last, had {last:.4g})")
    return f"held-out style loss: {first:.4g} before training -> {last:.4g} after {n} epochs"


def _apply_preset(cls, method, preset, patch, stride, given):
    """Merge the encoder's declared preset ``preset`` under the options given explicitly.

    An encoder declares presets as a class attribute ``presets = {name: {"params": {...},
    "patching": {"patch": P, "stride": S}, "description": str}}``. Returns the patch size,
    stride and encoder parameters to use.
    """
    from click.core import ParameterSource

    presets = getattr(cls, "presets", None) or {}
    if preset not in presets:
        raise click.BadParameter(
            f"encoder {method!r} has no preset {preset!r}; it has: "
            f"{', '.join(sorted(presets)) or 'none'}", param_hint="--preset")
    spec = presets[preset]
    ctx = click.get_current_context(silent=True)

    def explicit(name):
        src = ctx.get_parameter_source(name) if ctx is not None else None
        return src not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)

    patching = spec.get("patching", {})
    if "patch" in patching and not explicit("patch"):
        patch = int(patching["patch"])
    if "stride" in patching and not explicit("stride"):
        stride = int(patching["stride"])
    return patch, stride, {**spec.get("params", {}), **given}


def _resume_options(out: Path, **cli) -> dict:
    """The options of a resumed run: those given on the command line, the rest from fit.json.

    ``cli`` holds the command's method, images, patch, stride, crop, crop_bottom and skip_bad;
    click tells which of them were given. Returns them (``crop`` as the option's string) and
    ``params``, the encoder parameters recorded in fit.json.

    Raises
    ------
    BadInputError
        fit.json is not a JSON object of the form fit writes (naming the file and the entry).
    """
    from click.core import ParameterSource

    from ..errors import BadInputError

    ctx = click.get_current_context(silent=True)

    def given(name):
        src = ctx.get_parameter_source(name) if ctx is not None else ParameterSource.COMMANDLINE
        return src not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)

    path = out / FIT_JSON
    fix = ("; restore it, or delete it and give the run's options (--images, --patch, "
           "--stride ...) again")
    out_opts = dict(cli, params={})
    if not path.is_file():
        if not cli["images"]:
            raise click.UsageError(f"{out} has no {FIT_JSON} to take --images from; give "
                                   "--images (and the run's other options)")
        return out_opts
    try:
        rec = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(path, f"corrupt run record, not JSON ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())}){fix}") from None
    except OSError as exc:
        raise BadInputError(path, f"cannot be read ({exc.strerror or exc})") from None

    def bad(what):
        return BadInputError(path, f"{what}, not what `matrep fit` writes{fix}")

    if not isinstance(rec, dict):
        raise bad(f"holds a JSON {type(rec).__name__} instead of an object")
    method, params = rec.get("method"), rec.get("params", {})
    if not isinstance(method, str) or not method:
        raise bad("has no 'method' string")
    if not isinstance(params, dict):
        raise bad("'params' is not an object")
    pat = rec.get("patches", {})
    if not isinstance(pat, dict):
        raise bad("'patches' is not an object")

    def is_int(v, lo):
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo

    checks = {"images": lambda v: isinstance(v, list) and v and all(isinstance(i, str) for i in v),
              "patch": lambda v: is_int(v, 8), "stride": lambda v: is_int(v, 1),
              "crop": lambda v: v is None or (isinstance(v, list) and len(v) == 4
                                              and all(is_int(i, -2**62) for i in v)),
              "crop_bottom": lambda v: is_int(v, 0), "skip_bad": lambda v: isinstance(v, bool)}
    for name, ok in checks.items():
        if name in pat and not ok(pat[name]):
            raise bad(f"'patches.{name}' is {pat[name]!r}")
    if given("method") and cli["method"] != method:
        raise click.ClickException(f"{out} was trained with --method {method}, not "
                                   f"{cli['method']}")
    out_opts.update(method=method, params=params)
    for name in ("images", "patch", "stride", "crop", "crop_bottom", "skip_bad"):
        if name in pat and not given(name):
            v = pat[name]
            out_opts[name] = (tuple(v) if name == "images" else
                              ",".join(map(str, v)) if name == "crop" and v is not None else v)
    if not out_opts["images"]:
        raise bad("has no 'patches.images' list; give --images")
    return out_opts


@contextlib.contextmanager
def _run_folder(out: Path, record: dict, *, main: bool):
    """Write fit.json and train in the run folder ``out``, holding its lock.

    If training fails: a fit.json this run wrote goes back to what it was unless a new
    checkpoint was written, no fit.json stays without a checkpoint, and a folder this run
    created and left without a checkpoint is removed. Another ``fit`` training into ``out``
    is refused (:class:`matrep.errors.LockedError`).
    """
    if not main:
        yield
        return
    import shutil

    from ..atomic import atomic_write_bytes, atomic_write_text, lock
    from ..errors import LockedError

    existed = out.exists()
    fit_json = out / FIT_JSON
    before = fit_json.read_bytes() if fit_json.is_file() else None
    ck = out / "checkpoint" / "checkpoint.json"

    def ck_state():
        try:
            st = ck.stat()
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    ck_before = ck_state()
    try:
        held = lock(out / "fit", wait=False)
        held.__enter__()
    except LockedError:
        raise LockedError(f"{out}: another `matrep fit` is training in this run folder; wait "
                          "for it to finish or choose another --out") from None
    try:
        atomic_write_text(fit_json, json.dumps(record, indent=2))
        yield
    except BaseException:
        now = ck_state()
        if now is None and not existed:
            shutil.rmtree(out, ignore_errors=True)
        elif now is None:
            fit_json.unlink(missing_ok=True)
        elif now == ck_before:  # no new checkpoint: the run's record stays as it was
            if before is None:
                fit_json.unlink(missing_ok=True)
            else:
                atomic_write_bytes(fit_json, before)
        raise
    finally:
        held.__exit__(None, None, None)
