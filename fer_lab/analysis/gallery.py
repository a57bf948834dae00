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


def class_grid(data: FaceArrays, per_class: int = 8, seed: int = 0, label_width: int = 70) -> np.ndarray:
    """The faces' own pixels, unscaled: one row per expression (``per_class`` seeded picks, a blank cell where a
    class has fewer), the class name in a strip on the left. uint8 ``[7 * S, label_width + per_class * S, 3]``."""
    from PIL import Image, ImageDraw

    images = np.asarray(data.images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"class_grid needs images [N, S, S, 3], got {images.shape}")
    size = images.shape[1]
    picks = pick_per_class(data, per_class, seed)
    labels = np.asarray(data.labels)[picks]
    grid = np.full((len(EXPRESSIONS) * size, label_width + per_class * size, 3), 255, np.uint8)
    for c in range(len(EXPRESSIONS)):
        for k, i in enumerate(picks[labels == c]):
            grid[c * size:(c + 1) * size, label_width + k * size:label_width + (k + 1) * size] = images[i]
    canvas = Image.fromarray(grid)
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(EXPRESSIONS):
        draw.text((4, c * size + size // 2 - 6), name, fill=(0, 0, 0))
    return np.asarray(canvas)


def write_galleries(out_dir: str, domains: tuple[str, ...] = ("lab", "wild", "lowres", "profile"), per_class: int = 8,
                    size: int = 112, seed: int = 7, split: str = "test", n: int = 280) -> dict[str, str]:
    """``fer-lab synth gallery``: one PNG per SynthFER domain (:func:`class_grid` of ``n`` freshly drawn ``split``
    faces), ``<out_dir>/synthfer_<domain>.png``; returns ``{domain: path}``."""
    from pathlib import Path

    from PIL import Image

    from fer_lab.data.synth import make_synthfer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for dom in domains:
        data = make_synthfer(dom, n=n, size=size, seed=seed, split=split, class_prior="1,1,1,1,1,1,1")
        path = out / f"synthfer_{dom}.png"
        Image.fromarray(class_grid(data, per_class, seed)).save(path)
        paths[dom] = str(path)
    return paths
