"""A known-answer domain shift for the adaptation code: handwritten digits -> the same digits blended with natural
photographs (the MNIST -> MNIST-M recipe of the DANN paper, Ganin et al. 2016), from data that ships with
scikit-learn and scikit-image, so it runs offline and nobody here drew it.

    digits:mnist     grey digits 0-6 (scikit-learn's ``load_digits``, 8 x 8, upsampled), white on black
    digits:mnistm    the other half of the digits, each blended with a random colour patch of a natural photograph
                     as MNIST-M does: ``out = |patch - digit|`` per channel

The seven digits 0-6 stand in for the seven classes (label ``d`` is digit ``d``; the expression names mean nothing
here). The 1,257 digit images 0-6 are split once, by a fixed permutation, into two disjoint halves (source: the
``mnist`` half, target: the ``mnistm`` half) and each half into train / val / test (60 / 20 / 20 %), so source and
target never share a drawing and no split leaks into another. ``n`` samples are drawn from a split's digits in
turn; each draw gets its own patch (``mnistm``) or its own shift of up to two pixels (both), from an RNG keyed by
(seed, split, domain), so a spec gives the same arrays on every machine. The photographs are every colour
photograph bundled with scikit-image and scikit-learn (``PHOTOS``).

The DANN paper reports 52.25 % (source only) and 76.66 % (DANN) on MNIST -> MNIST-M; ``benchmarks/bench_digits.py``
runs fer-lab's methods and a minimal reference DANN on this pair.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fer_lab.data.spec import DATASETS
from fer_lab.data.store import FaceArrays

#: Colour photographs bundled with scikit-image (``skimage.data``) and scikit-learn (``load_sample_images``).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle", "sklearn:china", "sklearn:flower")
CLASSES = 7
_SPLITS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}
_SPLIT_CODES = {"train": 1, "val": 2, "test": 3}
_DOMAINS = {"mnist": 0, "mnistm": 1}


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = d.target < CLASSES
    return (d.images[keep] / 16.0).astype(np.float32), d.target[keep].astype(np.int64)


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    import skimage.data as sk

    out = []
    for name in PHOTOS:
        if name.startswith("sklearn:"):
            from sklearn.datasets import load_sample_image

            img = load_sample_image(name.split(":", 1)[1] + ".jpg")
        else:
            img = getattr(sk, name)()
            img = img[0] if isinstance(img, tuple) else img
        out.append(np.ascontiguousarray(img[..., :3], dtype=np.uint8))
    return tuple(out)


def _indices(domain: str, split: str) -> np.ndarray:
    """The digit rows of one (domain, split): fixed halves, then fixed split fractions."""
    _, labels = _digits()
    order = np.random.default_rng(20160530).permutation(len(labels))     # fixed: independent of any run seed
    half = order[: len(order) // 2] if domain == "mnist" else order[len(order) // 2:]
    lo, hi = _SPLITS[split]
    return np.sort(half[int(lo * len(half)): int(hi * len(half))])


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(images)[:, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).numpy()


def make_digits(domain: str, n: int, size: int, seed: int, split: str) -> FaceArrays:
    if domain not in _DOMAINS:
        raise ValueError(f"digits domain {domain!r} is not one of {', '.join(_DOMAINS)}")
    if split not in _SPLITS:
        raise ValueError(f"digits split {split!r} is not one of {', '.join(_SPLITS)}")
    if n <= 0 or size < 16:
        raise ValueError(f"digits: n must be positive and size at least 16, got n={n}, size={size}")
    images, labels = _digits()
    rows = _indices(domain, split)
    pick = rows[np.arange(n) % len(rows)]
    rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], _DOMAINS[domain]])
    # the digit drawn at 80 % of the image, shifted by up to 2 px (both domains)
    inner = int(round(size * 0.8))
    glyphs = _upsample(images[pick], inner)
    canvas = np.zeros((n, size, size), np.float32)
    offsets = (size - inner) // 2 + rng.integers(-2, 3, size=(n, 2))
    offsets = np.clip(offsets, 0, size - inner)
    for i, (dy, dx) in enumerate(offsets):
        canvas[i, dy: dy + inner, dx: dx + inner] = glyphs[i]
    digit = (canvas * 255.0)[..., None].repeat(3, axis=-1)
    if domain == "mnistm":
        photos = _photos()
        which = rng.integers(0, len(photos), size=n)
        patches = np.empty((n, size, size, 3), np.float32)
        for i, p in enumerate(which):
            img = photos[p]
            y = rng.integers(0, img.shape[0] - size + 1)
            x = rng.integers(0, img.shape[1] - size + 1)
            patches[i] = img[y: y + size, x: x + size]
        digit = np.abs(patches - digit)                                   # MNIST-M: |patch - digit|
    out = np.clip(np.rint(digit), 0, 255).astype(np.uint8)
    # landmarks: the five-point template placed on the digit's box (only the global stream is meaningful)
    template = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.72], [0.62, 0.72]], np.float32)
    landmarks = (template[None] * inner + offsets[:, None, ::-1]).astype(np.float32)
    meta = {"name": f"digits:{domain}", "domain": domain, "split": split, "seed": int(seed), "n": int(n),
            "size": int(size), "digit_rows": len(rows), "photos": list(PHOTOS) if domain == "mnistm" else []}
    return FaceArrays(out, labels[pick].copy(), landmarks, meta=meta)


@DATASETS.register("digits")
def digits(arg: str, split: str = "train", n: int = 2000, size: int = 32, seed: int = 0) -> FaceArrays:
    """Dataset factory for ``digits:mnist`` / ``digits:mnistm`` (``?n=..&size=..&seed=..``)."""
    return make_digits(arg or "mnist", n=n, size=size, seed=seed, split=split)
