"""What every real-dataset reader returns: a manifest of records, before any image is decoded or aligned.

A reader looks at the layout a user downloaded and lists, for one split, one :class:`Record` per face: where its
pixels are, its label already mapped to :data:`fer_lab.labels.EXPRESSIONS` order, and whatever geometry the
dataset ships (5 landmarks, a box, pose, subject). Everything it leaves out goes to :attr:`Manifest.dropped`
with the file and the reason, so a user can see what was dropped and why; nothing is skipped silently.

Readers never decode images while scanning (scanning 300k AffectNet rows must stay fast); :func:`read_image`
decodes one record and raises :class:`ReaderError` naming the file when it cannot.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from fer_lab.labels import EXPRESSIONS
from fer_lab.registry import Registry


class ReaderError(ValueError):
    """A dataset layout or file that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class Record:
    """One face of a dataset split, before decoding.

    source:    what error messages and the prepared store name: a path, or ``"fer2013.csv:row 17"``
    label:     index in :data:`fer_lab.labels.EXPRESSIONS`
    split:     ``"train"``, ``"val"`` or ``"test"``
    path:      image file to decode (``None`` when the pixels live in a table, see ``pixels``)
    pixels:    decoded pixels already in memory (CSV datasets): ``[H, W]`` or ``[H, W, 3]`` uint8
    landmarks: ``[5, 2]`` float32 (x, y) in the source image's pixels, order of :data:`fer_lab.labels.LANDMARKS`
    box:       face box ``(x1, y1, x2, y2)`` in the source image's pixels
    subject:   identity as the dataset names it (``"S005"``), ``None`` when unknown
    pose:      ``(yaw, pitch, roll)`` in degrees when the dataset gives it
    extra:     anything else worth keeping (votes, valence, sequence, intensity, ...)
    """

    source: str
    label: int
    split: str
    path: Path | None = None
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)
    landmarks: np.ndarray | None = field(default=None, compare=False, repr=False)
    box: tuple[float, float, float, float] | None = None
    subject: str | None = None
    pose: tuple[float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.label < len(EXPRESSIONS):
            raise ReaderError(f"{self.source}: label {self.label} is outside 0..{len(EXPRESSIONS) - 1}")
        if self.path is None and self.pixels is None:
            raise ReaderError(f"{self.source}: a record needs a path or pixels")
        if self.landmarks is not None and np.asarray(self.landmarks).shape != (5, 2):
            raise ReaderError(f"{self.source}: landmarks must be [5, 2], got {np.asarray(self.landmarks).shape}")


@dataclass(frozen=True)
class Dropped:
    """A file or row the reader left out, and why (e.g. ``"contempt: not one of the 7 classes"``)."""

    source: str
    reason: str


@dataclass
class Manifest:
    """One split of one dataset as records, plus everything that was dropped on the way."""

    name: str
    root: Path
    split: str
    records: list[Record]
    dropped: list[Dropped] = field(default_factory=list)
    align: str = "auto"                       # the FaceAligner mode suited to this dataset's images
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def class_counts(self) -> dict[str, int]:
        c = Counter(r.label for r in self.records)
        return {name: c.get(i, 0) for i, name in enumerate(EXPRESSIONS)}

    def drop_counts(self) -> dict[str, int]:
        return dict(Counter(d.reason for d in self.dropped).most_common())

    def summary(self) -> str:
        """A few lines a user can read: counts per class and what was dropped and why."""
        lines = [f"{self.name} [{self.split}] at {self.root}: {len(self.records)} faces"]
        lines += [f"  {name:<10} {n}" for name, n in self.class_counts().items()]
        if self.dropped:
            lines.append(f"  dropped {len(self.dropped)}:")
            lines += [f"    {n:>6}  {reason}" for reason, n in self.drop_counts().items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


class Reader(Protocol):
    """``scan(root, split, **options) -> Manifest``; raises :class:`ReaderError` for a wrong or broken layout."""

    def __call__(self, root: Path, split: str, **options: Any) -> Manifest: ...


READERS: Registry[Reader] = Registry("reader")


def read_image(record: Record) -> np.ndarray:
    """Decode a record's pixels as ``[H, W, 3]`` uint8 RGB; :class:`ReaderError` names the file on failure."""
    if record.pixels is not None:
        px = np.asarray(record.pixels)
        if px.dtype != np.uint8:
            raise ReaderError(f"{record.source}: pixels must be uint8, got {px.dtype}")
        if px.ndim == 2:
            px = np.repeat(px[:, :, None], 3, axis=2)
        if px.ndim != 3 or px.shape[2] != 3:
            raise ReaderError(f"{record.source}: pixels must be [H, W] or [H, W, 3], got {px.shape}")
        return px
    from PIL import Image, UnidentifiedImageError

    path = Path(record.path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReaderError(f"{path}: image file is missing") from None
    except OSError as e:
        raise ReaderError(f"{path}: cannot read image file ({e.strerror or e})") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # forces a full decode: truncated files fail here, not later in a worker
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ReaderError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def require(path: Path, what: str, hint: str = "") -> Path:
    """``path`` if it exists, else a :class:`ReaderError` saying what was expected there."""
    if not path.exists():
        raise ReaderError(f"{path}: {what} not found" + (f" ({hint})" if hint else ""))
    return path


LabelMapper = Callable[[Any], int | None]
