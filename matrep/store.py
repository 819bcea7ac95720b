"""The HDF5 feature store: patch records, labels and one feature matrix per encoder run.

Layout of a store file::

    /patches/source          (n,) str     file each patch came from
    /patches/micrograph_id   (n,) str
    /patches/y, /patches/x   (n,) int64   top-left corner in the cropped (and resampled) image
    /patches/pixel_size_um   (n,) float64 the micrograph's own pixel size, NaN if unknown
    /patches/pixel_size_source (n,) str   where it came from (matrep.scale)
    /patches/resample_factor (n,) float64 zoom applied before patching (1: none)
        attrs: patch, stride, crop (JSON), crop_bottom, images_digest, scale (JSON: target
               um/px and the pixel-size distribution; the three pixel-size datasets and this
               attribute are written when the patches were read with a matrep.scale plan)
    /labels/<column>         (n,)         per-patch labels (float64 or str), optional
        attrs: source (the CSV), file_column
    /features/<key>/X        (n, n_features) float32
        attrs: encoder, encoder_version, distribution, params (JSON), provenance (JSON),
               weights_name, weights_sha256 (when a backbone is used), patch, stride, crop,
               crop_bottom, matrep_version, created (UTC ISO time), digest

``key`` is ``<encoder>-<digest[:8]>``: the digest covers the encoder's provenance (its
parameters and backbone weights), its fitted state, the patch settings and the images, so the
same images encoded the same way are found and reused, and different settings live side by
side.

Every write makes a complete new file beside the old one and moves it into place
(:func:`matrep.atomic.atomic_path`): an interrupted write leaves the previous file intact,
and adding an encoder's features never touches the bytes of the others'. Writers of one store
take its lock (:func:`matrep.atomic.lock`, ``.<name>.lock`` beside it), so two writers both
land.

Every read checks the file first (:meth:`FeatureStore.validate`): the layout above, 1-D
records of one length ``n``, labels of length ``n`` (real numbers or strings), feature
matrices of shape ``(n, n_features)`` with real float or integer values; no links, external
storage or virtual datasets (which could make a read return another file's bytes), no dataset
declaring far more data than the file holds. Anything else is a :class:`StoreError` naming the
file and the problem.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ._version import __version__
from .atomic import atomic_path, lock
from .errors import StoreError

#: A dataset declaring more than this many bytes must store at least 1/_BOMB_RATIO of them.
_BOMB_MIN_BYTES = 64 * 2**20
_BOMB_RATIO = 1000
_FIX = "delete it (or choose another --out) and run again"


def images_digest(patchset) -> str:
    """sha256 over the patch records and each source file's size and mtime."""
    h = hashlib.sha256()
    for f in patchset.files:
        st = Path(f).stat()
        h.update(f"{Path(f).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(patchset.settings(), sort_keys=True).encode())
    h.update(np.ascontiguousarray(patchset.coords).tobytes())
    return h.hexdigest()


def state_digest(encoder) -> str:
    """sha256 of an encoder's fitted state (its saved arrays and metadata)."""
    h = hashlib.sha256()
    try:
        arrays, meta = encoder._get_state()
    except Exception:  # noqa: BLE001 - unfitted encoders have no state to hash
        arrays, meta = {}, {}
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()


def run_digest(provenance: dict, fitted_state: str, images: str) -> str:
    """The digest identifying one encoding of one image set."""
    payload = json.dumps({"provenance": provenance, "state": fitted_state, "images": images},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _str_array(values) -> np.ndarray:
    import h5py

    return np.array([str(v) for v in values], dtype=h5py.string_dtype("utf-8"))


def check_self_contained(f, bad, kind: str = "a feature store", max_depth: int = 3) -> None:
    """Refuse what would make reading the open HDF5 file ``f`` reach outside it, or allocate
    more than it holds: soft or external links, datasets with external storage, virtual
    datasets, groups nested deeper than ``max_depth``, and datasets declaring more than 64 MiB
    of which the file stores less than 1/1000.

    ``bad(problem)`` makes the exception to raise (naming the file); ``kind`` names what the
    file should be in the messages.
    """
    import h5py

    def walk(group, prefix, depth):
        if depth > max_depth:
            raise bad(f"{prefix} is nested deeper than {kind}'s groups")
        for name in group:
            full = f"{prefix}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise bad(f"{full} is an external link to {link.filename}:{link.path}; {kind} "
                          "holds no links, and matrep does not follow one out of the file")
            if isinstance(link, h5py.SoftLink):
                raise bad(f"{full} is a soft link to {link.path}; {kind} holds no links")
            if not isinstance(link, h5py.HardLink):
                raise bad(f"{full} is a {type(link).__name__}; {kind} holds no links")
            obj = group[name]
            if isinstance(obj, h5py.Group):
                walk(obj, full, depth + 1)
            elif isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    raise bad(f"{full} is a virtual dataset (its data would come from other "
                              f"files); {kind} holds its data itself")
                if obj.external:
                    files = ", ".join(str(e[0]) for e in obj.external)
                    raise bad(f"{full} keeps its data in an external file ({files}); {kind} "
                              "holds its data itself")
                size = obj.size * obj.dtype.itemsize if obj.shape is not None else 0
                if size > _BOMB_MIN_BYTES and obj.id.get_storage_size() * _BOMB_RATIO < size:
                    raise bad(f"{full} declares {size / 2**30:.3g} GiB of data but the file "
                              f"stores {obj.id.get_storage_size()} bytes of it")

    walk(f, "", 0)


class FeatureStore:
    """Read and (atomically) extend an HDF5 feature store.

    Parameters
    ----------
    path : str or Path
    """

    def __init__(self, path):
        self.path = Path(path)
        self._checked = None  # identity of the file last validated by this object

    # -- reading ------------------------------------------------------------------------
    def _open(self):
        """The file opened for reading, after :meth:`validate`."""
        import h5py

        if not self.path.exists():
            raise StoreError(f"{self.path}: no such feature store; create it with `matrep encode`")
        if not self.path.is_file():
            raise StoreError(f"{self.path}: not a file; a feature store is one HDF5 file")
        try:
            f = h5py.File(self.path, "r")
        except OSError as exc:
            raise StoreError(f"{self.path}: not a readable HDF5 feature store ({exc}); "
                             "delete it or choose another --out") from None
        try:
            try:  # the checked file is known by its identity: a replaced or changed file differs
                st = os.fstat(f.id.get_vfd_handle())
                ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            except (OSError, TypeError, ValueError):
                ident = None
            if ident is None or ident != self._checked:
                self._validate(f)
                self._checked = ident
        except BaseException:
            f.close()
            raise
        return f

    def validate(self) -> int:
        """Check the file's layout (see the module docstring); return the number of patches.

        Raises
        ------
        StoreError
            Naming the file and the first problem found.
        """
        with self._open() as f:
            return len(f["patches"]["y"])

    def _bad(self, problem: str) -> StoreError:
        return StoreError(f"{self.path}: {problem}; {_FIX}")

    def _validate(self, f) -> None:
        try:
            check_self_contained(f, self._bad)
            self._check_layout(f)
        except StoreError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise self._bad(f"unreadable layout ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())})") from None

    def _check_layout(self, f) -> None:
        import h5py

        def dataset(g, name, where):
            if name not in g or not isinstance(g[name], h5py.Dataset):
                raise self._bad(f"has no dataset {where}/{name}")
            return g[name]

        def one_d(ds, where, n=None):
            if ds.shape is None or len(ds.shape) != 1:
                shape = "no shape (empty)" if ds.shape is None else f"shape {ds.shape}"
                raise self._bad(f"{where} has {shape}, expected a 1-D array"
                                + (f" of {n} values (one per patch record)" if n is not None
                                   else ""))
            if n is not None and ds.shape[0] != n:
                raise self._bad(f"{where} has {ds.shape[0]} values, expected {n} (one per "
                                "patch record)")

        def is_str(ds):
            return h5py.check_string_dtype(ds.dtype) is not None

        if "patches" not in f or not isinstance(f["patches"], h5py.Group):
            raise StoreError(f"{self.path}: has no /patches group, so it is not a matrep feature "
                             "store; choose another --out (or delete the file)")
        g = f["patches"]
        y = dataset(g, "y", "/patches")
        one_d(y, "/patches/y")
        n = y.shape[0]
        for name in ("x", "source", "micrograph_id"):
            one_d(dataset(g, name, "/patches"), f"/patches/{name}", n)
        for name in ("y", "x"):
            if g[name].dtype.kind not in "iu":
                raise self._bad(f"/patches/{name} has dtype {g[name].dtype}, expected integers")
        for name in ("source", "micrograph_id"):
            if not is_str(g[name]):
                raise self._bad(f"/patches/{name} has dtype {g[name].dtype}, expected strings")
        for name, want in (("pixel_size_um", "f"), ("resample_factor", "f"),
                           ("pixel_size_source", "str")):  # written with a matrep.scale plan
            if name in g:
                one_d(dataset(g, name, "/patches"), f"/patches/{name}", n)
                if not (is_str(g[name]) if want == "str" else g[name].dtype.kind in "iuf"):
                    raise self._bad(f"/patches/{name} has dtype {g[name].dtype}, expected "
                                    + ("strings" if want == "str" else "real numbers"))
        if "labels" in f:
            lg = f["labels"]
            if not isinstance(lg, h5py.Group):
                raise self._bad("/labels is not a group")
            for c in self._label_columns(lg):
                ds = dataset(lg, c, "/labels")
                one_d(ds, f"/labels/{c}", n)
                if not (is_str(ds) or ds.dtype.kind in "biuf"):
                    raise self._bad(f"/labels/{c} has dtype {ds.dtype}, expected real numbers "
                                    "or strings")
        if "features" in f:
            fg = f["features"]
            if not isinstance(fg, h5py.Group):
                raise self._bad("/features is not a group")
            for key in fg:
                if not isinstance(fg[key], h5py.Group):
                    raise self._bad(f"/features/{key} is not a group")
                X = dataset(fg[key], "X", f"/features/{key}")
                if X.shape is None or len(X.shape) != 2 or X.shape[0] != n:
                    shape = "no shape (empty)" if X.shape is None else f"shape {X.shape}"
                    raise self._bad(f"/features/{key}/X has {shape}, expected ({n}, "
                                    "n_features): a 2-D matrix with one row per patch record")
                if X.dtype.kind not in "iuf":
                    kind = "strings" if is_str(X) else f"dtype {X.dtype}"
                    raise self._bad(f"/features/{key}/X holds {kind}, expected real floats or "
                                    "integers")

    def _label_columns(self, lg) -> list[str]:
        raw = lg.attrs.get("columns")
        if raw is None:
            return sorted(lg.keys())
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        try:
            cols = json.loads(raw) if isinstance(raw, str) else None
        except json.JSONDecodeError:
            cols = None
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise self._bad("/labels attribute 'columns' is not a JSON list of column names")
        return cols

    def exists(self) -> bool:
        return self.path.exists()

    def keys(self) -> list[str]:
        """Keys of the stored feature matrices."""
        if not self.exists():
            return []
        with self._open() as f:
            return sorted(f["features"].keys()) if "features" in f else []

    def entries(self) -> list[dict]:
        """Each feature matrix's key, shape and attributes (JSON attrs decoded)."""
        out = []
        if not self.exists():
            return out
        with self._open() as f:
            for key in sorted(f.get("features", {}).keys()):
                g = f["features"][key]
                out.append({"key": key, "shape": tuple(g["X"].shape),
                            **self._read_attrs(g.attrs, f"/features/{key}")})
        return out

    def _read_attrs(self, attrs, where) -> dict:
        try:
            return _attrs(attrs)
        except (OSError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise self._bad(f"unreadable attributes of {where} ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())})") from None

    def find(self, digest: str) -> str | None:
        """Key of the features with this run digest, if stored."""
        for e in self.entries():
            if e.get("digest") == digest:
                return e["key"]
        return None

    def resolve(self, key_or_encoder: str) -> str:
        """A full key from a key or an encoder name (the newest of that encoder)."""
        entries = self.entries()
        for e in entries:
            if e["key"] == key_or_encoder:
                return e["key"]
        same = sorted((e for e in entries if e.get("encoder") == key_or_encoder),
                      key=lambda e: e.get("created", ""))
        if not same:
            raise StoreError(f"{self.path}: no features for {key_or_encoder!r}; stored: "
                             f"{', '.join(e['key'] for e in entries) or 'none'}")
        return same[-1]["key"]

    def read(self, key_or_encoder: str) -> tuple[np.ndarray, dict]:
        """The feature matrix (n_patches, n_features) and its attributes."""
        key = self.resolve(key_or_encoder)
        with self._open() as f:
            g = f["features"][key]
            try:
                X = g["X"][()]
            except (OSError, ValueError) as exc:
                raise self._bad(f"cannot read /features/{key}/X ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())})") from None
            if X.dtype.kind == "f" and not np.isfinite(X).all():
                bad = int(X.size - np.isfinite(X).sum())
                raise self._bad(f"/features/{key}/X holds {bad} NaN or infinite value(s)")
            return X, self._read_attrs(g.attrs, f"/features/{key}")

    def read_patches(self) -> dict:
        """Patch records: ``source``, ``micrograph_id`` (str arrays), ``coords`` (n, 2) and settings."""
        with self._open() as f:
            g = f["patches"]
            try:
                rec = {"source": g["source"].asstr()[()],
                       "micrograph_id": g["micrograph_id"].asstr()[()],
                       "coords": np.stack([g["y"][()], g["x"][()]], axis=1).astype(np.int64)}
                for name in ("pixel_size_um", "pixel_size_source", "resample_factor"):
                    if name in g:  # written with a matrep.scale plan
                        rec[name] = g[name].asstr()[()] if g[name].dtype.kind == "O" else g[name][()]
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise self._bad(f"cannot read /patches ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())})") from None
            return {**rec, **self._read_attrs(g.attrs, "/patches")}

    def read_labels(self):
        """Per-patch labels as a pandas DataFrame (empty if none stored)."""
        import h5py
        import pandas as pd

        with self._open() as f:
            if "labels" not in f:
                return pd.DataFrame()
            g = f["labels"]
            cols = self._label_columns(g)
            try:
                data = {c: (g[c].asstr()[()] if h5py.check_string_dtype(g[c].dtype) is not None
                            else g[c][()]) for c in cols}
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise self._bad(f"cannot read /labels ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())})") from None
            return pd.DataFrame(data)

    # -- writing ------------------------------------------------------------------------
    def write(self, patchset, *, key: str | None = None, X=None, attrs: dict | None = None,
              labels=None, labels_source: str = "") -> str | None:
        """Write patch records (+ labels) and optionally one feature matrix, atomically.

        If the file exists, its patch records must be those of ``patchset`` (the same images
        and patch settings); other feature matrices are kept byte for byte. The store's lock is
        held from reading the old file to moving the new one into place, so concurrent writers
        all land.
        """
        import h5py

        digest = images_digest(patchset)
        with lock(self.path), atomic_path(self.path, suffix=".h5", locked=True) as tmp:
            if self.path.exists():
                with self._open() as old:
                    old_digest = old["patches"].attrs.get("images_digest")
                    if isinstance(old_digest, bytes):
                        old_digest = old_digest.decode("utf-8", "replace")
                if old_digest is not None and old_digest != digest:
                    raise StoreError(f"{self.path}: holds features of another set of patches "
                                     "(different images, patch size, stride or crop); use "
                                     "another --out file")
                shutil.copyfile(self.path, tmp)
                mode = "a"
            else:
                mode = "w"
            with h5py.File(tmp, mode) as f:
                if "patches" not in f:
                    g = f.create_group("patches")
                    g.create_dataset("source", data=_str_array(patchset.sources))
                    g.create_dataset("micrograph_id", data=_str_array(patchset.micrograph_ids))
                    g.create_dataset("y", data=patchset.coords[:, 0].astype(np.int64))
                    g.create_dataset("x", data=patchset.coords[:, 1].astype(np.int64))
                    s = patchset.settings()
                    if getattr(patchset, "scale", None) is not None:  # pixel sizes (matrep.scale)
                        for name, v in patchset.scale.records(patchset.sources).items():
                            g.create_dataset(name, data=_str_array(v) if v.dtype == object else v)
                        g.attrs["scale"] = json.dumps({**patchset.scale.summary(),
                                                       "settings": s.get("scale")})
                    g.attrs.update({"patch": s["patch"], "stride": s["stride"],
                                    "crop": json.dumps(s["crop"]), "crop_bottom": s["crop_bottom"],
                                    "images_digest": digest})
                if labels is not None and len(labels.columns):
                    if "labels" in f:
                        del f["labels"]
                    g = f.create_group("labels")
                    for c in labels.columns:
                        col = labels[c]
                        if col.dtype.kind in "biuf":
                            g.create_dataset(str(c), data=col.to_numpy(dtype=np.float64))
                        else:
                            g.create_dataset(str(c), data=_str_array(
                                ["" if (isinstance(v, float) and np.isnan(v)) else v for v in col]))
                    g.attrs["columns"] = json.dumps([str(c) for c in labels.columns])
                    g.attrs["source"] = labels_source
                if X is not None:
                    X = np.asarray(X, dtype=np.float32)
                    if X.ndim != 2 or len(X) != len(patchset):
                        raise StoreError(f"features must have shape ({len(patchset)}, n_features), "
                                         f"got {X.shape}")
                    grp = f.require_group("features")
                    if key in grp:
                        del grp[key]
                    g = grp.create_group(key)
                    g.create_dataset("X", data=X, compression="gzip", compression_opts=4,
                                     chunks=(min(len(X), 1024), X.shape[1]) if X.size else None)
                    meta = {"matrep_version": __version__,
                            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                            **patchset.settings(), **(attrs or {})}
                    for k, v in meta.items():
                        g.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) or v is None else v
        return key


_JSON_ATTRS = {"params", "provenance", "crop", "taps", "weights", "scale"}


def _attrs(attrs) -> dict:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, np.generic):
            v = v.item()
        if k in _JSON_ATTRS and isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        out[k] = v
    return out


