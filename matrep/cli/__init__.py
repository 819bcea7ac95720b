"""The ``matrep`` command line: a thin layer over the library.

Commands live in small modules and are imported only when used, so ``matrep --help`` stays
fast and works even when a plugin is broken. Library errors (:class:`matrep.errors.MatrepError`)
become one-line messages; ``--debug`` shows the traceback instead. Every command follows one
grammar (docs/cli.md); the options it shares with others are defined once in ``_common.py``
and ``_scale.py``.
"""

from __future__ import annotations

import importlib

import click

from .._version import __version__

# command name -> (module, attribute, one-line help shown by `matrep --help`)
COMMANDS = {
    "encoders": ("matrep.cli.encode", "encoders_cmd", "List the installed encoders."),
    "encode": ("matrep.cli.encode", "encode_cmd", "Encode micrographs into an HDF5 feature store."),
    "weights": ("matrep.cli.weights", "weights_cmd", "List or import pretrained VGG19 weights."),
    "datasets": ("matrep.cli.datasets", "datasets_cmd", "Make the built-in synthetic data sets."),
    "fit": ("matrep.cli.fit", "fit_cmd", "Train an encoder (e.g. the texture-VAE) on micrographs."),
    "reconstruct": ("matrep.cli.model", "reconstruct_cmd", "Figure of patches and their reconstructions."),
    "generate": ("matrep.cli.model", "generate_cmd", "Sample new microstructures from a trained model."),
    "traverse": ("matrep.cli.model", "traverse_cmd", "Latent traversal figure of a trained model."),
    "compare": ("matrep.cli.compare", "compare_cmd", "Structure-property study across encoders."),
    "evaluate": ("matrep.cli.evaluate", "evaluate_cmd", "Texture similarity of reconstructions (STSIM-2, DISTS)."),
    "interpret": ("matrep.cli.evaluate", "interpret_cmd", "Correlate latent dimensions with known factors."),
    "design": ("matrep.cli.design", "design_cmd", "Design microstructures with target properties, checked by physics."),
}


class LazyGroup(click.Group):
    """A click group whose commands are imported on first use."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                               "show_default": True})
@click.version_option(__version__, "--version", prog_name="matrep")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx, debug):
    """matrep: learn compact, interpretable representations of micrographs.

    Turn a folder of micrographs into feature vectors (texture-VAE, VGG19, two-point
    statistics), train a texture-VAE, generate microstructures, and link features to
    properties. Run `matrep COMMAND --help` for each command's options.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
