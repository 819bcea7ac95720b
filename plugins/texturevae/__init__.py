"""The texture-VAE encoder (Sardeshmukh et al. 2021): ``TextureVAEEncoder``.

Registered as the ``texturevae`` entry point of group ``matrep.encoders``. Importing this
package does not import torch; the model, training loop and figures load when used:

* :mod:`.model` — latent head, decoder, feature pooling, KL;
* :mod:`.cache` — per-patch VGG19 features and style targets computed once;
* :mod:`.train` — the checkpointed, resumable training loop;
* :mod:`.encoder` — the scikit-learn-shaped encoder;
* :mod:`.figures` — reconstruction, sample and traversal figures.
"""

from .encoder import TextureVAEEncoder

__all__ = ["TextureVAEEncoder"]
