"""The texture-VAE encoder's generative methods: ``decode``, ``reconstruct``, ``sample``,
``traverse`` (the interface :class:`matrep.encoder.GenerativeEncoder`) and
``style_distance``. A mixin of :class:`matrep.plugins.texturevae.encoder.TextureVAEEncoder`.
"""

from __future__ import annotations

import numpy as np

from matrep.encoder import check_patches
from matrep.errors import BadInputError


#: patches reconstructed at a time (their ``reconstruct_draws`` draws are held in memory)
RECONSTRUCT_CHUNK = 256


class GenerativeMixin:
    """Decoding, sampling and traversing the latent space of a trained texture-VAE."""

    @property
    def decodes_any_size(self) -> bool:
        """True when the decoder is stationary (``decoder_input="modulated"`` with circular
        padding): :meth:`decode` then takes ``size`` and makes one seamless, periodic image of
        that size from one latent vector."""
        return self.decoder_input == "modulated" and self.decoder_padding == "circular"

    def decode(self, Z, seeds=None, size=None):
        """Decode latent vectors of shape (n, latent_dim) into patches (n, P, P) in [0, 1]
        (P the input patch size; a model with ``downsample > 1`` decodes at ``P / downsample``
        and upsamples bilinearly).

        ``size`` (stationary decoders only, :attr:`decodes_any_size`): decode (n, size, size)
        images instead, ``size`` a multiple of ``16 x downsample``; periodic at ``size``.

        ``seeds`` (n ints; decoders with noise, ``decoder_input`` "noise" or "modulated"): the
        noise seed of each row, which sets where particles are placed; default 0 for every
        row (one placement, so rows differ by their statistics only). :meth:`reconstruct`
        chooses among seeds derived from each patch's own pixels, :meth:`traverse` keeps one
        seed along a row.
        """
        import torch

        model = self._model()
        Z = np.asarray(Z, dtype=np.float32)
        if Z.ndim != 2 or Z.shape[1] != int(self.latent_dim):
            raise BadInputError(None, f"Z must have shape (n, {self.latent_dim}), got {Z.shape}")
        if not np.isfinite(Z).all():
            raise BadInputError(None, "Z contains NaN or inf values")
        from .model import upsample_patches

        dev = self._torch_device()
        if seeds is not None and len(seeds) != len(Z):
            raise BadInputError(None, f"seeds needs one seed per row of Z ({len(Z)}), got {len(seeds)}")
        f = self._factor()
        P = self.patch_size_
        if size is not None:
            if not self.decodes_any_size:
                raise BadInputError(None, "only a stationary decoder (decoder_input='modulated', "
                                          "decoder_padding='circular') decodes other sizes than "
                                          f"its patch ({P}); tile patches instead")
            if int(size) < 16 * f or int(size) % (16 * f):
                raise BadInputError(None, f"size must be a positive multiple of {16 * f} "
                                          f"(16 x downsample), got {size}")
            P = int(size)
        out = []
        bs = int(self.batch_size_eval) if size is None else 1
        with torch.inference_mode():
            for s in range(0, len(Z), bs):
                z = torch.from_numpy(Z[s:s + bs]).to(dev)
                sd = None if seeds is None else list(seeds[s:s + bs])
                y = (model.decode(z, sd) if size is None
                     else model.decoder.decode_size(z, P // f, sd))
                x = upsample_patches(y.float(), f)
                out.append(x[:, 0].cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, P, P), np.float32)

    def style_distance(self, X, Y):
        """Style loss (paper eq. 2, the model's layers and weights) between pairs of patches.

        Parameters
        ----------
        X, Y : arrays of shape (n, P, P) in [0, 1]

        Returns
        -------
        float64 array of shape (n,): loss(X[i], Y[i]) (0 for identical patches), the kernels'
        per-image style loss (``matrep.kernels.style_loss(..., reduction="none")``).
        """
        return self._style_distances(X, [Y])[0]

    def _style_distances(self, X, Ys):
        """:meth:`style_distance` of ``X`` to each array of ``Ys``: (len(Ys), n); the VGG19
        features of ``X`` are computed once per batch for all of them."""
        import torch

        from matrep.kernels import style_loss

        from .model import downsample_patches

        X = check_patches(X, name="X")
        Ys = [check_patches(Y, name="Y") for Y in Ys]
        for Y in Ys:
            if X.shape != Y.shape:
                raise BadInputError(None, f"X and Y must have the same shape, got {X.shape} and "
                                          f"{Y.shape}")
        factor = self._factor() if hasattr(self, "patch_size_") else int(self.downsample)
        if X.shape[1] % factor or X.shape[2] % factor:
            raise BadInputError(None, f"patches of {X.shape[1]}x{X.shape[2]} cannot be downsampled "
                                      f"by {factor}; use a patch size that is a multiple of {factor}")
        bb = self._get_backbone()
        dev = self._torch_device()
        taps, lw = tuple(self.style_layers), self._layer_weights()
        out = [[] for _ in Ys]
        bs = int(self.batch_size_eval)

        def features(A, s):  # at the model's working resolution, like the training loss
            a = torch.from_numpy(np.ascontiguousarray(A[s:s + bs]))[:, None].to(dev)
            return bb(bb.preprocess(downsample_patches(a, factor)))

        with torch.inference_mode():
            for s in range(0, len(X), bs):
                fa = features(X, s)
                for j, Y in enumerate(Ys):
                    fb = features(Y, s)
                    per = style_loss([fa[t] for t in taps], [fb[t] for t in taps], list(lw),
                                     reduction="none")
                    out[j].append(per.double().cpu().numpy())
        return np.stack([np.concatenate(o) if o else np.zeros(0) for o in out])

    def reconstruct(self, X):
        """Decode the posterior mean of each patch: (n, P, P) in [0, 1].

        A decoder with noise (``decoder_input`` "noise" or "modulated") places its particles
        by a noise draw, which the posterior mean does not carry. The reconstruction is the
        draw closest to its patch in style loss (:meth:`style_distance`) among
        ``reconstruct_draws`` draws, seeded from the patch's own pixels (its seed and the
        next ones, :func:`matrep.seeds.next_seeds`): the noise inferred by a search, as the
        encoder infers z. One draw (or a decoder without noise): the patch's own seed. See
        docs/texturevae.md, "Reconstructions: the noise inferred too".
        """
        from matrep.seeds import next_seeds

        from .model import noise_seed

        X = check_patches(X)
        mu, _ = self.encode_full(X)
        own = [noise_seed(x) for x in X]
        k = int(self.reconstruct_draws) if self.decoder_input in ("noise", "modulated") else 1
        if k <= 1 or len(X) == 0:
            return self.decode(mu, seeds=own)
        out = []
        for s in range(0, len(X), RECONSTRUCT_CHUNK):  # k draws of a chunk in memory at once
            e = s + RECONSTRUCT_CHUNK
            x, m, o = X[s:e], mu[s:e], own[s:e]
            draws = np.stack([self.decode(m, seeds=o)]
                             + [self.decode(m, seeds=list(sd))
                                for sd in zip(*(next_seeds(v, k - 1) for v in o))])
            pick = self._style_distances(x, draws).argmin(0)  # the first of equals: own seed
            out.append(draws[pick, np.arange(len(x))])
        return np.concatenate(out)

    def sample(self, n, seed=0):
        """``n`` new patches decoded from z ~ N(0, I) (seeded): (n, P, P) in [0, 1]."""
        self._model()
        from .model import noise_seed

        z = np.random.default_rng(seed).standard_normal((int(n), int(self.latent_dim)))
        z = z.astype(np.float32)
        return self.decode(z, seeds=[noise_seed(r) for r in z])

    def traverse(self, x, dims, values=None):
        """Latent traversal (the paper's Fig. 6).

        Parameters
        ----------
        x : array of shape (P, P) — one patch
        dims : sequence of int — latent dimensions to vary
        values : sequence of float, default ``np.linspace(-4, 4, 10)``

        Returns
        -------
        array of shape (len(dims), len(values), P, P): row i decodes z = Enc(x) with
        z[dims[i]] set to each value, the other dimensions unchanged.
        """
        values = np.linspace(-4, 4, 10) if values is None else np.asarray(values, np.float32)
        x = np.asarray(x)
        if x.ndim != 2:
            raise BadInputError(None, f"x must be one patch of shape (P, P), got {x.shape}")
        mu, _ = self.encode_full(x[None])
        dims = [int(d) for d in dims]
        for d in dims:
            if not 0 <= d < int(self.latent_dim):
                raise BadInputError(None, f"latent dimension {d} out of range 0..{int(self.latent_dim) - 1}")
        Z = np.repeat(mu, len(dims) * len(values), axis=0).reshape(len(dims), len(values), -1)
        for i, d in enumerate(dims):
            Z[i, :, d] = values
        from .model import noise_seed

        Z = Z.reshape(-1, Z.shape[-1])
        out = self.decode(Z, seeds=[noise_seed(x)] * len(Z))  # one placement along each row
        return out.reshape(len(dims), len(values), *out.shape[1:])