def load_features(path, encoder: str):
    """Features and per-patch table (records + labels) of a store, ready for scikit-learn.

    Returns
    -------
    X : ndarray of shape (n_patches, n_features)
    table : pandas.DataFrame with ``source``, ``micrograph_id``, ``y``, ``x`` and the labels
    """
    import pandas as pd

    store = FeatureStore(path)
    X, _ = store.read(encoder)
    rec = store.read_patches()
    table = pd.DataFrame({"source": rec["source"], "micrograph_id": rec["micrograph_id"],
                          "y": rec["coords"][:, 0], "x": rec["coords"][:, 1],
                          **{k: rec[k] for k in ("pixel_size_um", "pixel_size_source") if k in rec}})
    labels = store.read_labels()
    # the pixel size used (record) replaces a labels column of the same name
    labels = labels.drop(columns=[c for c in ("pixel_size_um", "pixel_size_source")
                                  if c in table.columns and c in labels.columns])
    if len(labels.columns):
        table = pd.concat([table, labels], axis=1)
    return X, table


#: A partial encode of another key untouched this long (seconds) counts as abandoned.
PARTIAL_MAX_AGE_S = 7 * 24 * 3600.0


def partial_dir(out, key: str) -> Path:
    """The hidden folder holding the finished chunks of encoding ``key`` into store ``out``."""
    out = Path(out)
    return out.parent / f".{out.name}.{key}.partial"


