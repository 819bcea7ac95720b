"""Where descriptor fidelity is lost: resolution, micrograph identity, or the decoder.

Usage::

    python scripts/descriptor_ceilings.py [--model RUN] [--images DIR] [--n 300]

Without ``--model``: two ceilings on ``--n`` random 128 px patches (stride 64) of the images
(default: the built-in cast-iron set), each the Spearman rho of every descriptor
(``matrep.metrics.morphology``) between the input and

* the input passed through the quick preset's resampling (2x area-downsampling, then bilinear
  upsampling back): what the preset's resolution alone loses;
* its micrograph's mean descriptor: what a model that knows only which micrograph a patch
  comes from would score.

With ``--model``: also, on the run's held-out patches, per micrograph the mean descriptors of
the inputs and of their reconstructions (does the decoder cover the inputs' range?).
Used for docs/texturevae.md ("Where diameter is lost").
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv=None):
    import torch

    import matrep
    from matrep.datasets import default_castiron
    from matrep.io import load_patches
    from matrep.metrics.correlation import spearman
    from matrep.metrics.morphology import MEASURED_DESCRIPTORS, descriptor_array
    from matrep.plugins.texturevae.model import downsample_patches, upsample_patches

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--images")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    images = a.images or str(default_castiron() / "images")
    ps = load_patches(images, patch=128, stride=64)
    idx = np.random.default_rng(a.seed).choice(len(ps), min(a.n, len(ps)), replace=False)
    x = ps.patches[idx].astype(np.float32)
    mid = ps.micrograph_ids[idx]
    dx = descriptor_array(x)
    names = list(MEASURED_DESCRIPTORS)

    def rhos(other):
        return " ".join(f"{k} {spearman(dx[:, j], other[:, j]).rho:.3f}"
                        for j, k in enumerate(names))

    t = torch.from_numpy(x)[:, None]
    print(f"{len(x)} random patches of {images}")
    print("2x down + up:     ", rhos(descriptor_array(upsample_patches(downsample_patches(t, 2),
                                                                       2)[:, 0].numpy())))
    means = np.stack([[np.nanmean(dx[mid == m, j]) for j in range(len(names))] for m in mid])
    print("micrograph mean:  ", rhos(means))
    if not a.model:
        return
    enc = matrep.load_model(a.model)
    val = enc.held_out_patches(ps)
    x, mid = val.patches.astype(np.float32), val.micrograph_ids
    dx = descriptor_array(x)
    dr = descriptor_array(np.clip(np.asarray(enc.reconstruct(x)), 0, 1))
    print(f"\n{a.model}: {len(x)} held-out patches; reconstruction: ", rhos(dr))
    print("| micrograph | n | " + " | ".join(f"{k} in → rec" for k in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for m in sorted(set(mid)):
        s = mid == m
        print(f"| {m} | {int(s.sum())} | " + " | ".join(
            f"{np.nanmean(dx[s, j]):.3g} → {np.nanmean(dr[s, j]):.3g}"
            for j in range(len(names))) + " |")


if __name__ == "__main__":
    main()
