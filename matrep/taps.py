"""VGG19's named feature taps: the one table of names, module indices and channel counts.

Tap names follow Simonyan & Zisserman (2015) / Gatys et al. (2015): ``conv{b}_{i}``,
``relu{b}_{i}`` for block ``b`` = 1..5 and layer ``i`` within it, and ``pool{b}`` after each
block. The table is derived from the VGG19 configuration (:data:`matrep.weights.VGG19_CFG`), so
it cannot drift from the network :class:`matrep.backbone.VGG19Backbone` builds. This module
imports no torch: encoders validate taps and size their outputs without loading it.
:mod:`matrep.backbone` re-exports every name.

Example
-------
>>> from matrep.taps import TAP_CHANNELS, tap_shapes
>>> TAP_CHANNELS["relu3_1"], tap_shapes(128)["pool4"]
(256, (512, 8, 8))
"""

from __future__ import annotations

from .errors import BadInputError
from .weights import VGG19_CFG

__all__ = ["STYLE_TAPS", "TAP_NAMES", "TAP_INDEX", "TAP_CHANNELS", "POOLINGS", "tap_shapes",
           "check_taps"]

#: How a feature map becomes per-channel statistics (:func:`matrep.backbone.pool_map`).
POOLINGS = ("mean", "max", "gram_diag", "gram", "meanstd")

#: The paper's style layers (Gatys loss of the texture-VAE): conv1_1 and pool1..pool4. The one
#: definition: ``vgg19`` (``layer="style"``) and ``texturevae`` import it.
STYLE_TAPS = ("conv1_1", "pool1", "pool2", "pool3", "pool4")


def _tap_table():
    """(name, index in vgg19().features, channels) for every layer, in network order."""
    table, idx, block, i = [], 0, 1, 1
    channels = None
    for v in VGG19_CFG:
        if v == "M":
            table.append((f"pool{block}", idx, channels))
            idx += 1
            block, i = block + 1, 1
        else:
            channels = v
            table.append((f"conv{block}_{i}", idx, v))
            table.append((f"relu{block}_{i}", idx + 1, v))
            idx += 2
            i += 1
    return table


_TABLE = _tap_table()
#: All tap names in network order.
TAP_NAMES = tuple(n for n, _, _ in _TABLE)
#: Tap name -> index of the module in ``vgg19().features`` whose output it is.
TAP_INDEX = {n: i for n, i, _ in _TABLE}
#: Tap name -> number of channels, for every tap (the one table; the plugins import it).
TAP_CHANNELS = {n: c for n, _, c in _TABLE}


def tap_shapes(size) -> dict[str, tuple[int, int, int]]:
    """(channels, height, width) of every tap for an input of ``size`` (int or (H, W)).

    >>> tap_shapes((64, 96))["pool2"]
    (128, 16, 24)
    """
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    out = {}
    for name in TAP_NAMES:
        if name.startswith("pool"):
            h, w = h // 2, w // 2
        out[name] = (TAP_CHANNELS[name], h, w)
    return out


def check_taps(taps) -> tuple[str, ...]:
    """Validate tap names; return them as a tuple (order kept, duplicates dropped)."""
    if isinstance(taps, str):
        taps = (taps,)
    taps = tuple(dict.fromkeys(taps))
    if not taps:
        raise BadInputError(None, "taps must name at least one VGG19 layer, e.g. ('pool5',)")
    bad = [t for t in taps if t not in TAP_INDEX]
    if bad:
        raise BadInputError(None, f"unknown VGG19 tap(s) {bad}; valid names: {', '.join(TAP_NAMES)}")
    return taps
