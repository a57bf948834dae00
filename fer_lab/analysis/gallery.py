"""Look at the data: a grid of faces per domain and class with the five landmarks and the pose."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from fer_lab.data.store import FaceArrays
from fer_lab.labels import EXPRESSIONS

LANDMARK_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00")


def pick_per_class(data: FaceArrays, per_class: int = 1, seed: int = 0) -> np.ndarray:
    """Row indices: ``per_class`` seeded picks of each class (fewer where a class has fewer samples)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(len(EXPRESSIONS)):
        idx = np.flatnonzero(np.asarray(data.labels) == c)
        rows.append(rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else [])
    return np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])


def face_grid(datasets: Mapping[str, FaceArrays], per_class: int = 1, seed: int = 0, landmarks: bool = True,
              cell: float = 1.3):
    """A matplotlib figure: one row per domain (x ``per_class``), one column per expression, each face with
    its landmarks (left points in red/purple, right in blue/orange) and its yaw in the corner."""
    import matplotlib.pyplot as plt

    rows = len(datasets) * per_class
    fig, axes = plt.subplots(rows, len(EXPRESSIONS), figsize=(cell * len(EXPRESSIONS), cell * rows), squeeze=False)
    for r0, (name, data) in enumerate(datasets.items()):
        picks = pick_per_class(data, per_class, seed)
        labels = np.asarray(data.labels)[picks]
        for c in range(len(EXPRESSIONS)):
            mine = picks[labels == c]
            for k in range(per_class):
                ax = axes[r0 * per_class + k, c]
                ax.set_xticks([]), ax.set_yticks([])
                if k >= len(mine):
                    ax.set_axis_off()
                    continue
                i = mine[k]
                img = np.asarray(data.images[i])
                ax.imshow(img, extent=(0, img.shape[1], img.shape[0], 0), interpolation="nearest")
                if landmarks:
                    lm = np.asarray(data.landmarks[i])
                    ax.scatter(lm[:, 0], lm[:, 1], s=8, c=LANDMARK_COLOURS, linewidths=0)
                yaw = float(np.asarray(data.pose[i])[0])
                if np.isfinite(yaw):
                    ax.text(1, img.shape[0] - 2, f"{yaw:+.0f}°", color="yellow", fontsize=6)
                if r0 == 0 and k == 0:
                    ax.set_title(EXPRESSIONS[c], fontsize=8)
                if c == 0 and k == 0:
                    ax.set_ylabel(name, fontsize=8)
    fig.tight_layout(pad=0.2)
    return fig
