"""Synthetic cast-iron micrographs with known factors and physics-computed properties.

Each micrograph is a periodic field of dark graphite particles in a light ferrite matrix,
rendered like an optical micrograph (soft edges, textured graphite, faint ferrite grain
boundaries, polishing specks, uneven illumination, acquisition noise). Its phase mask is
measured (:mod:`.descriptors`) and homogenized (:mod:`.homogenization`): the properties in
``labels.csv`` come from solving plane-strain elasticity on the mask, not from a formula of
the generator's knobs.

Factors (the paper's design: 4 cooling rates x 3 Mg levels)
-----------------------------------------------------------
- ``cooling_rate_k_s``: faster cooling gives more, smaller graphite particles at a nearly
  constant graphite fraction, so large particles are sparse (mean equivalent diameter
  ``40 um * (cooling_rate / 0.5 K/s) ** -0.5``: 40, 28, 20, 14 um).
- ``mg_wt_pct``: residual magnesium sets the graphite morphology; the target nodularity is a
  logistic function of Mg (about 0.1 at 0.015 %: flake, 0.5 at 0.03 %: vermicular/compacted,
  0.95 at 0.05 %: nodular), following the qualitative practice of ductile and compacted
  graphite iron foundries.

These mappings are synthetic and qualitative; the nominal pixel size is 1 um.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..atomic import atomic_dir, atomic_path, atomic_write_text
from ..errors import BadInputError
from ..labels import columns_path, write_bookkeeping_columns
from .descriptors import measure_mask
from .homogenization import DEFAULT_E, DEFAULT_NU, effective_elasticity

#: Bump when the generator's output changes: the cache folder name includes it.
GENERATOR_VERSION = 1

COOLING_RATES_K_S = (0.5, 1.0, 2.0, 4.0)
MG_LEVELS_WT_PCT = (0.015, 0.03, 0.05)
PIXEL_SIZE_UM = 1.0

#: Columns of labels.csv, in order.
LABEL_COLUMNS = (
    "file", "mask_file", "micrograph", "seed",
    # factors
    "cooling_rate_k_s", "mg_wt_pct", "target_nodularity", "target_eq_diameter_um",
    "target_graphite_fraction", "target_particle_density",
    # measured on the mask
    "graphite_fraction", "particle_density", "mean_eq_diameter", "nodularity", "n_particles",
    # mechanics
    "youngs_modulus_gpa", "poisson_ratio", "stress_concentration",
    "solver_residual", "solver_iterations", "pixel_size_um",
)
#: Columns of labels.csv that are bookkeeping, never a factor or a target: declared in
#: ``labels.columns.json`` beside it (:func:`matrep.labels.bookkeeping_columns`).
BOOKKEEPING_COLUMNS = ("file", "mask_file", "micrograph", "seed", "solver_residual",
                       "solver_iterations", "pixel_size_um")


def target_eq_diameter_um(cooling_rate_k_s):
    """Mean graphite equivalent diameter (um) for a cooling rate (K/s)."""
    return 40.0 * (float(cooling_rate_k_s) / 0.5) ** -0.5


def target_nodularity(mg_wt_pct):
    """Target nodularity (fraction of nodular graphite) for a residual Mg content (wt%)."""
    return float(1.0 / (1.0 + np.exp(-(float(mg_wt_pct) - 0.03) / 0.0068)))


@dataclass(frozen=True)
class Factors:
    """The known generating factors of one micrograph."""

    cooling_rate_k_s: float
    mg_wt_pct: float
    graphite_fraction: float = 0.10

    @property
    def nodularity(self):
        return target_nodularity(self.mg_wt_pct)

    @property
    def eq_diameter_um(self):
        return target_eq_diameter_um(self.cooling_rate_k_s)


# --------------------------------------------------------------------------- geometry

def _smooth_noise(rng, shape, sigma, std=1.0):
    """Gaussian random field with correlation length ``sigma`` px and standard deviation ``std``."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    s = f.std()
    return f * (std / s) if s > 0 else f


