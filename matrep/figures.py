"""Figures of a generative encoder: reconstructions (paper Fig. 4), samples (Fig. 5) and latent
traversals (Fig. 6), for ``matrep reconstruct``, ``generate``, ``traverse`` and ``interpret``.

Every image is drawn with a grey colormap on a fixed [0, 1] scale (``vmin=0, vmax=1``: the
grey levels are comparable across panels) and ``interpolation="nearest"`` at a resolution that
gives each patch pixel at least one figure pixel, so no smoothing or resampling artefacts are
added. Files are written atomically (``matrep.atomic``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from matrep.atomic import atomic_path

_IMSHOW = dict(cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _dpi(P, inches_per_panel):
    return max(100, int(np.ceil(P / inches_per_panel)))


def _save(fig, out):
    plt = _plt()
    out = Path(out)
    with atomic_path(out, suffix=out.suffix or ".png") as tmp:
        fig.savefig(tmp, dpi=fig.dpi, format=(out.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return out


def _caption(fig, text):
    if text:
        fig.text(0.5, 0.005, "\n".join(_caption_lines(text)), ha="center", va="bottom",
                 fontsize=7)


def _caption_lines(text) -> list:
    """The caption wrapped as :func:`_caption` writes it (no lines for none)."""
    return textwrap.wrap(text, 140) if text else []


def reconstruction_figure(originals, reconstructions, out, *, labels=None, caption=None,
                          pairs_per_row=4):
    """Pairs of original | reconstruction, ``pairs_per_row`` pairs per row.

    Parameters
    ----------
    originals, reconstructions : arrays of shape (n, P, P) in [0, 1]
    out : path of the PNG
    labels : list of n str, optional — written under each pair (e.g. micrograph and style loss)
    caption : str, optional
    """
    plt = _plt()
    n, P = len(originals), originals.shape[-1]
    cols = min(pairs_per_row, n)
    rows = int(np.ceil(n / cols))
    panel = 1.6
    extra = 0.12 * max(0, len(_caption_lines(caption)) - 1)  # inches for further caption lines
    height = rows * (panel + 0.45) + 0.5 + extra
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * panel, height),
                             squeeze=False, dpi=_dpi(P, panel))
    for ax in axes.ravel():
        ax.set_axis_off()
    for i in range(n):
        r, c = divmod(i, cols)
        a, b = axes[r, 2 * c], axes[r, 2 * c + 1]
        a.imshow(originals[i], **_IMSHOW)
        b.imshow(reconstructions[i], **_IMSHOW)
        a.set_title("original", fontsize=7)
        b.set_title("reconstruction", fontsize=7)
        if labels is not None:
            a.text(1.0, -0.04, labels[i], transform=a.transAxes, ha="center", va="top", fontsize=6)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95,
                        bottom=(0.08 * (height - extra) + extra) / height, wspace=0.04, hspace=0.3)
    _caption(fig, caption)
    return _save(fig, out)


def grid_figure(images, out, *, caption=None, cols=None, title=None):
    """A grid of patches (e.g. samples from the prior)."""
    plt = _plt()
    n, P = len(images), images.shape[-1]
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    panel = 1.6
    fig, axes = plt.subplots(rows, cols, figsize=(cols * panel, rows * panel + 0.6), squeeze=False,
                             dpi=_dpi(P, panel))
    for ax in axes.ravel():
        ax.set_axis_off()
    for i in range(n):
        ax = axes.ravel()[i]
        ax.imshow(images[i], **_IMSHOW)
        ax.set_title(f"#{i}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.07, wspace=0.05, hspace=0.2)
    _caption(fig, caption)
    return _save(fig, out)


def traversal_figure(original, rows, dims, values, out, *, caption=None, labels=None):
    """One row per latent dimension: the original patch, then decodings along ``values``.

    Parameters
    ----------
    original : array of shape (P, P)
    rows : array of shape (len(dims), len(values), P, P)
    dims : sequence of int
    values : sequence of float
    labels : list of str, optional — one per row (default ``"dim D"``), e.g.
        ``"dim 17: area fraction ↑"`` from :meth:`matrep.evaluation.TraversalRanking.auto_dims`
    """
    plt = _plt()
    nd, nv, P = rows.shape[0], rows.shape[1], rows.shape[-1]
    panel = 1.3
    left = 0.6 if labels is None else 1.3
    fig, axes = plt.subplots(nd, nv + 1, figsize=((nv + 1) * panel + left, nd * panel + 0.9),
                             squeeze=False, dpi=_dpi(P, panel))
    for i in range(nd):
        axes[i, 0].imshow(original, **_IMSHOW)
        if i == 0:
            axes[i, 0].set_title("original", fontsize=7)
        for j in range(nv):
            ax = axes[i, j + 1]
            ax.imshow(rows[i, j], **_IMSHOW)
            if i == 0:
                ax.set_title(f"z = {values[j]:.2g}", fontsize=7)
        axes[i, 0].set_ylabel(f"dim {dims[i]}" if labels is None else
                              labels[i].replace(": ", ":\n").replace(", ", ",\n"), fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    fig.subplots_adjust(left=0.05 if labels is None else left / fig.get_figwidth(), right=0.99,
                        top=0.92, bottom=0.1, wspace=0.04, hspace=0.06)
    _caption(fig, caption)
    return _save(fig, out)


def write_png(image, out):
    """Write one patch in [0, 1] as an 8-bit grey PNG (atomically)."""
    from PIL import Image

    arr = np.clip(np.rint(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return out


def write_npz(out, **arrays):
    """Write arrays to ``out`` (.npz, no pickle: object arrays are stored as str)."""
    out = Path(out)
    clean = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        clean[k] = v.astype(str) if v.dtype == object else v
    with atomic_path(out, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **clean)
    return out