def remove_stale_partials(out, stored_keys, *, keep: str | None = None) -> list[Path]:
    """Remove the partial-encode folders of store ``out`` that are finished or abandoned.

    Call with the store's lock held (no other encode into ``out`` runs). Removed: those whose
    key is in ``stored_keys`` (the store holds the result: the writer died before cleaning
    up), those without a readable ``meta.json`` (killed before the first chunk), and those of
    other keys than ``keep`` untouched for :data:`PARTIAL_MAX_AGE_S`. A recent partial of
    another key stays: running that encode again resumes from it.
    """
    import re
    import time

    out = Path(out)
    pat = re.compile(rf"\.{re.escape(out.name)}\.(.+-[0-9a-f]{{8}})\.partial")
    removed = []
    try:
        names = os.listdir(out.parent)
    except OSError:
        return removed
    stored = set(stored_keys)
    for name in names:
        m = pat.fullmatch(name)
        p = out.parent / name
        if m is None or m.group(1) == keep or not p.is_dir() or p.is_symlink():
            continue
        stale = m.group(1) in stored
        if not stale:
            try:
                json.loads((p / "meta.json").read_text())
                newest = max([p.stat().st_mtime] + [c.stat().st_mtime for c in p.iterdir()])
                stale = time.time() - newest > PARTIAL_MAX_AGE_S
            except (OSError, ValueError):
                stale = True
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