def _centerline(rng, length, degeneracy, n):
    """Polyline (n, 2) of arc length ``length`` centred on 0, curvier for vermicular shapes."""
    if length <= 0:
        return np.zeros((1, 2))
    s = np.linspace(0.0, length, n)
    # heading = smooth random function of arc length; vermicular (d ~ 0.5) bends most
    bend = 1.6 * np.exp(-((degeneracy - 0.45) / 0.3) ** 2) + 0.35
    k = np.arange(1, 4)
    amp = rng.standard_normal(3) * bend / k
    ph = rng.uniform(0, 2 * np.pi, 3)
    theta = rng.uniform(0, np.pi) + (amp[:, None] * np.sin(np.pi * k[:, None] * s[None] / length + ph[:, None])).sum(0)
    step = np.diff(s, prepend=0.0)
    pts = np.cumsum(np.stack([np.cos(theta) * step, np.sin(theta) * step], axis=1), axis=0)
    return pts - pts.mean(axis=0)


def _particle_field(rng, pts, halfwidth, taper, pad=3.0):
    """Signed "inside depth" of a swept disc: ``w(s) - dist(x, centreline)`` on a local grid.

    Returns (field (h, w) float32, row0, col0, depth ratio (h, w)) with the integer box origin
    in the particle's own coordinates (the caller adds the position and wraps). Computed one
    segment at a time on the segment's own small box, so long flakes stay cheap.
    """
    reach = halfwidth + pad
    lo = np.floor(pts.min(axis=0) - reach).astype(int)
    hi = np.ceil(pts.max(axis=0) + reach).astype(int) + 1
    shape = tuple(hi - lo)
    field = np.full(shape, -pad - 1.0, np.float32)
    ratio = np.zeros(shape, np.float32)
    if len(pts) == 1:
        ys = np.arange(lo[0], hi[0]) + 0.5 - pts[0, 0]
        xs = np.arange(lo[1], hi[1]) + 0.5 - pts[0, 1]
        Y, X = np.meshgrid(ys, xs, indexing="ij")
        theta = np.arctan2(Y, X)
        k = np.arange(2, 7)[:, None, None]
        amp = rng.normal(0.0, 0.035, (5, 1, 1)) / np.sqrt(k - 1.0)
        ph = rng.uniform(0, 2 * np.pi, (5, 1, 1))
        w = halfwidth * (1.0 + (amp * np.cos(k * theta[None] + ph)).sum(0))
        dist = np.hypot(Y, X)
        field[:] = w - dist
        ratio[:] = np.clip((w - dist) / w, 0, 1)
        return field, lo[0], lo[1], ratio
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    total = max(cum[-1], 1e-12)
    for j in range(len(pts) - 1):
        a, b = pts[j], pts[j + 1]
        slo = np.floor(np.minimum(a, b) - reach).astype(int) - lo
        shi = np.ceil(np.maximum(a, b) + reach).astype(int) + 1 - lo
        slo = np.maximum(slo, 0)
        shi = np.minimum(shi, shape)
        ys = np.arange(slo[0], shi[0]) + lo[0] + 0.5
        xs = np.arange(slo[1], shi[1]) + lo[1] + 0.5
        Y, X = np.meshgrid(ys, xs, indexing="ij")
        ab = b - a
        L2 = max(float(ab @ ab), 1e-12)
        t = np.clip(((Y - a[0]) * ab[0] + (X - a[1]) * ab[1]) / L2, 0.0, 1.0)
        dist = np.hypot(Y - a[0] - t * ab[0], X - a[1] - t * ab[1])
        sn = (cum[j] + t * seg[j]) / total
        # taper 0: rounded sausage; taper > 0: pointed ends (flakes)
        w = np.maximum(halfwidth * np.maximum(1.0 - np.abs(2 * sn - 1) ** 2, 0.0) ** taper, 0.6)
        sl = (slice(slo[0], shi[0]), slice(slo[1], shi[1]))
        np.maximum(field[sl], w - dist, out=field[sl])
        np.maximum(ratio[sl], np.clip((w - dist) / w, 0, 1), out=ratio[sl])
    return field, lo[0], lo[1], ratio


