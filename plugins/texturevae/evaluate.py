"""Is a reconstruction specific to its input? The check of issue 5's "done means".

For held-out patches x_i (from several micrographs), compare the style loss between x_i and its
own reconstruction with the style loss between x_i and the reconstruction of a held-out patch
x_j from *another* micrograph. A model that decodes one average texture scores the same on
both; a useful one scores clearly lower on its own reconstruction.

Which patches a training run held out is recorded at fit time (:func:`split_record`) and read
back by :func:`held_out_patches`.
"""

from __future__ import annotations

import numpy as np


def split_record(X, train_idx, val_idx, micrograph_ids, coords, *, how: str) -> dict:
    """Which patches a fit held out (``fit`` stores it as ``split_``, saved in config.json):
    their micrograph ids and corners when known (else their indices into ``X``), and a
    sha256 of their pixels, so :func:`held_out_patches` reads the split back instead of
    replaying the random draws."""
    from .train import fingerprint_arrays

    val_idx = np.asarray(val_idx, dtype=np.int64)
    rec = {"how": how, "n_patches": int(len(X)), "n_train": int(len(train_idx)),
           "n_val": int(len(val_idx)), "val_sha256": fingerprint_arrays(X[val_idx])}
    if micrograph_ids is not None and coords is not None:
        ids = np.asarray(micrograph_ids)[val_idx]
        rec["val_micrographs"] = [str(m) for m in ids.tolist()]
        rec["val_coords"] = np.asarray(coords)[val_idx].astype(np.int64).tolist()
    else:
        rec["val_indices"] = val_idx.tolist()
    return rec


def held_out_patches(encoder, patchset):
    """The held-out patches of a training run, as recorded by ``fit`` (``encoder.split_``).

    ``patchset`` must be cut from the training images with the training patching. The
    recorded patches are found by micrograph id and corner (or, for a fit on bare arrays, by
    index), and their pixels must hash to the recorded sha256.

    Returns
    -------
    PatchSet of the held-out patches.

    Raises
    ------
    BadInputError
        A recorded patch is not in ``patchset``, or its pixels differ (other images,
        patching or scale than in training).
    """
    split = getattr(encoder, "split_", None)
    if not split:
        return _replayed_held_out(encoder, patchset)
    from matrep.errors import BadInputError

    from .train import fingerprint_arrays

    hint = ("pass the training --images, --patch, --stride, --crop and scale options of "
            "`matrep fit`")
    if "val_micrographs" in split:
        where = {(str(m), int(c[0]), int(c[1])): i for i, (m, c) in
                 enumerate(zip(patchset.micrograph_ids.tolist(), patchset.coords))}
        keys = [(str(m), int(c[0]), int(c[1]))
                for m, c in zip(split["val_micrographs"], split["val_coords"])]
        missing = [k for k in keys if k not in where]
        if missing:
            m, y, x = missing[0]
            raise BadInputError(None, f"{len(missing)} of the {len(keys)} patches the model held "
                                      f"out are not among these patches (e.g. {m} at ({y}, {x})); "
                                      + hint)
        idx = np.asarray([where[k] for k in keys], dtype=np.int64)
    else:
        if len(patchset) != int(split["n_patches"]):
            raise BadInputError(None, f"the model was trained on {split['n_patches']} patches, "
                                      f"these images give {len(patchset)}; " + hint)
        idx = np.asarray(split["val_indices"], dtype=np.int64)
    if fingerprint_arrays(patchset.patches[idx]) != split.get("val_sha256"):
        raise BadInputError(None, "the patches the model held out differ in their pixels from "
                                  "these (sha256 of the held-out patches); " + hint)
    return patchset.subset(idx)


def _replayed_held_out(encoder, patchset):
    """For models saved before ``fit`` recorded its split (no ``split_``): replay the draws
    of ``fit`` (same seed, ``val_split``, ``val_fraction``, ``max_patches`` and
    ``max_val_patches``)."""
    from .train import split_patches

    _, val = split_patches(len(patchset), micrograph_ids=patchset.micrograph_ids,
                           coords=patchset.coords, patch=patchset.patches.shape[-1],
                           val_fraction=float(encoder.val_fraction), how=encoder.val_split,
                           seed=int(encoder.seed))
    rng = np.random.default_rng([int(encoder.seed), 104729])
    if encoder.max_patches is not None:
        # fit drew the training subset from the same generator first; replay that draw
        tr, _ = split_patches(len(patchset), micrograph_ids=patchset.micrograph_ids,
                              coords=patchset.coords, patch=patchset.patches.shape[-1],
                              val_fraction=float(encoder.val_fraction), how=encoder.val_split,
                              seed=int(encoder.seed))
        if len(tr) > int(encoder.max_patches):
            rng.choice(tr, int(encoder.max_patches), replace=False)
    if encoder.max_val_patches is not None and len(val) > int(encoder.max_val_patches):
        val = np.sort(rng.choice(val, int(encoder.max_val_patches), replace=False))
    return patchset.subset(val)


def specificity(encoder, X, micrograph_ids, *, seed=0):
    """Own-reconstruction vs other-micrograph-reconstruction style loss.

    :func:`matrep.metrics.specificity.own_vs_other` with the encoder's reconstructions and its
    style loss (``encoder.style_distance``) as the distance.

    Parameters
    ----------
    encoder : trained TextureVAEEncoder
    X : array of shape (n, P, P) — held-out patches from at least two micrographs
    micrograph_ids : array of shape (n,)
    seed : int — seeds the choice of the other-micrograph partner of each patch

    Returns
    -------
    dict with ``own`` and ``other`` (arrays of shape (n,)), their means and medians,
    ``frac_own_lower`` (share of patches whose own reconstruction is closer) and ``ratio``
    (mean own / mean other).
    """
    from matrep.metrics.specificity import own_vs_other

    if len(set(np.asarray(micrograph_ids).tolist())) < 2:
        raise ValueError("specificity needs held-out patches from at least two micrographs")
    return own_vs_other(X, encoder.reconstruct(X), micrograph_ids, encoder.style_distance,
                        seed=seed)
