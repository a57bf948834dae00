"""The in-memory / on-disk form every dataset takes before loading: aligned uint8 faces plus annotations.

A store on disk is a folder of ``.npy`` files (memory-mapped on load) and a ``meta.json``; it is written to a
temporary folder and renamed into place, so a killed writer never leaves a half store behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fer_lab.labels import EXPRESSIONS, NUM_CLASSES, NUM_LANDMARKS

_ARRAYS = ("images", "labels", "landmarks", "pose", "subject")
#: meta entries holding one value per row (kept in step by :meth:`FaceArrays.subset`)
PER_ROW_META = ("sources", "splits")


@dataclass
class FaceArrays:
    """A dataset split as arrays.

    images:    ``[N, H, W, 3]`` uint8, RGB (grey datasets repeat the channel)
    labels:    ``[N]`` int64 in :data:`fer_lab.labels.EXPRESSIONS` order, -1 where unknown
    landmarks: ``[N, 5, 2]`` float32 pixel (x, y) of the five landmarks in these images
    pose:      ``[N, 3]`` float32 yaw, pitch, roll in degrees, NaN where unknown
    subject:   ``[N]`` int64 identity id, -1 where unknown
    meta:      free JSON-able facts (name, domain, split, source files, drop counts, ...)
    """

    images: np.ndarray
    labels: np.ndarray
    landmarks: np.ndarray
    pose: np.ndarray | None = None
    subject: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.pose is None:
            self.pose = np.full((n, 3), np.nan, np.float32)
        if self.subject is None:
            self.subject = np.full((n,), -1, np.int64)
        self.validate()

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "dataset"))

    def validate(self) -> None:
        n = len(self.images)
        what = self.name
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"{what}: images must be uint8 [N,H,W,3], got {self.images.dtype} {self.images.shape}")
        checks = {
            "labels": (self.labels, (n,)),
            "landmarks": (self.landmarks, (n, NUM_LANDMARKS, 2)),
            "pose": (self.pose, (n, 3)),
            "subject": (self.subject, (n,)),
        }
        for key, (arr, shape) in checks.items():
            if tuple(arr.shape) != shape:
                raise ValueError(f"{what}: {key} has shape {tuple(arr.shape)}, expected {shape}")
        bad = (self.labels < -1) | (self.labels >= NUM_CLASSES)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{what}: label {int(self.labels[i])} at row {i} is outside -1..{NUM_CLASSES - 1}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def class_counts(self) -> dict[str, int]:
        c = Counter(int(v) for v in self.labels)
        out = {name: c.get(i, 0) for i, name in enumerate(EXPRESSIONS)}
        if c.get(-1):
            out["unknown"] = c[-1]
        return out

    def subset(self, index: np.ndarray) -> "FaceArrays":
        """The rows ``index``; per-row meta lists (:data:`PER_ROW_META`, e.g. each face's source file) follow them,
        and ``class_counts`` is recomputed."""
        index = np.asarray(index)
        meta = dict(self.meta)
        for key in PER_ROW_META:
            rows = meta.get(key)
            if isinstance(rows, list) and len(rows) == len(self):
                meta[key] = [rows[int(i)] for i in np.arange(len(self))[index]]
        out = FaceArrays(
            np.ascontiguousarray(self.images[index]), self.labels[index], self.landmarks[index],
            self.pose[index], self.subject[index], meta,
        )
        if "class_counts" in meta:
            out.meta["class_counts"] = out.class_counts()
        return out

    # -- on disk -----------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, overwrite: bool = True) -> Path:
        """Write the store to ``folder`` atomically (a temporary folder renamed into place).

        Safe when several processes write the same folder at once (e.g. a shared cache): with
        ``overwrite=False`` an existing store is kept and this copy discarded; with ``overwrite=True`` the old
        store is moved aside and removed only after the new one is in place.
        """
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".tmp", dir=folder.parent))
        try:
            for key in _ARRAYS:
                np.save(tmp / f"{key}.npy", np.ascontiguousarray(getattr(self, key)))
            (tmp / "meta.json").write_text(json.dumps(self.meta, indent=1, sort_keys=True, default=str))
            try:
                os.rename(tmp, folder)
            except OSError:  # the folder exists (another writer may have just put it there)
                if not overwrite:
                    shutil.rmtree(tmp, ignore_errors=True)
                    return folder
                trash = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".old", dir=folder.parent))
                try:
                    os.replace(folder, trash / "store")
                except FileNotFoundError:
                    pass
                os.rename(tmp, folder)
                shutil.rmtree(trash, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, mmap: bool = True) -> "FaceArrays":
        folder = Path(folder)
        missing = [k for k in _ARRAYS if not (folder / f"{k}.npy").is_file()]
        if missing or not (folder / "meta.json").is_file():
            raise FileNotFoundError(
                f"{folder}: not a fer-lab store (missing {', '.join([m + '.npy' for m in missing] or ['meta.json'])})"
            )
        mode = "r" if mmap else None
        arrays = {k: np.load(folder / f"{k}.npy", mmap_mode=mode) for k in _ARRAYS}
        meta = json.loads((folder / "meta.json").read_text())
        return cls(meta=meta, **arrays)
