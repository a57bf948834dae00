"""From arrays to training batches: tensors at the working size, batched augmentation, deterministic streams.

A **batch** is a ``dict[str, Tensor]`` with the fields of the design's conventions:

==============  =================  ====================================================================
key             shape / dtype      meaning
==============  =================  ====================================================================
``images``      [B,3,S,S] float32  RGB in [0, 1] (models normalise internally)
``labels``      [B] int64          canonical expression index, -1 where unknown
``landmarks``   [B,5,2] float32    pixel (x, y) of the five landmarks in ``images``
``domain``      [B] int64          domain id (sources 0..k-1, target k)
``index``       [B] int64          row of the sample in its dataset (for per-sample stores)
``pose``        [B,3] float32      yaw, pitch, roll in degrees (NaN unknown)
``subject``     [B] int64          identity id (-1 unknown)
``strong``      [B,3,S,S] float32  optional strongly augmented view, with ``strong_landmarks``
==============  =================  ====================================================================

Batches are a pure function of ``(seed, stream, step)``: the sample order is a per-epoch permutation and the
augmentation draws come from a generator seeded by the step, so a resumed run sees exactly the batches an
uninterrupted run would, with no iterator state to save.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fer_lab.data.store import FaceArrays
from fer_lab.labels import FLIP_PERMUTATION

Batch = dict[str, torch.Tensor]


def seed_for(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (stable across processes and platforms)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, np.uint64)[0] >> 1)


class FaceTensors:
    """A dataset split held as tensors at a square working size ``image_size``.

    Images stay uint8 until a batch is cut, so a 20k x 112 x 112 split costs 750 MB, not 3 GB.
    """

    def __init__(self, arrays: FaceArrays, image_size: int, domain: int = 0) -> None:
        self.name = str(arrays.meta.get("spec", arrays.name))
        self.meta = dict(arrays.meta)
        self.domain = int(domain)
        images = torch.from_numpy(np.array(arrays.images, copy=True)).permute(0, 3, 1, 2)  # N,3,H,W uint8
        landmarks = torch.from_numpy(np.array(arrays.landmarks, dtype=np.float32))
        h, w = images.shape[-2:]
        if (h, w) != (image_size, image_size):
            images = _resize_uint8(images, image_size)
            landmarks[..., 0] *= image_size / w
            landmarks[..., 1] *= image_size / h
        self.images = images.contiguous()
        self.landmarks = landmarks
        self.labels = torch.from_numpy(np.array(arrays.labels, dtype=np.int64))
        self.pose = torch.from_numpy(np.array(arrays.pose, dtype=np.float32))
        self.subject = torch.from_numpy(np.array(arrays.subject, dtype=np.int64))
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor, augment: "Augment | None" = None,
              generator: torch.Generator | None = None, strong: "Augment | None" = None) -> Batch:
        index = torch.as_tensor(index, dtype=torch.int64)
        raw = self.images[index].float().div_(255.0)
        lms = self.landmarks[index]
        out: Batch = {
            "labels": self.labels[index], "domain": torch.full((len(index),), self.domain, dtype=torch.int64),
            "index": index, "pose": self.pose[index], "subject": self.subject[index],
        }
        if augment is not None:
            out["images"], out["landmarks"], out["pose"] = augment(raw, lms, generator, pose=out["pose"])
        else:
            out["images"], out["landmarks"] = raw, lms.clone()
        if strong is not None:
            out["strong"], out["strong_landmarks"] = strong(raw, lms, generator)
        return out


def _resize_uint8(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i:i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


@dataclass(frozen=True)
class Augment:
    """Batched random augmentation that moves the landmarks with the pixels.

    One affine warp per image (flip, rotation, scale, translation) through ``grid_sample``, then colour jitter
    and optional cutout. Landmarks go through the same map exactly; a flip also swaps left/right rows.
    ``Augment.weak()`` is the usual training view; ``Augment.strong()`` the RandAugment-like view for
    consistency / pseudo-label methods.
    """

    flip: float = 0.5
    rotate: float = 10.0        # max degrees
    scale: float = 0.05         # max relative zoom in/out
    translate: float = 0.06     # max shift, fraction of the side
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.0
    grey: float = 0.0           # probability of dropping colour
    cutout: float = 0.0         # probability of one erased box (side 20-40 %)

    @classmethod
    def weak(cls) -> "Augment":
        return cls()

    @classmethod
    def strong(cls) -> "Augment":
        return cls(flip=0.5, rotate=25.0, scale=0.15, translate=0.12, brightness=0.4, contrast=0.4,
                   saturation=0.4, grey=0.2, cutout=0.5)

    def __call__(self, images: torch.Tensor, landmarks: torch.Tensor, generator: torch.Generator | None = None,
                 pose: torch.Tensor | None = None):
        """``(images, landmarks)`` warped and jittered; with ``pose`` ``[B, 3]`` (yaw, pitch, roll in degrees)
        also the pose of the warped face, ``(images, landmarks, pose)``: a flip negates yaw and roll. The in-plane
        rotation is left out of the pose (it is at most ``rotate`` degrees of roll; NaN stays NaN)."""
        b, _, h, w = images.shape
        if h != w:
            raise ValueError(f"Augment expects square images, got {h}x{w}")
        g = generator

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return torch.rand(*(shape or (b,)), generator=g) * (hi - lo) + lo

        flip = torch.rand(b, generator=g) < self.flip
        angle = uniform(-self.rotate, self.rotate) * math.pi / 180
        s = uniform(1 - self.scale, 1 + self.scale)
        d = uniform(-self.translate, self.translate, b, 2) * 2  # normalised coordinates span 2
        cos, sin = torch.cos(angle), torch.sin(angle)
        fx = torch.where(flip, -1.0, 1.0)
        # forward map on normalised coordinates: u = M v + d, with M = s R diag(fx, 1)
        m = torch.stack([torch.stack([s * cos * fx, -s * sin], -1), torch.stack([s * sin * fx, s * cos], -1)], -2)
        m_inv = torch.linalg.inv(m)
        theta = torch.cat([m_inv, -(m_inv @ d.unsqueeze(-1))], -1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        v = landmarks * (2.0 / w) - 1.0
        u = torch.einsum("bij,bkj->bki", m, v) + d.unsqueeze(1)
        lms = (u + 1.0) * (w / 2.0)
        lms = torch.where(flip[:, None, None], lms[:, list(FLIP_PERMUTATION)], lms)

        if self.brightness:
            out = out * uniform(1 - self.brightness, 1 + self.brightness)[:, None, None, None]
        if self.contrast:
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - mean) * uniform(1 - self.contrast, 1 + self.contrast)[:, None, None, None] + mean
        grey_img = out.mean(dim=1, keepdim=True)
        if self.saturation:
            sat = uniform(1 - self.saturation, 1 + self.saturation)[:, None, None, None]
            out = (out - grey_img) * sat + grey_img
        if self.grey:
            to_grey = (torch.rand(b, generator=g) < self.grey)[:, None, None, None]
            out = torch.where(to_grey, grey_img.expand_as(out), out)
        if self.cutout:
            side = uniform(0.2, 0.4) * w
            cx, cy = uniform(0, w), uniform(0, w)
            xs = torch.arange(w, dtype=torch.float32) + 0.5
            inside_x = (xs[None, :] - cx[:, None]).abs() < side[:, None] / 2
            inside_y = (xs[None, :] - cy[:, None]).abs() < side[:, None] / 2
            box = inside_y[:, :, None] & inside_x[:, None, :]
            use = (torch.rand(b, generator=g) < self.cutout)[:, None, None]
            out = out.masked_fill((box & use)[:, None], 0.5)
        if pose is None:
            return out.clamp_(0.0, 1.0), lms
        mirror = torch.tensor([-1.0, 1.0, -1.0], dtype=pose.dtype)          # yaw, pitch, roll
        return out.clamp_(0.0, 1.0), lms, torch.where(flip[:, None], pose * mirror, pose)


class BatchStream:
    """An infinite, resumable stream of batches over one dataset.

    ``stream.batch(step)`` is a pure function of ``(seed, stream_id, step)``: epoch ``e`` visits the samples in
    the permutation drawn from ``(seed, stream_id, e)``, dropping the last incomplete batch.
    """

    def __init__(self, data: FaceTensors, batch_size: int, seed: int, stream_id: int,
                 augment: Augment | None = None, strong: Augment | None = None) -> None:
        if len(data) < batch_size:
            raise ValueError(f"{data.name}: {len(data)} samples is fewer than one batch of {batch_size}")
        self.data, self.batch_size, self.seed, self.stream_id = data, batch_size, seed, stream_id
        self.augment, self.strong = augment, strong
        self.per_epoch = len(data) // batch_size
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng(seed_for(self.seed, self.stream_id, epoch, 1))
            self._perm, self._perm_epoch = torch.from_numpy(rng.permutation(len(self.data))), epoch
        return self._perm

    def batch(self, step: int) -> Batch:
        epoch, k = divmod(step, self.per_epoch)
        index = self._permutation(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        g = torch.Generator().manual_seed(seed_for(self.seed, self.stream_id, step, 2))
        return self.data.batch(index, self.augment, g, self.strong)

    def iter_from(self, step: int = 0) -> Iterator[Batch]:
        while True:
            yield self.batch(step)
            step += 1


def iterate(data: FaceTensors, batch_size: int = 256) -> Iterator[Batch]:
    """All samples in order, unaugmented (evaluation and feature extraction)."""
    for i in range(0, len(data), batch_size):
        yield data.batch(torch.arange(i, min(i + batch_size, len(data))))


def concat_batches(batches: Sequence[Batch]) -> Batch:
    """One batch from several (multi-source input for methods that pool their sources)."""
    if isinstance(batches, dict):
        return batches
    keys = set(batches[0]).intersection(*batches[1:])
    return {k: torch.cat([b[k] for b in batches]) for k in sorted(keys)}


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
