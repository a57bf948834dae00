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


def require_dir(path: Path, what: str, hint: str = "") -> Path:
    """``path`` if it is a folder, else a :class:`ReaderError` saying what was expected there."""
    if not path.is_dir():
        raise ReaderError(f"{path}: {what} not found" + (f" ({hint})" if hint else ""))
    return path


def child_dir(folder: Path, *names: str) -> Path | None:
    """The first of ``names`` that is a sub-folder of ``folder``, compared case-insensitively (``None`` when
    none is, or ``folder`` is not a folder). Among sub-folders differing only in case the first by name wins."""
    if not folder.is_dir():
        return None
    dirs: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            dirs.setdefault(p.name.lower(), p)
    return next((dirs[n.lower()] for n in names if n.lower() in dirs), None)


LabelMapper = Callable[[Any], int | None]


# --------------------------------------------------------------------------------------------------------------
# Helpers shared by readers: split names, subject-independent splits, class-folder layouts.

READER_SPLITS: tuple[str, ...] = ("train", "val", "test", "all")

#: File extensions readers treat as images (compared lower-case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})


def check_split(root: Path, name: str, split: str) -> str:
    """``split`` if it is one of :data:`READER_SPLITS`, else a :class:`ReaderError` naming ``root``."""
    if split not in READER_SPLITS:
        raise ReaderError(f"{root}: {name} has no split {split!r}; choose one of {', '.join(READER_SPLITS)}")
    return split


def is_hidden(path: Path, root: Path) -> bool:
    """True for files a user never meant as data: dot-files, AppleDouble ``._x``, ``__MACOSX`` folders."""
    parts = path.relative_to(root).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


@dataclass(frozen=True)
class SubjectSplit:
    """A deterministic split for datasets that ship none (CK+, JAFFE, KDEF, Oulu-CASIA).

    ``protocol="subject"`` (subject-independent, the usual protocol of the posed datasets): the sorted subject
    ids are shuffled with ``seed`` and dealt round-robin into ``folds`` folds; fold ``fold`` is the test split,
    the ``val_folds`` folds after it (cyclically) are the val split, and the rest is train. The same subjects
    never appear in two splits, and the assignment depends only on the set of subject ids and the seed.
    ``folds=10`` with ``fold=0..9`` gives the 10-fold cross-validation of the literature.

    ``protocol="transductive"``: every split holds every face (``all``: each face once, tagged ``"train"``).
    This is what the CD-FER benchmark does for JAFFE and Oulu-CASIA, reading the same list as target-train
    (unlabelled) and target-test.
    """

    protocol: str = "subject"
    folds: int = 5
    fold: int = 0
    val_folds: int = 0
    seed: int = 0

    PROTOCOLS = ("subject", "transductive")

    def check(self, root: Path, name: str) -> None:
        """Raise :class:`ReaderError` (naming ``root``) for inconsistent options."""
        if self.protocol not in self.PROTOCOLS:
            raise ReaderError(f"{root}: {name} protocol {self.protocol!r} is not one of {', '.join(self.PROTOCOLS)}")
        if self.protocol == "subject":
            if self.folds < 2:
                raise ReaderError(f"{root}: {name} needs folds >= 2 for a subject split, got {self.folds}")
            if not 0 <= self.fold < self.folds:
                raise ReaderError(f"{root}: {name} fold {self.fold} is outside 0..{self.folds - 1}")
            if not 0 <= self.val_folds <= self.folds - 2:
                raise ReaderError(f"{root}: {name} val_folds {self.val_folds} must be in 0..{self.folds - 2} "
                                  f"(at least one fold stays for training)")

    def assign(self, subjects: "list[str] | set[str]") -> dict[str, str]:
        """Subject id -> ``"train"``, ``"val"`` or ``"test"`` under the subject protocol."""
        ids = sorted(set(subjects))
        order = np.random.default_rng(self.seed).permutation(len(ids))
        out: dict[str, str] = {}
        val = {(self.fold + k) % self.folds for k in range(1, self.val_folds + 1)}
        for pos, i in enumerate(order):
            f = pos % self.folds
            out[ids[i]] = "test" if f == self.fold else "val" if f in val else "train"
        return out

    def apply(self, records: list[Record], split: str, root: Path, name: str) -> list[Record]:
        """The records of ``split`` (``"all"``: every record once), each with its ``split`` field set.

        Records must carry a ``subject``. Raises :class:`ReaderError` when the split comes out empty.
        """
        from dataclasses import replace

        self.check(root, name)
        if self.protocol == "transductive":
            tag = "train" if split == "all" else split
            out = [replace(r, split=tag) for r in records]
        else:
            missing = [r.source for r in records if r.subject is None]
            if missing:
                raise ReaderError(f"{missing[0]}: {name} record has no subject id, so it cannot be split by subject")
            if records and len({r.subject for r in records}) < self.folds:
                raise ReaderError(f"{root}: {name} has {len({r.subject for r in records})} subjects, fewer than "
                                  f"folds={self.folds}")
            which = self.assign({r.subject for r in records})
            out = [replace(r, split=which[r.subject]) for r in records if split == "all" or which[r.subject] == split]
        if not out and records:
            raise ReaderError(f"{root}: {name} split {split!r} is empty under protocol={self.protocol} "
                              f"(folds={self.folds}, fold={self.fold}, val_folds={self.val_folds})")
        return out

    def describe(self) -> str:
        if self.protocol == "transductive":
            return "protocol=transductive: every split holds every face (CD-FER's target protocol)"
        return (f"protocol=subject: subject-independent folds={self.folds}, test fold={self.fold}, "
                f"val_folds={self.val_folds}, split_seed={self.seed}")


