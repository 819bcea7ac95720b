"""The texture-VAE encoder (Sardeshmukh et al. 2021): ``TextureVAEEncoder``.

Registered as the ``texturevae`` entry point of group ``matrep.encoders``. Importing this
package does not import torch; the model, training loop and figures load when used:

* :mod:`.model` — latent head, decoder, feature pooling, KL;
* :mod:`.cache` — per-patch VGG19 features and style targets computed once;
* :mod:`.train` — the checkpointed, resumable training loop, with :mod:`.settings` (run
  settings, spike monitor, held-out split), :mod:`.step` (the loss and one step) and
  :mod:`.checkpoint` (checkpoints and log.csv);
* :mod:`.encoder` — the scikit-learn-shaped encoder, with the mixins :mod:`.params`,
  :mod:`.network` (frozen VGG19), :mod:`.generative` (decode, sample, ...) and
  :mod:`.persistence` (save, load);
* :mod:`.figures` — reconstruction, sample and traversal figures.
"""

from .encoder import TextureVAEEncoder

__all__ = ["TextureVAEEncoder"]