def _graphite_field(rng, size, factors, pixel_size_um=PIXEL_SIZE_UM, oversample=1):
    """Periodic depth field phi (>0 inside graphite) and a depth-ratio map for shading.

    With ``oversample`` S > 1 the same particles (same random draws, placed by the same
    collision checks on the ``size`` grid) are also rasterised on a grid S times finer, and
    that fine field (phi in fine pixels) is returned.
    """
    import copy

    H = W = size
    S = int(oversample)
    phi = np.full((H, W), -50.0, np.float32)
    depth = np.zeros((H, W), np.float32)
    if S > 1:
        phi_f = np.full((H * S, W * S), -50.0 * S, np.float32)
        depth_f = np.zeros((H * S, W * S), np.float32)
    d_mean = factors.eq_diameter_um / pixel_size_um
    # lognormal sizes around d_mean; number from the target area fraction
    sig = 0.35
    mean_area = np.pi / 4 * d_mean ** 2 * np.exp(2 * sig ** 2)
    n = max(1, int(round(factors.graphite_fraction * H * W / mean_area)))
    nod = factors.nodularity
    gap = 2.0
    for _ in range(n):
        d_eq = d_mean * np.exp(sig * rng.standard_normal())
        area = np.pi / 4 * d_eq ** 2
        degeneracy = float(np.clip(1.0 - nod + 0.2 * rng.standard_normal(), 0.0, 1.0))
        aspect = np.exp(degeneracy ** 1.3 * np.log(28.0))  # 1 (disc) ... 28 (flake)
        taper = 0.55 * max(0.0, (degeneracy - 0.55) / 0.45)
        # area of a tapered sausage ~ w^2 (4 (aspect - 1) c + pi), c ~ 1 - taper/2
        w = np.sqrt(area / (4 * (aspect - 1) * (1 - 0.45 * taper) + np.pi))
        length = 2 * w * (aspect - 1)
        pts = _centerline(rng, length, degeneracy, n=max(2, int(length / max(w, 1.0)) + 2))
        twin = copy.deepcopy(rng) if S > 1 else None  # the fine copy draws the same outline
        field, r0, c0, ratio = _particle_field(rng, pts, w, taper)
        for _attempt in range(8):
            cy, cx = rng.uniform(0, H), rng.uniform(0, W)
            rows = (np.arange(field.shape[0]) + r0 + int(cy)) % H
            cols = (np.arange(field.shape[1]) + c0 + int(cx)) % W
            sub = phi[np.ix_(rows, cols)]
            if not ((sub > -gap) & (field > -gap)).any():
                break
        phi[np.ix_(rows, cols)] = np.maximum(sub, field)
        dsub = depth[np.ix_(rows, cols)]
        depth[np.ix_(rows, cols)] = np.maximum(dsub, ratio)
        if S > 1:
            ff, fr0, fc0, fratio = _particle_field(twin, pts * S, w * S, taper, pad=3.0 * S)
            fy = (np.arange(ff.shape[0]) + fr0 + int(cy) * S) % (H * S)
            fx = (np.arange(ff.shape[1]) + fc0 + int(cx) * S) % (W * S)
            ix = np.ix_(fy, fx)
            phi_f[ix] = np.maximum(phi_f[ix], ff)
            depth_f[ix] = np.maximum(depth_f[ix], fratio)
    if S > 1:
        return phi_f, depth_f
    return phi, depth


