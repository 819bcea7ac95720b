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
and adding an encoder's features never touches the bytes of the others'.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from ._version import __version__
from .atomic import atomic_path
from .errors import StoreError


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


class FeatureStore:
    """Read and (atomically) extend an HDF5 feature store.

    Parameters
    ----------
    path : str or Path
    """

    def __init__(self, path):
        self.path = Path(path)

    # -- reading ------------------------------------------------------------------------
    def _open(self):
        import h5py

        if not self.path.exists():
            raise StoreError(f"{self.path}: no such feature store; create it with `matrep encode`")
        try:
            return h5py.File(self.path, "r")
        except OSError as exc:
            raise StoreError(f"{self.path}: not a readable HDF5 feature store ({exc}); "
                             "delete it or choose another --out") from None

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
                out.append({"key": key, "shape": tuple(g["X"].shape), **_attrs(g.attrs)})
        return out

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
            return g["X"][()], _attrs(g.attrs)

    def read_patches(self) -> dict:
        """Patch records: ``source``, ``micrograph_id`` (str arrays), ``coords`` (n, 2) and settings."""
        with self._open() as f:
            if "patches" not in f:
                raise StoreError(f"{self.path}: has no /patches group; not a matrep feature store")
            g = f["patches"]
            return {
                "source": g["source"].asstr()[()],
                "micrograph_id": g["micrograph_id"].asstr()[()],
                "coords": np.stack([g["y"][()], g["x"][()]], axis=1),
                **{name: g[name].asstr()[()] if g[name].dtype.kind == "O" else g[name][()]
                   for name in ("pixel_size_um", "pixel_size_source", "resample_factor")
                   if name in g},  # written with a matrep.scale plan
                **_attrs(g.attrs),
            }

    def read_labels(self):
        """Per-patch labels as a pandas DataFrame (empty if none stored)."""
        import pandas as pd

        with self._open() as f:
            if "labels" not in f:
                return pd.DataFrame()
            g = f["labels"]
            cols = json.loads(g.attrs.get("columns", "[]")) or sorted(g.keys())
            data = {c: (g[c].asstr()[()] if g[c].dtype.kind in "OS" else g[c][()]) for c in cols}
            return pd.DataFrame(data)

    # -- writing ------------------------------------------------------------------------
    def write(self, patchset, *, key: str | None = None, X=None, attrs: dict | None = None,
              labels=None, labels_source: str = "") -> str | None:
        """Write patch records (+ labels) and optionally one feature matrix, atomically.

        If the file exists, its patch records must be those of ``patchset`` (the same images
        and patch settings); other feature matrices are kept byte for byte.
        """
        import h5py

        digest = images_digest(patchset)
        with atomic_path(self.path, suffix=".h5") as tmp:
            if self.path.exists():
                try:
                    with h5py.File(self.path, "r") as old:
                        old_digest = old["patches"].attrs.get("images_digest") \
                            if "patches" in old else None
                except OSError as exc:
                    raise StoreError(f"{self.path}: not a readable HDF5 feature store "
                                     f"({exc}); delete it or choose another --out") from None
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
    if len(labels.columns):
        table = pd.concat([table, labels], axis=1)
    return X, table