def scan_class_folders(folder: Path, split: str, classes: "dict[str, int]", dataset: str,
                       dropped_classes: "dict[str, str] | None" = None,
                       ) -> tuple[list[Record], list[Dropped], list[str]]:
    """Records of an ImageFolder-style layout ``folder/<class>/<image>`` (nested folders inside a class allowed).

    ``classes`` maps a folder name (compared lower-case) to a label index; ``dropped_classes`` maps folder names
    to the reason their images are left out. Every file that is not taken becomes a :class:`Dropped`: files
    outside a class folder, files in an unknown folder, non-image files, hidden / macOS metadata files. Returns
    ``(records, dropped, notes)``; notes name the classes with no folder or an empty folder.
    """
    dropped_classes = {k.lower(): v for k, v in (dropped_classes or {}).items()}
    classes = {k.lower(): v for k, v in classes.items()}
    records: list[Record] = []
    dropped: list[Dropped] = []
    seen: dict[str, int] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if is_hidden(path, folder):
            dropped.append(Dropped(str(path), "hidden or macOS metadata file"))
            continue
        if len(rel.parts) < 2:
            dropped.append(Dropped(str(path), "not inside a class folder"))
            continue
        cls = rel.parts[0].lower()
        if cls in dropped_classes:
            dropped.append(Dropped(str(path), f"{rel.parts[0]}: {dropped_classes[cls]}"))
            continue
        if cls not in classes:
            dropped.append(Dropped(str(path), f"folder {rel.parts[0]!r} is not a {dataset} class "
                                              f"(expected {', '.join(sorted(classes))})"))
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            dropped.append(Dropped(str(path), f"not an image file ({path.suffix or 'no extension'})"))
            continue
        seen[cls] = seen.get(cls, 0) + 1
        records.append(Record(source=str(path), label=classes[cls], split=split, path=path))
    present = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else {}
    notes = []
    for cls in sorted(classes):
        if cls not in present:
            notes.append(f"{folder}: no folder for class {cls!r}")
        elif not seen.get(cls):
            notes.append(f"{present[cls]}: class folder holds no images")
    return records, dropped, notes


def peak_and_neutral(n_frames: int, peak: int, neutral: bool) -> tuple[list[int], int | None]:
    """Frame positions of a neutral-to-apex sequence under the usual protocol (CK+, Oulu-CASIA).

    The last ``peak`` frames carry the sequence's expression and, when ``neutral``, the first frame is a
    neutral face. The first frame is never also a peak frame: a sequence of 3 frames with ``peak=3`` gives
    peak frames ``[1, 2]`` and neutral ``0``. Returns ``(peak positions, neutral position or None)``.
    """
    if peak < 1:
        raise ValueError(f"peak must be >= 1, got {peak}")
    if n_frames < 1:
        return [], None
    first = 1 if neutral and n_frames > 1 else 0
    return list(range(max(first, n_frames - peak), n_frames)), (0 if neutral and n_frames > 1 else None)
