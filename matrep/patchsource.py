"""Patches read on demand: data sets larger than memory, with bounded memory per worker.

:func:`load_patches` (``matrep.io``) cuts every micrograph into patches up front and keeps them
all — ``n_patches * patch**2 * 4`` bytes (64 KiB per 128² patch; 1,000 micrographs of
1024² at stride 50 make ~200,000 patches, 12.5 GiB). The sources here keep only the patch
*records* (source file, id, ``y, x``: ~100 bytes per patch) and read pixels when asked:

* :func:`lazy_patches` — from the micrographs themselves. A first pass reads each image
  once to learn its size (one image in memory at a time; under torchrun the ranks split the
  files of this pass and exchange the results); afterwards a patch is read by decoding its
  micrograph, cropping it, and slicing the window. The decoded images of the last
  ``cache_images`` files (default 2) are kept, so reading patches in order decodes each
  image once.
* :func:`write_patch_cache` / :func:`open_patch_cache` — the patches stored once in an
  HDF5 file (``/patches/data`` of shape (n, P, P), float32, chunks of 16 patches) and read back
  by index: no image decoding when the same patches are visited every epoch.

Both give a :class:`LazyPatchSet`, a :class:`matrep.io.PatchSet` whose ``patches`` is an
array-like (``len``, ``shape``, ``dtype``, integer / slice / index-array / mask indexing,
``numpy.asarray``) returning float32 arrays bitwise equal to ``load_patches``'s, with the same
records, so the encode pipeline and the feature store treat both alike.

Memory per worker (process) while encoding, beyond the model:

* records: ~100 bytes x n_patches;
* micrograph source: ``cache_images`` decoded images (float32: ``4 H W`` bytes each; 8 MiB
  for a 1024² micrograph) plus one chunk of patches (``chunk * P**2 * 4`` bytes: 16 MiB for
  ``--chunk 256`` at P = 128);
* HDF5 source: one chunk of patches plus h5py's chunk cache (1 MiB by default).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import BadInputError
from .io import PatchSet, _common_root, apply_crop, list_images, micrograph_id, read_micrograph


# ---------------------------------------------------------------------------------------
# array-likes
# ---------------------------------------------------------------------------------------
class _LazyArray:
    """Base of the lazy (n, P, P) float32 patch arrays."""

    dtype = np.dtype(np.float32)
    ndim = 3

    def __init__(self, n: int, patch: int):
        self._n = int(n)
        self._patch = int(patch)

    @property
    def shape(self) -> tuple:
        return (self._n, self._patch, self._patch)

    @property
    def nbytes(self) -> int:
        """Bytes the patches would take in memory (not what this object holds)."""
        return self._n * self._patch * self._patch * 4

    def __len__(self) -> int:
        return self._n

    def _indices(self, key) -> tuple[np.ndarray, bool]:
        """Integer indices for ``key`` and whether the result drops the first axis."""
        if isinstance(key, (int, np.integer)):
            k = int(key)
            if not -self._n <= k < self._n:
                raise IndexError(f"patch index {k} out of range for {self._n} patches")
            return np.array([k % self._n]), True
        if isinstance(key, slice):
            return np.arange(self._n)[key], False
        if isinstance(key, tuple):
            raise IndexError("lazy patches support indexing along the first axis only")
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (self._n,):
                raise IndexError(f"boolean mask of shape {idx.shape} does not match {self._n} patches")
            return np.flatnonzero(idx), False
        if idx.dtype.kind not in "iu":
            raise IndexError(f"patch indices must be integers, slices or masks, got {idx.dtype}")
        idx = idx.astype(np.int64).ravel()
        if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
            raise IndexError(f"patch index out of range for {self._n} patches")
        return idx % max(self._n, 1), False

    def __getitem__(self, key) -> np.ndarray:
        idx, scalar = self._indices(key)
        out = self._read(idx)
        return out[0] if scalar else out

    def __array__(self, dtype=None, copy=None):
        a = self._read(np.arange(self._n))
        return a if dtype is None else a.astype(dtype)

    def __iter__(self):
        for i in range(self._n):
            yield self[i]

    def _read(self, idx: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class MicrographPatches(_LazyArray):
    """Patches cut on demand from micrographs (see the module docstring).

    Parameters
    ----------
    files : sequence of paths — the micrographs
    file_index : int array of shape (n,) — each patch's position in ``files``
    coords : int array of shape (n, 2) — top-left (y, x) in the cropped image
    patch, crop, crop_bottom : the patching settings of :func:`matrep.io.load_patches`
    cache_images : int, default 2 — decoded (cropped) images kept in memory
    """

    def __init__(self, files, file_index, coords, *, patch: int, crop=None, crop_bottom: int = 0,
                 cache_images: int = 2, scale=None):
        super().__init__(len(file_index), patch)
        self.scale = scale  # matrep.scale.ScalePlan: resample after cropping
        self.files = [str(f) for f in files]
        self.file_index = np.asarray(file_index, dtype=np.int64)
        self.coords = np.asarray(coords, dtype=np.int64)
        self.crop = tuple(crop) if crop is not None else None
        self.crop_bottom = int(crop_bottom)
        self.cache_images = max(1, int(cache_images))
        self._cache: OrderedDict = OrderedDict()

    def __getstate__(self):  # do not ship decoded images to other processes
        d = dict(self.__dict__)
        d["_cache"] = OrderedDict()
        return d

    def image(self, i: int) -> np.ndarray:
        """The decoded, cropped micrograph ``files[i]`` (LRU-cached)."""
        img = self._cache.get(i)
        if img is not None:
            self._cache.move_to_end(i)
            return img
        f = self.files[i]
        img = apply_crop(read_micrograph(f), self.crop, self.crop_bottom, path=f)
        if self.scale is not None:
            img = self.scale.resample(f, img)
        self._cache[i] = img
        while len(self._cache) > self.cache_images:
            self._cache.popitem(last=False)
        return img

    def _read(self, idx):
        P = self._patch
        out = np.empty((len(idx), P, P), np.float32)
        # visit images in order of first appearance so a chunk decodes each image once
        fi = self.file_index[idx]
        for f in dict.fromkeys(fi.tolist()):
            img = self.image(f)
            for j in np.flatnonzero(fi == f):
                y, x = self.coords[idx[j]]
                out[j] = img[y:y + P, x:x + P]
        return out


class HDF5Patches(_LazyArray):
    """Patches read by index from ``/patches/data`` of an HDF5 patch cache."""

    def __init__(self, path, n: int, patch: int):
        super().__init__(n, patch)
        self.path = str(path)
        self._fh = None
        self._pid = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_fh"], d["_pid"] = None, None
        return d

    def _data(self):
        import h5py

        if self._fh is None or self._pid != os.getpid():  # h5py handles do not survive fork
            self._fh = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._fh["patches"]["data"]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _read(self, idx):
        if len(idx) == 0:
            return np.zeros((0, self._patch, self._patch), np.float32)
        d = self._data()
        order = np.argsort(idx, kind="stable")
        sidx = idx[order]
        uniq, inv = np.unique(sidx, return_inverse=True)
        if len(uniq) and uniq[-1] - uniq[0] + 1 == len(uniq):  # contiguous: one slab read
            block = d[int(uniq[0]):int(uniq[-1]) + 1]
        else:
            block = d[uniq.tolist()]
        out = np.empty((len(idx), self._patch, self._patch), np.float32)
        out[order] = block[inv]
        return out


# ---------------------------------------------------------------------------------------
# the patch set
# ---------------------------------------------------------------------------------------
class LazyPatchSet(PatchSet):
    """A :class:`matrep.io.PatchSet` whose ``patches`` are read on demand."""

    @property
    def lazy(self) -> bool:
        return True

    def subset(self, index) -> "LazyPatchSet":
        """The patches selected by ``index`` (mask or integer array), still lazy."""
        idx = self.patches._indices(index)[0] if not isinstance(index, slice) else \
            np.arange(len(self))[index]
        src = self.patches
        if isinstance(src, MicrographPatches):
            new = MicrographPatches(src.files, src.file_index[idx], src.coords[idx], patch=self.patch,
                                    crop=src.crop, crop_bottom=src.crop_bottom,
                                    cache_images=src.cache_images, scale=src.scale)
        else:
            new = _IndexedPatches(src, idx)
        return LazyPatchSet(new, self.sources[idx], self.micrograph_ids[idx], self.coords[idx],
                            self.patch, self.stride, self.crop, self.crop_bottom, list(self.skipped),
                            scale=self.scale)

    def load(self) -> PatchSet:
        """All patches in memory as a plain :class:`PatchSet`."""
        return PatchSet(np.asarray(self.patches), self.sources, self.micrograph_ids, self.coords,
                        self.patch, self.stride, self.crop, self.crop_bottom, list(self.skipped),
                        scale=self.scale)


class _IndexedPatches(_LazyArray):
    """A subset of another lazy array."""

    def __init__(self, base, idx):
        super().__init__(len(idx), base.shape[1])
        self.base, self.idx = base, np.asarray(idx, np.int64)

    def _read(self, idx):
        return self.base[self.idx[idx]]


def _scan(f: Path, patch: int, crop, crop_bottom, scale=None):
    """(height, width) of the cropped (and resampled) image, or the problem as a string."""
    try:
        img = apply_crop(read_micrograph(f), crop, crop_bottom, path=f)
        if scale is not None:
            img = scale.resample(f, img)
    except BadInputError as exc:
        return ("bad", exc.problem)
    h, w = img.shape
    if h < patch or w < patch:
        return ("bad", f"image of {h}x{w} pixels is smaller than the {patch}x{patch} patch")
    return ("ok", (h, w))


def lazy_patches(images, *, patch: int = 128, stride: int = 50, crop=None, crop_bottom: int = 0,
                 skip_bad: bool = False, max_patches_per_image: int | None = None, seed: int = 0,
                 progress=None, cache_images: int = 2, dist=None, scale=None) -> LazyPatchSet:
    """Like :func:`matrep.io.load_patches`, but patches are read when indexed.

    Same parameters, records, order, errors and ``max_patches_per_image`` selection as
    ``load_patches``, so ``np.asarray(lazy_patches(...).patches)`` equals
    ``load_patches(...).patches`` bitwise and the feature store sees the same digest.

    Parameters
    ----------
    cache_images : int, default 2 — decoded micrographs kept per process
    dist : matrep.distributed.DistContext, optional — under torchrun the ranks split the
        size-scanning pass over the files and share the result
    """
    if stride <= 0 or patch <= 0:
        raise ValueError(f"patch size and stride must be positive, got size={patch}, stride={stride}")
    files = [Path(f) for f in list_images(images)]
    root = Path(images).resolve() if not isinstance(images, (list, tuple)) and Path(images).is_dir() \
        else _common_root(files)
    if scale is not None:  # as in load_patches (every rank resolves the same plan)
        from .scale import as_plan

        scale = as_plan(scale, files, patch=patch, crop=crop, crop_bottom=crop_bottom,
                        skip_bad=skip_bad)
        files = [f for f in files if scale.keeps(f)]
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    mine = list(range(rank, len(files), world))
    it = progress(mine) if progress is not None else mine
    local = {i: _scan(files[i], patch, crop, crop_bottom, scale) for i in it}
    if world > 1:
        scanned = {}
        for part in dist.all_gather_object(local):
            scanned.update(part)
    else:
        scanned = local
    rng = np.random.default_rng(seed)
    keep_files, fidx, coords, src, ids, skipped = [], [], [], [], [], []
    for i, f in enumerate(files):
        status, val = scanned[i]
        if status == "bad":
            if not skip_bad:
                raise BadInputError(f, val)
            skipped.append((str(f), val))
            continue
        h, w = val
        ys = np.arange(0, h - patch + 1, stride)
        xs = np.arange(0, w - patch + 1, stride)
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        c = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.int64)
        if max_patches_per_image is not None and len(c) > max_patches_per_image:
            keep = np.sort(rng.choice(len(c), max_patches_per_image, replace=False))
            c = c[keep]
        fidx.append(np.full(len(c), len(keep_files), np.int64))
        keep_files.append(f)
        coords.append(c)
        src += [str(f)] * len(c)
        ids += [micrograph_id(f.resolve(), root)] * len(c)
    if not coords:
        raise BadInputError(images, "no usable images (all were skipped: "
                            + "; ".join(f"{Path(s).name}: {m}" for s, m in skipped) + ")")
    coords = np.concatenate(coords)
    arr = MicrographPatches(keep_files, np.concatenate(fidx), coords, patch=patch, crop=crop,
                            crop_bottom=crop_bottom, cache_images=cache_images, scale=scale)
    return LazyPatchSet(arr, np.array(src), np.array(ids), coords, patch, stride,
                        tuple(crop) if crop is not None else None, crop_bottom, skipped,
                        scale=scale)


# ---------------------------------------------------------------------------------------
# the HDF5 patch cache
# ---------------------------------------------------------------------------------------
def write_patch_cache(patchset, path, *, chunk: int = 256, progress=None) -> Path:
    """Write the patches and records of ``patchset`` (lazy or not) to an HDF5 file, atomically.

    Reads ``chunk`` patches at a time, so a lazy set is cached with bounded memory.
    """
    import h5py

    from .atomic import atomic_path

    path = Path(path)
    n, P = len(patchset), int(patchset.patch)
    str_dt = h5py.string_dtype("utf-8")
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            g = f.create_group("patches")
            g.create_dataset("source", data=np.array([str(s) for s in patchset.sources], dtype=str_dt))
            g.create_dataset("micrograph_id",
                             data=np.array([str(s) for s in patchset.micrograph_ids], dtype=str_dt))
            g.create_dataset("y", data=np.asarray(patchset.coords)[:, 0].astype(np.int64))
            g.create_dataset("x", data=np.asarray(patchset.coords)[:, 1].astype(np.int64))
            d = g.create_dataset("data", shape=(n, P, P), dtype=np.float32,
                                 chunks=(min(max(n, 1), 16), P, P) if n else None)
            s = patchset.settings()
            import json

            g.attrs.update({"patch": s["patch"], "stride": s["stride"], "crop": json.dumps(s["crop"]),
                            "crop_bottom": s["crop_bottom"], "format": "matrep-patch-cache-v1"})
            starts = range(0, n, chunk)
            for a in (progress(starts) if progress is not None else starts):
                d[a:a + chunk] = np.asarray(patchset.patches[a:a + chunk], dtype=np.float32)
    return path


def open_patch_cache(path) -> LazyPatchSet:
    """A :class:`LazyPatchSet` reading from a file written by :func:`write_patch_cache`.

    The records name the original micrographs; the feature store's digest still reads their
    size and modification time, so keep them in place when encoding from a cache.
    """
    import json

    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            from .store import check_self_contained

            check_self_contained(f, lambda problem: BadInputError(path, problem), "a patch cache")
            g = f["patches"]
            if g.attrs.get("format") != "matrep-patch-cache-v1" or "data" not in g:
                raise BadInputError(path, "not a matrep patch cache (no /patches/data); write one "
                                          "with matrep.patchsource.write_patch_cache")
            src = g["source"].asstr()[()]
            ids = g["micrograph_id"].asstr()[()]
            coords = np.stack([g["y"][()], g["x"][()]], axis=1)
            patch, stride = int(g.attrs["patch"]), int(g.attrs["stride"])
            crop = json.loads(g.attrs["crop"])
            crop_bottom = int(g.attrs["crop_bottom"])
    except (OSError, KeyError) as exc:
        raise BadInputError(path, f"not a readable patch cache ({exc})") from None
    return LazyPatchSet(HDF5Patches(path, len(src), patch), src, ids, coords, patch, stride,
                        tuple(crop) if crop is not None else None, crop_bottom, [])


__all__ = ["LazyPatchSet", "MicrographPatches", "HDF5Patches", "lazy_patches",
           "write_patch_cache", "open_patch_cache"]