def _grain_boundaries(rng, shape, grain_um, pixel_size_um):
    """Map in [0, 1] of faint ferrite grain boundaries (1 on a boundary)."""
    H, W = shape
    g = grain_um / pixel_size_um
    n = max(4, int(H * W / g ** 2))
    seeds = np.ones(shape, bool)
    seeds[rng.integers(0, H, n), rng.integers(0, W, n)] = False
    _, (iy, ix) = ndimage.distance_transform_edt(seeds, return_indices=True)
    lab = (iy.astype(np.int64) * W + ix).astype(np.float64)
    # wavy rather than straight Voronoi edges: sample the labels at warped coordinates
    wy = _smooth_noise(rng, shape, 12.0, std=2.5)
    wx = _smooth_noise(rng, shape, 12.0, std=2.5)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    lab = ndimage.map_coordinates(lab, [yy + wy, xx + wx], order=0, mode="nearest")
    b = np.zeros(shape, bool)
    b[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    b[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge = ndimage.gaussian_filter(b.astype(np.float32), 0.6)
    return np.clip(edge / max(edge.max(), 1e-6), 0, 1)


def render_micrograph(rng, phi, depth, *, pixel_size_um=PIXEL_SIZE_UM):
    """8-bit grey micrograph from the graphite depth field (see the module docstring).

    Grey levels are calibrated on the as-polished ductile-iron images in
    ``shared/data/castiron_ductile`` (matrix about 175-190, graphite 20-60 of 255).
    """
    H, W = phi.shape
    cover = np.clip(phi + 0.5, 0.0, 1.0)
    cover = ndimage.gaussian_filter(cover, 0.7)  # optical blur
    # matrix: bright, faint grain boundaries with patchy visibility, slight per-area tint
    matrix = 0.72 + 0.012 * _smooth_noise(rng, (H, W), 40.0)
    gb = _grain_boundaries(rng, (H, W), grain_um=rng.uniform(45, 70), pixel_size_um=pixel_size_um)
    vis = np.clip(0.55 + 0.45 * _smooth_noise(rng, (H, W), 25.0), 0.0, 1.0)
    matrix = matrix - 0.09 * gb * vis
    # polishing specks / pits (not graphite: lighter than graphite, absent from the mask)
    n_specks = int(rng.integers(20, 60) * H * W / 1024 ** 2)
    specks = np.zeros((H, W), np.float32)
    specks[rng.integers(0, H, n_specks), rng.integers(0, W, n_specks)] = 1.0
    specks = ndimage.gaussian_filter(specks, rng.uniform(0.7, 1.2)) * 8.0
    matrix = matrix - 0.25 * np.clip(specks, 0, 1)
    # graphite: dark rim, slightly lighter mottled interior
    tex = _smooth_noise(rng, (H, W), 1.5)
    graphite = 0.10 + 0.13 * depth ** 0.8 + 0.03 * tex
    img = cover * graphite + (1.0 - cover) * matrix
    # uneven illumination: tilt + vignetting
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    yy = yy / H - 0.5
    xx = xx / W - 0.5
    gy, gx = rng.uniform(-0.07, 0.07, 2)
    cy, cx = rng.uniform(-0.2, 0.2, 2)
    illum = 1.0 + gy * yy + gx * xx - rng.uniform(0.05, 0.12) * ((yy - cy) ** 2 + (xx - cx) ** 2)
    img = img * illum
    # acquisition noise: shot-like + read noise
    img = img + rng.standard_normal((H, W)).astype(np.float32) * (0.008 + 0.012 * np.sqrt(np.clip(img, 0, 1)))
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def generate_micrograph(factors, *, size=1024, seed=0, pixel_size_um=PIXEL_SIZE_UM,
                        oversample=1):
    """One synthetic micrograph and its graphite mask.

    Parameters
    ----------
    factors : Factors
        Cooling rate, Mg level and target graphite fraction.
    size : int
        Image edge in pixels (the field of view grows with it; the pixel size is fixed).
    seed : int or sequence of int
        Seed of :func:`numpy.random.default_rng`; same seed, same output.
    oversample : int, default 1
        Render the same microstructure on a grid this many times finer: the image has
        ``size * oversample`` pixels of ``pixel_size_um / oversample`` each. The particles
        (sizes, shapes, positions) and their outline roughness are those of the
        ``oversample=1`` image with the same seed; the optical rendering (blur, texture,
        noise) is drawn again at the finer pixel. Used to test resampling to a physical
        scale (``tests/test_scale.py``).

    Returns
    -------
    image : ndarray of shape (size * oversample,) * 2, uint8
    mask : ndarray of the same shape, bool (True = graphite); periodic.
    """
    if int(size) < 32:
        raise BadInputError(None, f"size: expected at least 32 pixels, got {size}")
    rng = np.random.default_rng(seed)
    S = int(oversample)
    if S < 1:
        raise BadInputError(None, f"oversample: expected a positive integer, got {oversample}")
    phi, depth = _graphite_field(rng, int(size), factors, pixel_size_um, oversample=S)
    # irregular, slightly crinkled outlines (real nodules are not perfect circles)
    rough = _smooth_noise(rng, (int(size), int(size)), 1.5, std=0.55)
    if S > 1:  # the same roughness, interpolated (periodically) onto the fine grid, in fine px
        c = (np.arange(int(size) * S) + 0.5) / S - 0.5
        yy, xx = np.meshgrid(c, c, indexing="ij")
        rough = S * ndimage.map_coordinates(rough, [yy, xx], order=1, mode="grid-wrap")
    phi = phi + rough
    mask = phi > 0
    # drop specks of graphite smaller than a few pixels left by the roughness
    lab, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(lab.ravel())
        small = sizes < 6 * S * S
        small[0] = False
        if small.any():
            mask[small[lab]] = False
            phi[small[lab]] = np.minimum(phi[small[lab]], -0.5)
    image = render_micrograph(rng, phi, depth, pixel_size_um=pixel_size_um / S)
    return image, mask


# --------------------------------------------------------------------------- data sets

def design(n_micrographs=12, *, seed=0, graphite_fraction=0.10):
    """Factor design: the 4 x 3 grid of cooling rates and Mg levels, repeated as needed.

    Micrograph ``i`` takes grid cell ``i % 12`` (Mg varies fastest); each gets a small random
    graphite-fraction jitter (+-10 %, relative) so fraction is not constant within a cell.
    """
    grid = [(cr, mg) for cr in COOLING_RATES_K_S for mg in MG_LEVELS_WT_PCT]
    rng = np.random.default_rng([int(seed), 7919])
    out = []
    for i in range(int(n_micrographs)):
        cr, mg = grid[i % len(grid)]
        f = graphite_fraction * (1.0 + rng.uniform(-0.1, 0.1))
        out.append(Factors(cooling_rate_k_s=cr, mg_wt_pct=mg, graphite_fraction=float(f)))
    return out


def _save_png(path, array):
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _make_one(args):
    """Generate, save and measure one micrograph (top level so a process pool can run it)."""
    (i, factors, size, seed, out_dir, E, nu, tol, solve_dtype) = args
    name = f"castiron_{i:03d}"
    image, mask = generate_micrograph(factors, size=size, seed=[int(seed), int(i)])
    out_dir = Path(out_dir)
    _save_png(out_dir / "images" / f"{name}.png", image)
    _save_png(out_dir / "masks" / f"{name}.png", (mask.astype(np.uint8) * 255))
    desc = measure_mask(mask, pixel_size_um=PIXEL_SIZE_UM)
    res = effective_elasticity(mask, E=E, nu=nu, tol=tol, dtype=solve_dtype)
    d_px = factors.eq_diameter_um
    return {
        "file": f"{name}.png", "mask_file": f"{name}.png", "micrograph": name, "seed": int(seed),
        "cooling_rate_k_s": factors.cooling_rate_k_s, "mg_wt_pct": factors.mg_wt_pct,
        "target_nodularity": round(factors.nodularity, 6), "target_eq_diameter_um": round(d_px, 6),
        "target_graphite_fraction": round(factors.graphite_fraction, 6),
        "target_particle_density": round(factors.graphite_fraction / (np.pi / 4 * (d_px * 1e-3) ** 2
                                         * np.exp(2 * 0.35 ** 2)), 3),
        "graphite_fraction": round(desc["graphite_fraction"], 6),
        "particle_density": round(desc["particle_density"], 3),
        "mean_eq_diameter": round(desc["mean_eq_diameter"], 4),
        "nodularity": round(desc["nodularity"], 6),
        "n_particles": desc["n_particles"],
        "youngs_modulus_gpa": round(res.youngs_modulus, 4),
        "poisson_ratio": round(res.poisson_ratio, 6),
        "stress_concentration": round(res.stress_concentration, 5),
        "solver_residual": f"{res.residual:.3e}",
        "solver_iterations": res.iterations,
        "pixel_size_um": PIXEL_SIZE_UM,
    }


def make_castiron(out_dir, *, n_micrographs=12, size=1024, seed=0, graphite_fraction=0.10,
                  E=DEFAULT_E, nu=DEFAULT_NU, tol=1e-5, n_jobs=None, callback=None):
    """Write a synthetic cast-iron data set to ``out_dir``.

    Writes ``images/castiron_NNN.png`` (8-bit grey micrographs), ``masks/castiron_NNN.png``
    (255 = graphite) and, last, ``labels.csv`` (columns :data:`LABEL_COLUMNS`; just before it
    ``labels.columns.json``, declaring :data:`BOOKKEEPING_COLUMNS`): a folder with
    ``labels.csv`` is complete. Every file is written atomically.

    Parameters
    ----------
    out_dir : path
        Destination folder (created). Earlier ``castiron_NNN.png`` files beyond
        ``n_micrographs`` are removed so the folder holds exactly this set.
    n_micrographs : int
        Number of micrographs; the 4 x 3 factor grid of :func:`design` is cycled.
    size : int
        Image edge in pixels (nominal 1 um per pixel).
    seed : int
        Master seed; micrograph ``i`` uses ``(seed, i)``, so outputs are deterministic and do
        not depend on ``n_jobs`` or ``n_micrographs``.
    graphite_fraction : float
        Mean target graphite area fraction.
    E, nu : (float, float)
        Phase constants (matrix, graphite) for the homogenization, GPa and -.
    tol : float
        Relative residual tolerance of the elasticity solver.
    n_jobs : int or None
        Worker processes; ``None`` uses ``min(os.cpu_count(), n_micrographs, 8)`` (a 1024²
        worker peaks at about 0.7 GB).
    callback : callable or None
        Called as ``callback(done, total)`` after each micrograph (for progress bars).

    Returns
    -------
    Path
        ``out_dir``.
    """
    n_micrographs = int(n_micrographs)
    if n_micrographs < 1:
        raise BadInputError(None, f"n_micrographs: expected at least 1, got {n_micrographs}")
    if not 0.0 < float(graphite_fraction) < 0.5:
        raise BadInputError(None, f"graphite_fraction: expected a value in (0, 0.5), got {graphite_fraction}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    facs = design(n_micrographs, seed=seed, graphite_fraction=graphite_fraction)
    jobs = [(i, f, int(size), int(seed), str(out_dir), tuple(E), tuple(nu), float(tol), np.float32)
            for i, f in enumerate(facs)]
    if n_jobs is None:  # ~0.7 GB per 1024² worker: cap the default
        n_jobs = min(os.cpu_count() or 1, n_micrographs, 8)
    n_jobs = max(1, int(n_jobs))
    rows = [None] * n_micrographs
    if n_jobs == 1:
        for k, job in enumerate(jobs):
            rows[job[0]] = _make_one(job)
            if callback:
                callback(k + 1, n_micrographs)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # fork where available: spawn would re-import the caller's __main__, which breaks
        # scripts without an ``if __name__ == "__main__"`` guard; the workers use only numpy
        # and scipy, so forking is safe
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
            futs = {pool.submit(_make_one, job): job[0] for job in jobs}
            for k, fut in enumerate(as_completed(futs)):
                rows[futs[fut]] = fut.result()
                if callback:
                    callback(k + 1, n_micrographs)
    # remove stale files of an earlier, larger set so folder and labels agree
    keep = {r["file"] for r in rows}
    for sub in ("images", "masks"):
        for p in (out_dir / sub).glob("castiron_*.png"):
            if re.fullmatch(r"castiron_\d{3,}\.png", p.name) and p.name not in keep:
                p.unlink()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(LABEL_COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_bookkeeping_columns(out_dir / "labels.csv", BOOKKEEPING_COLUMNS)
    atomic_write_text(out_dir / "labels.csv", buf.getvalue())
    return out_dir


def cache_root():
    """Root folder of matrep's cache: ``$MATREP_CACHE`` or ``~/.cache/matrep``."""
    env = os.environ.get("MATREP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "matrep"


def default_castiron_name(n_micrographs=12, size=1024, seed=0):
    """Versioned cache folder name of a generated set (a generator change regenerates)."""
    return f"castiron-v{GENERATOR_VERSION}-n{n_micrographs}-s{size}-seed{seed}"


def _complete(folder):
    labels = folder / "labels.csv"
    if not labels.is_file():
        return False
    try:
        with open(labels, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError):
        return False
    return bool(rows) and all((folder / "images" / r.get("file", "")).is_file() for r in rows)


def default_castiron(*, cache_dir=None, n_jobs=None, callback=None):
    """The default 12-micrograph cast-iron set (4 cooling rates x 3 Mg levels, 1024 px, seed 0).

    Generated on first use (under two minutes on two cores) and cached in
    ``cache_dir`` (default :func:`cache_root` ``/ "datasets"``) under a versioned folder name.

    Returns
    -------
    Path
        The folder holding ``images/``, ``masks/`` and ``labels.csv``.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "datasets"
    folder = root / default_castiron_name()
    if _complete(folder):
        if not columns_path(folder / "labels.csv").is_file():  # cached before the declaration
            write_bookkeeping_columns(folder / "labels.csv", BOOKKEEPING_COLUMNS)
        return folder
    with atomic_dir(folder) as tmp:
        make_castiron(tmp, n_jobs=n_jobs, callback=callback)
    return folder
