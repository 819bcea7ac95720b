r"""Graphite descriptors measured on a binary phase mask.

Per particle: area :math:`A`, equivalent diameter :math:`d = \sqrt{4A/\pi}`, maximum Feret
diameter :math:`l_m` and the roundness shape factor of ISO 945-4

.. math:: \mathrm{RSF} = \frac{A}{\pi l_m^2 / 4}

(1 for a disc, small for a flake). Per image, in the spirit of ISO 945-4 (automatic image
analysis of graphite in cast iron): particles with RSF >= 0.625 count as form VI (nodular),
0.525 <= RSF < 0.625 as form V, and

.. math:: \text{nodularity} = \frac{\sum A_{VI} + \tfrac12 \sum A_{V}}{\sum A}

over the particles at least ``min_diameter_um`` wide. This is a simplified reading of the
standard (no edge-particle rule, a fixed size cut-off), returned as a fraction in [0, 1].
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import BadInputError

#: ISO 945-4 roundness limits: form VI (nodular) and form V (imperfectly nodular).
RSF_FORM_VI = 0.625
RSF_FORM_V = 0.525

_DIRECTIONS = np.linspace(0.0, np.pi, 48, endpoint=False)
_UNIT = np.stack([np.cos(_DIRECTIONS), np.sin(_DIRECTIONS)], axis=1)  # (n_dir, 2)
_CORNERS = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])


def _max_feret(coords):
    """Max caliper width (px) of the union of the given pixels' squares (48 directions)."""
    pts = (coords[:, None, :] + _CORNERS[None]).reshape(-1, 2)
    proj = pts @ _UNIT.T
    return float((proj.max(axis=0) - proj.min(axis=0)).max())


def particle_table(mask, *, periodic=True, min_area_px=1):
    """Connected graphite particles of a mask (8-connectivity) with their size and shape.

    Parameters
    ----------
    mask : array-like of shape (H, W)
        True/nonzero = graphite.
    periodic : bool
        Treat the image as one period of a periodic structure, so a particle cut by an edge
        and continued on the opposite edge counts once (matrep's synthetic masks are periodic).
    min_area_px : int
        Smaller components are ignored.

    Returns
    -------
    dict of ndarrays, each of shape (n_particles,): ``area`` (px), ``eq_diameter`` (px),
    ``max_feret`` (px), ``roundness`` (ISO 945-4 RSF, clipped to 1).
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise BadInputError(None, f"mask: expected a 2D array, got shape {m.shape}")
    H, W = m.shape
    if periodic:
        py, px = H // 2, W // 2
        work = np.pad(m, ((py, py), (px, px)), mode="wrap")
    else:
        py = px = 0
        work = m
    lab, n = ndimage.label(work, structure=np.ones((3, 3), bool))
    areas, eqd, feret = [], [], []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        r0, c0 = sl[0].start, sl[1].start
        if periodic:
            # each periodic particle has exactly one copy whose top-left corner lies in the
            # central tile; copies cut by the padded border are skipped the same way
            if not (py <= r0 < py + H and px <= c0 < px + W):
                continue
            if sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == work.shape[0] or sl[1].stop == work.shape[1]:
                continue
        rr, cc = np.nonzero(lab[sl] == i)
        a = rr.size
        if a < min_area_px:
            continue
        areas.append(a)
        eqd.append(np.sqrt(4.0 * a / np.pi))
        feret.append(_max_feret(np.stack([rr, cc], axis=1).astype(float)))
    areas = np.asarray(areas, dtype=float)
    feret = np.asarray(feret, dtype=float)
    rsf = np.minimum(areas / (np.pi * np.maximum(feret, 1e-9) ** 2 / 4.0), 1.0) if areas.size else areas
    return {"area": areas, "eq_diameter": np.asarray(eqd, dtype=float), "max_feret": feret,
            "roundness": rsf}


def nodularity(areas, roundness):
    """ISO 945-4 style nodularity (fraction) from particle areas and roundness factors.

    >>> nodularity(np.array([10.0, 10.0, 20.0]), np.array([0.9, 0.55, 0.1]))
    0.375
    """
    areas = np.asarray(areas, dtype=float)
    roundness = np.asarray(roundness, dtype=float)
    total = areas.sum()
    if total == 0:
        return float("nan")
    vi = areas[roundness >= RSF_FORM_VI].sum()
    v = areas[(roundness >= RSF_FORM_V) & (roundness < RSF_FORM_VI)].sum()
    return float((vi + 0.5 * v) / total)


def measure_mask(mask, *, pixel_size_um=1.0, min_diameter_um=5.0, periodic=True):
    """Image-level graphite descriptors of a phase mask.

    Parameters
    ----------
    mask : array-like of shape (H, W)
        True/nonzero = graphite.
    pixel_size_um : float
        Pixel edge length in micrometres.
    min_diameter_um : float
        Particles with a smaller equivalent diameter are left out of the count, mean diameter
        and nodularity (not out of the area fraction), as image-analysis standards do.
    periodic : bool
        See :func:`particle_table`.

    Returns
    -------
    dict with ``graphite_fraction`` (area fraction), ``particle_density`` (particles per mm^2),
    ``mean_eq_diameter`` (um), ``nodularity`` (fraction, ISO 945-4 style), ``n_particles``.

    Examples
    --------
    >>> m = np.zeros((64, 64), bool)
    >>> yy, xx = np.mgrid[:64, :64]
    >>> m[(yy - 32) ** 2 + (xx - 32) ** 2 < 100] = True
    >>> d = measure_mask(m)
    >>> d["n_particles"], d["nodularity"]
    (1, 1.0)
    """
    m = np.asarray(mask).astype(bool)
    tab = particle_table(m, periodic=periodic)
    keep = tab["eq_diameter"] * pixel_size_um >= min_diameter_um
    area_mm2 = m.size * (pixel_size_um * 1e-3) ** 2
    n = int(keep.sum())
    return {
        "graphite_fraction": float(m.mean()),
        "particle_density": n / area_mm2,
        "mean_eq_diameter": float(tab["eq_diameter"][keep].mean() * pixel_size_um) if n else float("nan"),
        "nodularity": nodularity(tab["area"][keep], tab["roundness"][keep]),
        "n_particles": n,
    }
