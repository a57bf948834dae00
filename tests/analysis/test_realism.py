import numpy as np
import pytest
import torch

from fer_lab.analysis.realism import PHOTO_CLASSIFIERS, photo_classifier, rate_faces, rate_synthfer
from fer_lab.labels import NUM_CLASSES


class _Says(torch.nn.Module):
    """Predicts the class written in each image's first pixel (red channel)."""

    def forward(self, x):
        cls = (x[:, 0, 0, 0] * 255).round().long()
        return torch.nn.functional.one_hot(cls, NUM_CLASSES).float()


def test_rating_counts_on_constructed_predictions():
    labels = np.array([0, 0, 1, 3, 3, 3, 6])
    said = np.array([0, 1, 1, 3, 6, 3, 6])
    images = np.zeros((7, 8, 8, 3), np.uint8)
    images[:, 0, 0, 0] = said
    r = rate_faces(images, labels, _Says(), "x", batch=3)
    assert r.n == 7 and r.accuracy == pytest.approx(5 / 7) and r.majority_share == pytest.approx(3 / 7)
    assert r.recall["surprise"] == 0.5 and r.recall["fear"] == 1.0 and r.recall["happiness"] == pytest.approx(2 / 3)
    assert np.isnan(r.recall["disgust"])
    assert r.confusion.sum() == 7 and r.confusion[3, 6] == 1 and r.confusion[0, 1] == 1
    assert "acc  71.4 %" in r.line()


def test_synthfer_is_rated_by_both_photograph_models():
    pytest.importorskip("h5py")
    out = rate_synthfer(("lab", "wild"), n=14, size=48, classifiers=tuple(PHOTO_CLASSIFIERS))
    assert list(out) == ["mini-xception", "cnn48"]
    for ratings in out.values():
        assert [r.domain for r in ratings] == ["lab", "wild"]
        assert all(r.n == 14 and r.confusion.sum() == 14 and 0 <= r.accuracy <= 1 for r in ratings)
    # one render per domain: both classifiers rated the same faces (same labels, so the same class counts)
    np.testing.assert_array_equal(out["mini-xception"][0].confusion.sum(1), out["cnn48"][0].confusion.sum(1))


def test_an_unknown_classifier_is_named():
    with pytest.raises(ValueError, match=r"unknown photograph classifier 'vgg'.*mini-xception, cnn48"):
        photo_classifier("vgg")
