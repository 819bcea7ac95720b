"""matrep: compact, interpretable representations of micrographs, linked to properties.

The way in from Python::

    import matrep
    matrep.list_encoders()                      # installed encoders (entry points)
    enc = matrep.get_encoder("twopoint", n_components=8)
    feats = enc.fit(patches).transform(patches)  # patches: (n, H, W) in [0, 1]
    model = matrep.load_model("runs/NAME")      # a saved encoder (e.g. a texture-VAE)

Importing matrep is light: torch, torchvision, triton and h5py load only when needed.
"""

from ._version import __version__


def list_encoders():
    """Return the installed encoders as a list of :class:`matrep.registry.EncoderInfo`."""
    from .registry import list_encoders as _list

    return _list()


def get_encoder(name, **params):
    """Instantiate the encoder registered as ``name`` with keyword ``params``."""
    from .registry import get_encoder as _get

    return _get(name, **params)


def load_model(path):
    """Load a saved encoder (a folder with ``config.json``), e.g. a trained texture-VAE run."""
    from .registry import load_model as _load

    return _load(path)


__all__ = ["__version__", "list_encoders", "get_encoder", "load_model"]
