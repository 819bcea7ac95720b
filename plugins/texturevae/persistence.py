"""Saving and loading a trained texture-VAE (safetensors + JSON, never pickle): the state
and its config, checked against each other on load. A mixin of
:class:`matrep.plugins.texturevae.encoder.TextureVAEEncoder`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from matrep.encoder import CONFIG_NAME, STATE_NAME, _jsonable
from matrep.errors import BadInputError, EncoderContractError

from .network import _set_layout


class PersistenceMixin:
    """``save``/``load`` of :class:`TextureVAEEncoder` that keep the other files of a run
    folder; ``_get_state``/``_set_state`` validate a saved config against its tensors."""

    def provenance(self) -> dict:
        """Base provenance plus the frozen VGG19's weights once fitted.

        ``weights`` holds the weights' full record (name, sha256, source, preprocessing) under
        the key ``vgg19`` uses, so the feature store writes ``weights_name`` and
        ``weights_sha256`` for texturevae features too; ``backbone`` summarises it with the
        encoder taps.
        """
        from matrep.backbone import weights_provenance

        prov = super().provenance()
        info = getattr(self, "weights_info_", None)
        if info is not None:
            prov.update(weights_provenance(info, self.encoder_taps))
            prov["backbone"] = {"name": "vgg19", "weights": info.get("name"),
                                "sha256": info.get("sha256"),
                                "preprocessing": info.get("preprocessing"),
                                "taps": list(self.encoder_taps)}
        return prov

    def _get_state(self):
        self._check_fitted()
        arrays = {f"model.{k}": v.detach().cpu().numpy()
                  for k, v in self.model_.state_dict().items()}
        meta = {"patch_size": self.patch_size_, "weights_info": self.weights_info_,
                "model_patch_size": int(getattr(self, "model_patch_size_", self.patch_size_)),
                "layer_weights": list(self._layer_weights()),
                "best_epoch": getattr(self, "best_epoch_", None),
                "history": getattr(self, "history_", []),
                "n_train_patches": getattr(self, "n_train_patches_", None),
                "n_val_patches": getattr(self, "n_val_patches_", None),
                "split": getattr(self, "split_", None),
                "precision": getattr(self, "precision_", None),
                "in_features": int(self.model_.feat_mean.shape[0])}
        if getattr(self, "distributed_", None):
            meta["distributed"] = self.distributed_
        return arrays, meta

    def _model_args(self, in_features: int, patch_size: int) -> tuple:
        """The arguments of :class:`~matrep.plugins.texturevae.model.TextureVAE` for these
        parameters (``fit`` builds the model with them and loading rebuilds it)."""
        return (int(in_features), int(self.latent_dim), int(patch_size),
                tuple(self.decoder_channels), self._logvar_bounds(),
                str(self.decoder_input), str(self.decoder_padding),
                self._decoder_choice("decoder_upsample"),
                int(getattr(self, "decoder_noise_start", 0)),
                self._decoder_choice("decoder_noise"), self._decoder_choice("decoder_block"),
                int(getattr(self, "decoder_convs", 1)))

    def _decoder_choice(self, name: str) -> str:
        """A decoder choice option, or the paper's value for a model saved before it existed."""
        from .model import DECODER_CHOICES

        return str(getattr(self, name, DECODER_CHOICES[name][1]))

    def _set_state(self, arrays, meta):
        import torch

        from .model import TextureVAE

        self._validate_params()
        if not isinstance(meta.get("weights_info") or {}, dict):
            raise EncoderContractError("saved texture-VAE config: meta.weights_info must be an object")
        try:
            args = self._model_args(int(meta["in_features"]),
                                    int(meta.get("model_patch_size") or meta["patch_size"]))
            with torch.device("meta"):  # shapes first: a config must not make us allocate more
                want = {k: tuple(v.shape) for k, v in TextureVAE(*args).state_dict().items()}
            got = {k[len("model."):]: tuple(v.shape) for k, v in arrays.items()
                   if k.startswith("model.")}
            if got != want:
                bad = sorted(set(want) ^ set(got)) or sorted(k for k in want if want[k] != got[k])
                raise ValueError(f"tensor {bad[0]!r}: config wants {want.get(bad[0])}, "
                                 f"state has {got.get(bad[0])}")
            for k, v in arrays.items():
                if v.dtype.kind != "f" or not np.isfinite(v).all():
                    raise ValueError(f"tensor {k!r} is not finite floating point ({v.dtype})")
            model = TextureVAE(*args)
            model.load_state_dict({k[len("model."):]: torch.from_numpy(np.array(v))
                                   for k, v in arrays.items() if k.startswith("model.")})
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise EncoderContractError(f"saved texture-VAE state does not match its config "
                                       f"({type(exc).__name__}: {exc})") from None
        _set_layout(model, self._torch_device())
        model.eval()
        self.model_ = model
        self.patch_size_ = int(meta["patch_size"])
        self.model_patch_size_ = int(meta.get("model_patch_size") or meta["patch_size"])
        self.best_epoch_ = meta.get("best_epoch")
        if isinstance(self.layer_weights, str) and meta.get("layer_weights") is not None:
            self.layer_weights_ = tuple(float(w) for w in meta["layer_weights"])
        self.n_features_in_ = self.patch_size_ ** 2
        self.weights_info_ = meta.get("weights_info") or {}
        self.history_ = meta.get("history", [])
        self.n_train_patches_ = meta.get("n_train_patches")
        self.n_val_patches_ = meta.get("n_val_patches")
        self.split_ = meta.get("split")  # None for models saved before it was recorded
        self.precision_ = meta.get("precision")
        if meta.get("distributed"):
            self.distributed_ = meta["distributed"]

    def save(self, path) -> Path:
        """Write ``config.json`` + ``state.safetensors`` into the folder ``path``.

        Unlike :meth:`BaseEncoder.save` this keeps the other files of a run folder
        (checkpoint, log.csv, figures): each file is replaced atomically, the state first; the
        config records the state's sha256, and :meth:`load` checks it.
        """
        from safetensors.numpy import save_file

        from matrep._version import __version__
        from matrep.atomic import atomic_path, atomic_write_text

        arrays, meta = self._get_state()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / STATE_NAME, suffix=".safetensors") as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        meta["state_sha256"] = _sha256(path / STATE_NAME)
        config = {"encoder": self.name, "matrep_version": __version__,
                  "params": _jsonable(self.get_params(deep=False)), "meta": _jsonable(meta),
                  "provenance": self.provenance()}
        atomic_write_text(path / CONFIG_NAME, json.dumps(config, indent=2))
        return path

    @classmethod
    def load(cls, path):
        """Load a trained texture-VAE from a run folder (``config.json`` + ``state.safetensors``)."""
        path = Path(path)
        cfg = path / CONFIG_NAME
        if cfg.is_file():
            from matrep.encoder import read_config

            want = read_config(path).get("meta", {}).get("state_sha256")
            st = path / STATE_NAME
            if not st.is_file():
                raise BadInputError(path, f"no {STATE_NAME}: the run did not finish; continue it "
                                          "with `matrep fit ... --resume`")
            if want and _sha256(st) != want:
                raise BadInputError(st, "does not match config.json (sha256 differs): the save "
                                        "was interrupted; save again or refit")
        elif (path / "checkpoint").is_dir():
            raise BadInputError(path, "holds a checkpoint but no final model (config.json): the "
                                      "run did not finish; continue it with `matrep fit ... --resume`")
        return super().load(path)


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
