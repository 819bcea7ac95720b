"""The texture-VAE encoder's frozen VGG19: the device, the shared backbone, the statistics
the encoder head reads from it (``backbone_request``, ``transform_from_features``) and the
decoder's memory layout. A mixin of
:class:`matrep.plugins.texturevae.encoder.TextureVAEEncoder`.
"""

from __future__ import annotations

import numpy as np

from matrep.encoder import BackboneRequest


class NetworkMixin:
    """The frozen VGG19 of :class:`TextureVAEEncoder` on the encoder's device."""

    def _torch_device(self):
        from matrep.backbone import resolve_device
        from matrep.distributed import current

        dev = resolve_device(self.device)
        ctx = current()
        if dev.type == "cuda" and dev.index is None and ctx.is_distributed:
            import torch

            return torch.device(ctx.device)  # under torchrun: cuda:<LOCAL_RANK>
        return dev

    def _get_backbone(self):
        """The frozen VGG19 on the encoder's device (:func:`matrep.backbone.shared_backbone`:
        built once per process, channels-last on CUDA)."""
        bb = getattr(self, "_backbone", None)
        dev = self._torch_device()
        if bb is not None and getattr(self, "_backbone_device", None) == dev:
            return bb
        from matrep.backbone import check_weights, shared_backbone

        # cuDNN likes NHWC; oneDNN on CPU measured faster in NCHW (shared_backbone's default)
        bb = shared_backbone(self.weights, self._taps(), dev)
        check_weights(getattr(self, "weights_info_", None), dict(bb.weights_info),
                      encoder="texture-VAE", weights=self.weights)
        self._backbone, self._backbone_device = bb, dev
        return bb

    def backbone_request(self) -> BackboneRequest:
        """The shared VGG19 statistics the encoder head reads: ``(tap, pooling)`` for each of
        ``encoder_taps`` at the model's resolution (see :class:`matrep.encoder.BackboneRequest`)."""
        self._model()
        sha = (getattr(self, "weights_info_", None) or {}).get("sha256")
        if not sha:
            sha = str(dict(self._get_backbone().weights_info).get("sha256"))
        return BackboneRequest(weights=self.weights, weights_sha256=str(sha),
                               stats=tuple((t, str(self.pooling)) for t in self.encoder_taps),
                               downsample=self._factor(), device=str(self._torch_device()))

    def transform_from_features(self, stats):
        """:meth:`transform` from shared VGG19 statistics ``{(tap, pooling): array (n, k)}``
        (:class:`matrep.backbone.BackboneFeatures`): the head only, no VGG19 pass."""
        import torch

        model = self._model()
        parts = [np.asarray(stats[(t, str(self.pooling))], np.float32) for t in self.encoder_taps]
        pooled = np.concatenate(parts, axis=1)
        dev = self._torch_device()
        mus, lvs = [], []
        bs = int(self.batch_size_eval)
        with torch.inference_mode():
            for s in range(0, len(pooled), bs):
                mu, lv = model.encode(torch.from_numpy(pooled[s:s + bs]).to(dev))
                mus.append(mu.float().cpu().numpy())
                lvs.append(lv.float().cpu().numpy())
        L = int(self.latent_dim)
        mu = np.concatenate(mus) if mus else np.zeros((0, L), np.float32)
        lv = np.concatenate(lvs) if lvs else np.zeros((0, L), np.float32)
        return np.concatenate([mu, lv], axis=1) if self.output == "mu_logvar" else mu


def _set_layout(model, dev):
    """Channels-last convolutions on CUDA (cuDNN); NCHW on CPU, where oneDNN ran the training
    step faster in NCHW on the benchmark machine (docs/texturevae.md)."""
    import torch

    cl = dev.type == "cuda"
    model.decoder.channels_last = cl
    if cl:
        model.decoder.to(memory_format=torch.channels_last)

