"""Images → patches → encoder → HDF5: the encode pipeline, checkpointed and resumable.

:func:`encode_patchset` transforms patches in chunks. Each finished chunk is saved atomically
in a hidden ``.<out>.<key>.partial`` folder beside the output; a run interrupted at any moment
(even ``kill -9``) resumes from the chunks already done, and the store itself is only ever
replaced whole (see :mod:`matrep.store`).

Under torchrun (``dist``, a :class:`matrep.distributed.DistContext` with several ranks) the
chunks are dealt out round-robin: rank ``r`` transforms chunks ``r, r + W, ...`` and writes
them into the same partial folder; after a barrier rank 0 assembles them in order and writes
the store, so the file is the one a single process writes (chunk boundaries, and so every
feature, are the same). Finished chunks are reused by any rank, so a run resumes with any
number of processes.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path, atomic_write_text, lock
from .errors import StoreError
from .store import (FeatureStore, images_digest, partial_dir, remove_stale_partials,
                    run_digest, state_digest)


@dataclass
class EncodeResult:
    """What :func:`encode_patchset` did."""

    path: Path
    key: str
    n_patches: int
    n_features: int
    reused: bool
    resumed_chunks: int = 0
    fitted_here: bool = False


def _provenance_attrs(prov: dict) -> dict:
    attrs = {"encoder": prov.get("encoder", ""), "encoder_version": prov.get("version", ""),
             "distribution": prov.get("distribution", ""), "params": prov.get("params", {}),
             "provenance": prov}
    w = prov.get("weights") or {}
    if isinstance(w, dict) and w:
        attrs["weights_name"] = str(w.get("name", ""))
        attrs["weights_sha256"] = str(w.get("sha256", ""))
    return attrs


def encode_patchset(encoder, patchset, out, *, labels=None, labels_source: str = "",
                    chunk: int = 256, resume: bool = True, progress=None, log=None,
                    dist=None, features=None) -> EncodeResult:
    """Encode ``patchset`` with ``encoder`` into the store ``out``.

    A trainable encoder that is not fitted yet is fitted on these patches first (say so in
    the log). Features already stored with the same digest are reused.

    Parameters
    ----------
    encoder : a matrep encoder (see :mod:`matrep.encoder`)
    patchset : matrep.io.PatchSet
    out : path of the HDF5 store
    labels : pandas.DataFrame, one row per patch, optional
    chunk : int, default 256 — patches per checkpointed chunk
    resume : bool, default True — continue from the chunks of an interrupted run
    progress : callable(total=..., desc=...) returning a bar with ``update(n)``, optional
    log : callable(str), optional
    dist : matrep.distributed.DistContext, optional — share the chunks among torchrun's ranks
        (only rank 0 writes the store; every rank returns the same result)
    features : matrep.backbone.BackboneFeatures over ``patchset.patches``, optional — an
        encoder that declares ``backbone_request()`` reads its shared VGG19 statistics from it
        (``transform_from_features``) instead of running VGG19 itself
    """
    log = log or (lambda msg: None)
    out = Path(out)
    fitted_here = False
    multi = dist is not None and dist.is_distributed
    main = not multi or dist.is_main
    if getattr(encoder, "trainable", False) and not encoder.__sklearn_is_fitted__():
        log(f"fitting {encoder.name} on the {len(patchset)} patches being encoded")
        from .encoder import FitContext, fit_encoder

        context = FitContext.from_patchset(patchset, log=log)
        if multi:  # fit once, on rank 0, and give every rank its learned state
            state = fit_encoder(encoder, patchset.patches, context)._get_state() if main else None
            encoder._set_state(*dist.broadcast_object(state))
        else:
            fit_encoder(encoder, patchset.patches, context)
        fitted_here = True
    elif not encoder.__sklearn_is_fitted__():
        encoder.fit(patchset.patches[:1])
    request = None
    if features is not None and callable(getattr(encoder, "backbone_request", None)):
        request = encoder.backbone_request()
    prov = encoder.provenance()
    if fitted_here:
        prov["fitted_on"] = "the encoded patches"
    digest = run_digest(prov, state_digest(encoder), images_digest(patchset))
    key = f"{encoder.name}-{digest[:8]}"
    store = FeatureStore(out)

    def stored():
        """Key of these features if the store holds them (rank 0 looks, every rank learns)."""
        found = store.find(digest) if main and store.exists() else None
        return dist.broadcast_object(found) if multi else found

    def reuse(found):
        X, _ = store.read(found)  # checked before anything is written
        if X.shape[0] != len(patchset):
            raise StoreError(f"{out}: features/{found} has {X.shape[0]} rows but the images "
                             f"give {len(patchset)} patches; delete the file (or choose "
                             "another --out) and run again")
        if main:
            with lock(out, on_wait=log):
                if labels is not None:
                    store.write(patchset, labels=labels, labels_source=labels_source)
                remove_stale_partials(out, store.keys())
        if multi:
            dist.barrier()
        return EncodeResult(out, found, len(patchset), X.shape[1], reused=True)

    # Reading needs no lock (a store is only ever replaced whole), so a bad store is refused
    # and stored features are reused before anything, the lock file included, is made.
    found = stored()
    if found is not None:
        return reuse(found)
    # One encode into a store at a time (its lock, matrep.atomic.lock): a second one waits,
    # then finds the same features stored, or adds its own beside them.
    with lock(out, on_wait=log) if main else contextlib.nullcontext():
        found = stored()
        if found is not None:
            return reuse(found)

        partial = partial_dir(out, key)
        meta = {"digest": digest, "chunk": chunk, "n": len(patchset)}
        resumed = 0
        if main and partial.exists():
            try:
                old = json.loads((partial / "meta.json").read_text())
            except (OSError, json.JSONDecodeError):
                old = None
            if not resume or old != meta:
                shutil.rmtree(partial)
        if main:
            partial.mkdir(parents=True, exist_ok=True)
            atomic_write_text(partial / "meta.json", json.dumps(meta))
        if multi:
            dist.barrier()  # the partial folder is ready for every rank

        n = len(patchset)
        starts = list(range(0, n, chunk))
        mine = range(dist.rank, len(starts), dist.world_size) if multi else range(len(starts))
        total = sum(min(starts[i] + chunk, n) - starts[i] for i in mine)
        bar = (progress(total=total, desc=f"encode {encoder.name}") if progress and main
               else None)
        parts = []
        for i in mine:
            s = starts[i]
            f = partial / f"chunk-{i:06d}.npy"
            e = min(s + chunk, n)
            X = None
            if f.exists():
                try:
                    X = np.load(f, allow_pickle=False)
                    if X.shape[0] != e - s:
                        X = None
                    else:
                        resumed += 1
                except (OSError, ValueError):
                    X = None
            if X is None:
                X = np.asarray(encoder.transform(patchset.patches[s:e]) if request is None else
                               encoder.transform_from_features(features.get(request, s, e)),
                               dtype=np.float32)
                with atomic_path(f, suffix=".npy") as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, X, allow_pickle=False)
            parts.append(X)
            if bar is not None:
                bar.update(e - s)
        if bar is not None:
            bar.close()
        if multi:
            # also: every rank's chunks are on disk
            resumed = int(dist.all_reduce_sum([resumed])[0])
            if main:
                parts = [_load_chunk(partial / f"chunk-{i:06d}.npy", min(s + chunk, n) - s)
                         for i, s in enumerate(starts)]
        X = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        if main:
            attrs = {**_provenance_attrs(prov), "digest": digest}
            store.write(patchset, key=key, X=X, attrs=attrs, labels=labels,
                        labels_source=labels_source)
            shutil.rmtree(partial, ignore_errors=True)
            remove_stale_partials(out, store.keys())
        n_feat = X.shape[1] if X.ndim == 2 else 0
        if multi:
            n_feat = int(dist.broadcast_object(n_feat))
            dist.barrier()  # the store is in place when any rank returns
        return EncodeResult(out, key, n, n_feat, reused=False, resumed_chunks=resumed,
                            fitted_here=fitted_here)


def _load_chunk(f: Path, rows: int) -> np.ndarray:
    """A finished chunk written by another rank (missing or short: that rank failed)."""
    from .errors import StoreError

    try:
        X = np.load(f, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{f}: a chunk of the distributed encode is missing or unreadable "
                         f"({exc}); run the same command again to resume") from None
    if X.shape[0] != rows:
        raise StoreError(f"{f}: chunk has {X.shape[0]} rows, expected {rows}; run the same "
                         "command again to resume")
    return X
