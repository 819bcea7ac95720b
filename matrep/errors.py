"""Typed exceptions. Every message says what was expected, what came, and what to do.

The CLI turns any :class:`MatrepError` into a one-line error (no traceback unless
``--debug``); library users can catch them by type.
"""


class MatrepError(Exception):
    """Base class of all errors matrep raises on purpose."""


class BadInputError(MatrepError, ValueError):
    """An input file or folder cannot be used (corrupt, too small, NaN, empty ...).

    The message starts with the offending path, e.g. ``"data/a.png: truncated PNG"``.
    """

    def __init__(self, path, problem):
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class EncoderNotFoundError(MatrepError, KeyError):
    """An encoder name is not registered."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class EncoderContractError(MatrepError, TypeError):
    """A plugin does not satisfy the encoder contract."""


class NotFittedError(MatrepError, RuntimeError):
    """An encoder that needs ``fit`` was used before it."""


class WeightsNotFoundError(MatrepError, FileNotFoundError):
    """No usable pretrained weights were found."""


class UnsafePickleError(MatrepError):
    """A pickle tried to build an object outside the allowed set."""


class StoreError(MatrepError):
    """The HDF5 feature store is missing, corrupt, or inconsistent."""


class LabelsError(MatrepError, ValueError):
    """A labels CSV or a target column cannot be used."""


class TrainingDivergedError(MatrepError, FloatingPointError):
    """A training loss became NaN or inf."""


class LockedError(MatrepError):
    """Another process is writing the same output (its lock is held)."""
