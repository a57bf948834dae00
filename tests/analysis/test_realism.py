import numpy as np
import pytest
import torch

from fer_lab.analysis.realism import PHOTO_CLASSIFIERS, face_boxes, photo_classifier, rate_faces, rate_synthfer
from fer_lab.data.align import Detections
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


def test_boxes_crop_each_face_and_a_face_not_found_counts_wrong():
    labels = np.array([3, 3, 5, 0])
    images = np.zeros((4, 10, 10, 3), np.uint8)
    images[:, 0, 0, 0] = 6                      # outside the boxes: what the whole image would say
    images[0, 2, 3, 0] = 3                      # each box's first pixel says the class seen in the box
    images[1, 5, 5, 0] = 4
    images[2, 1, 1, 0] = 5
    boxes = [(3, 2, 9, 9), (5, 5, 10, 10), (1, 1, 6, 6), None]
    r = rate_faces(images, labels, _Says(), "x", boxes=boxes)
    assert r.found == 0.75 and r.accuracy == 0.5
    assert r.recall["happiness"] == 0.5 and r.recall["anger"] == 1.0 and r.recall["surprise"] == 0.0
    assert r.confusion.sum() == 3 and r.confusion[3, 4] == 1      # the missed face is in no cell
    assert "face found in 75.0 %" in r.line()
    whole = rate_faces(images, labels, _Says(), "x")
    assert whole.found == 1.0 and whole.accuracy == 0.0
    with pytest.raises(ValueError, match="3 boxes for 4 faces"):
        rate_faces(images, labels, _Says(), boxes=boxes[:3])


class _Finds:
    """A detector that returns the given boxes (or nothing) for each image, best first."""

    def __init__(self, per_image):
        self.per_image = list(per_image)
        self.calls = 0

    def detect(self, images):
        out = []
        for _ in range(len(images)):
            boxes = self.per_image[self.calls]
            self.calls += 1
            if not boxes:
                out.append(Detections.empty())
                continue
            b = np.asarray(boxes, np.float32)
            out.append(Detections(b, np.linspace(0.99, 0.9, len(b)).astype(np.float32),
                                  np.zeros((len(b), 5, 2), np.float32)))
        return out


def test_face_boxes_clip_round_and_drop_what_cannot_be_cropped():
    images = np.zeros((5, 20, 30, 3), np.uint8)
    det = _Finds([[(2.4, 3.6, 12.5, 15.2), (0, 0, 30, 20)],   # the best box is taken, rounded
                  [(-5.0, -2.0, 40.0, 25.0)],                  # clipped to the image
                  [],                                          # no face
                  [(10.0, 10.0, 12.0, 18.0)],                  # 2 px wide: too small to crop
                  [(28.0, 5.0, 35.0, 15.0)]])                  # clipped to 2 px: too small
    assert face_boxes(images, det, batch=2) == [(2, 4, 12, 15), (0, 0, 30, 20), None, None, None]
    assert det.calls == 5


def test_synthfer_is_rated_by_both_photograph_models():
    pytest.importorskip("h5py")
    out = rate_synthfer(("lab", "wild"), n=14, size=48, classifiers=tuple(PHOTO_CLASSIFIERS))
    assert list(out) == ["mini-xception", "cnn48"]
    for ratings in out.values():
        assert [r.domain for r in ratings] == ["lab", "wild"]
        assert all(r.n == 14 and r.confusion.sum() == round(14 * r.found) and 0 <= r.accuracy <= 1 for r in ratings)
    assert all(r.found == 1.0 for r in out["mini-xception"])      # the whole aligned face: nothing to find
    assert PHOTO_CLASSIFIERS["cnn48"].crop == "box"
    assert all(0.5 <= r.found <= 1.0 for r in out["cnn48"])       # MTCNN finds most SynthFER faces, even at 48 px


def test_an_unknown_classifier_is_named():
    with pytest.raises(ValueError, match=r"unknown photograph classifier 'vgg'.*mini-xception, cnn48"):
        photo_classifier("vgg")
