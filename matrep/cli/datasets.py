"""``matrep datasets``: make the built-in synthetic data sets."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import handle_errors, jobs_option, out_option, progress, quiet_option


@click.group("datasets")
def datasets_cmd():
    """Make the built-in synthetic data sets (cast-iron micrographs with known factors)."""


@datasets_cmd.group("make")
def make_cmd():
    """Generate a data set into a folder."""


@make_cmd.command("castiron")
@out_option("Folder to write images/, masks/ and labels.csv into (created).", required=True)
@click.option("--n-micrographs", default=12, type=click.IntRange(min=1),
              help="Number of micrographs; the 4 cooling rates x 3 Mg levels grid is cycled.")
@click.option("--size", default=1024, type=click.IntRange(min=32),
              help="Image edge in pixels (nominal 1 um per pixel).")
@click.option("--seed", default=0, type=int, help="Master seed; same seed, same files.")
@click.option("--graphite-fraction", default=0.10, type=click.FloatRange(0.01, 0.4),
              help="Mean target graphite area fraction.")
@click.option("--e-matrix", "e_matrix", default=210.0, type=click.FloatRange(min=0, min_open=True),
              help="Young's modulus of the ferrite matrix (GPa).")
@click.option("--e-graphite", "e_graphite", default=15.0, type=click.FloatRange(min=0, min_open=True),
              help="Young's modulus of graphite (GPa).")
@click.option("--nu-matrix", default=0.29, type=click.FloatRange(-0.99, 0.49),
              help="Poisson's ratio of the ferrite matrix.")
@click.option("--nu-graphite", default=0.2, type=click.FloatRange(-0.99, 0.49),
              help="Poisson's ratio of graphite.")
@click.option("--tol", default=1e-5, type=click.FloatRange(min=0, min_open=True),
              help="Relative residual at which the elasticity solver stops.")
@jobs_option("Worker processes (default: one per CPU core, at most one per micrograph).",
             default=None)
@quiet_option
@handle_errors
def castiron_cmd(out, n_micrographs, size, seed, graphite_fraction, e_matrix, e_graphite,
                 nu_matrix, nu_graphite, tol, jobs, quiet):
    """Synthetic cast-iron micrographs with known factors and solved elastic properties.

    Writes 8-bit grey micrographs to OUT/images, graphite masks to OUT/masks and, last,
    OUT/labels.csv (factors, mask descriptors, Young's modulus, Poisson's ratio, stress
    concentration, solver residual and iterations).
    """
    from ..datasets import make_castiron

    out = Path(out)
    bar = progress(total=n_micrographs, desc="castiron", quiet=quiet, unit="img")
    last = [0]

    def callback(done, total):
        bar.update(done - last[0])
        last[0] = done

    try:
        make_castiron(out, n_micrographs=n_micrographs, size=size, seed=seed,
                      graphite_fraction=graphite_fraction, E=(e_matrix, e_graphite),
                      nu=(nu_matrix, nu_graphite), tol=tol, n_jobs=jobs, callback=callback)
    finally:
        bar.close()
    click.echo(f"wrote {n_micrographs} micrographs to {out / 'images'}, labels to {out / 'labels.csv'}")


@datasets_cmd.command("path")
@click.option("--generate/--no-generate", default=True,
              help="Generate the default set if it is not cached yet.")
@quiet_option
@handle_errors
def path_cmd(generate, quiet):
    """Print the folder of the default cast-iron set (cached under $MATREP_CACHE or ~/.cache/matrep)."""
    from ..datasets.castiron import _complete, cache_root, default_castiron, default_castiron_name

    folder = cache_root() / "datasets" / default_castiron_name()
    if _complete(folder):
        click.echo(str(folder))
        return
    if not generate:
        raise click.ClickException(f"{folder}: not generated yet; run `matrep datasets path` "
                                   "without --no-generate to make it (under 2 minutes)")
    bar = progress(total=12, desc="castiron (first use)", quiet=quiet, unit="img")
    last = [0]

    def callback(done, total):
        bar.update(done - last[0])
        last[0] = done

    try:
        folder = default_castiron(callback=callback)
    finally:
        bar.close()
    click.echo(str(folder))
