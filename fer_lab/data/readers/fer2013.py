"""FER2013: 35,887 grey 48x48 faces from a Kaggle challenge, as one CSV of pixel strings.

Three distributions are read (see ``data_cards/fer2013.md``):

* ``fer2013.csv`` with columns ``emotion,pixels,Usage`` (Usage ``Training`` / ``PublicTest`` / ``PrivateTest``);
* Kaggle's ``icml_face_data.csv``: the same rows with columns ``emotion, Usage, pixels`` whose names carry a
  leading space (``' Usage'``, ``' pixels'``); column names are compared with spaces stripped;
* Kaggle's ``train.csv`` (``emotion,pixels``, all Training rows) and ``test.csv`` (``pixels`` only, no labels;
  what torchvision's ``FER2013`` reads from ``root/fer2013/``).

The spec's path may be one of these files or a folder holding them (also a ``fer2013/`` sub-folder), in that
order of preference. Splits: ``train`` = Training, ``val`` = PublicTest, ``test`` = PrivateTest. With only
``train.csv``/``test.csv`` the ``val`` split does not exist and ``test`` needs a ``test.csv`` that has labels.

Labels (Kaggle ids) ``0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral`` are mapped to
:data:`fer_lab.labels.EXPRESSIONS` through :data:`LABELS`; nothing is dropped except broken rows. Record sources
are ``<file>:row <i>`` with ``i`` the 0-based data row (header excluded), the index FERPlus's
``ferXXXXXXX.png`` names use.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_lab.data.readers.base import READERS, Dropped, Manifest, ReaderError, Record, check_split
from fer_lab.labels import LabelMap

#: Kaggle FER2013 emotion ids -> canonical order.
LABELS = LabelMap.from_names("fer2013", {0: "anger", 1: "disgust", 2: "fear", 3: "happiness", 4: "sadness",
                                         5: "surprise", 6: "neutral"})

#: ``Usage`` values -> split names.
USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}

#: The files searched for, in order of preference, in the folder a spec names.
FILES = ("fer2013.csv", "icml_face_data.csv", "train.csv")

SIDE = 48


@dataclass(frozen=True)
class Row:
    """One parsed CSV row: its 0-based data index, Kaggle label (``None`` when the file has none), usage and
    pixels (``None`` with ``problem`` set when the pixel string is broken)."""

    index: int
    emotion: str | None
    usage: str | None
    pixels: np.ndarray | None
    problem: str = ""


def parse_pixels(text: str, side: int = SIDE) -> np.ndarray:
    """A FER2013 pixel string (``side*side`` space-separated 0..255 values, row-major) as ``[side, side]`` uint8.

    Raises ``ValueError`` saying what is wrong (count, non-numbers, out of range).
    """
    try:
        values = np.fromstring(text, dtype=np.int32, sep=" ")   # C parser: 4x faster than split() for 35k rows
    except ValueError:
        bad = next((p for p in text.split() if not p.lstrip("-").isdigit()), text.strip()[:20])
        raise ValueError(f"pixel value {bad[:20]!r} is not an integer") from None
    if values.size != side * side:
        raise ValueError(f"{values.size} pixel values, expected {side * side}")
    if values.min() < 0 or values.max() > 255:
        raise ValueError(f"pixel values must be 0..255, found {int(values.min())}..{int(values.max())}")
    return values.astype(np.uint8).reshape(side, side)


def read_rows(path: Path, need_pixels: bool = True) -> tuple[list[Row], set[str]]:
    """Every data row of a FER2013-family CSV, and its (space-stripped) column names.

    Column names are compared with surrounding spaces removed, so ``icml_face_data.csv``'s ``' pixels'`` works.
    Raises :class:`ReaderError` naming the file when it cannot be read or lacks a ``pixels`` column.
    """
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise ReaderError(f"{path}: cannot open ({e.strerror or e})") from None
    rows: list[Row] = []
    with f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ReaderError(f"{path}: empty file (expected a header such as emotion,pixels,Usage)") from None
        except (csv.Error, UnicodeDecodeError) as e:
            raise ReaderError(f"{path}: not a CSV file ({e})") from None
        cols = {h: i for i, h in enumerate(header)}
        if "pixels" not in cols:
            raise ReaderError(f"{path}: no 'pixels' column (columns: {', '.join(header)}); not a FER2013 CSV")
        ip, ie, iu = cols["pixels"], cols.get("emotion"), cols.get("Usage")
        try:
            for i, fields in enumerate(reader):
                if not fields:
                    rows.append(Row(i, None, None, None, "empty line"))
                    continue
                if len(fields) != len(header):
                    rows.append(Row(i, None, None, None, f"{len(fields)} fields, expected {len(header)}"))
                    continue
                emotion = fields[ie].strip() if ie is not None else None
                usage = fields[iu].strip() if iu is not None else None
                if not need_pixels:
                    rows.append(Row(i, emotion, usage, None))
                    continue
                try:
                    rows.append(Row(i, emotion, usage, parse_pixels(fields[ip])))
                except ValueError as e:
                    rows.append(Row(i, emotion, usage, None, f"broken pixel row: {e}"))
        except (csv.Error, UnicodeDecodeError) as e:
            raise ReaderError(f"{path}: unreadable at data row {len(rows)} ({e})") from None
    return rows, set(cols)


def find_csv(root: Path) -> Path:
    """The FER2013 CSV a spec's path names: the file itself, or the preferred one found in the folder."""
    if root.is_file():
        return root
    for folder in (root, root / "fer2013"):
        for name in FILES:
            if (folder / name).is_file():
                return folder / name
    raise ReaderError(f"{root}: no FER2013 CSV found (looked for {', '.join(FILES)} here and in fer2013/)")


def _label(emotion: str | None, source: str) -> int | None | str:
    """Canonical label, or a drop reason (str)."""
    try:
        native = int(emotion)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"emotion {emotion!r} is not an integer"
    try:
        return LABELS(native, source)
    except ValueError:
        return f"emotion {native} is outside the FER2013 ids 0..6"


@READERS.register("fer2013")
def scan(root: Path, split: str) -> Manifest:
    """FER2013 (fer2013.csv, icml_face_data.csv or Kaggle train.csv/test.csv): grey 48x48 faces."""
    root = Path(root)
    check_split(root, "fer2013", split)
    path = find_csv(root)
    files: list[tuple[Path, str | None]]   # (csv, split every row of it belongs to; None: from Usage)
    notes: list[str] = []
    if path.name == "train.csv" or path.name == "test.csv":
        folder = path.parent
        if split == "val":
            raise ReaderError(f"{folder}: Kaggle's train.csv/test.csv have no PublicTest rows, so no 'val' split; "
                              f"use fer2013.csv or icml_face_data.csv for train/val/test")
        files = []
        if split in ("train", "all"):
            files.append((folder / "train.csv", "train"))
        if split in ("test", "all"):
            test = folder / "test.csv"
            if not test.is_file():
                raise ReaderError(f"{test}: not found (the test split of the Kaggle train.csv/test.csv layout)")
            files.append((test, "test"))
        notes.append("Kaggle train.csv/test.csv layout: train = all 28,709 Training rows, test = test.csv")
    else:
        files = [(path, None)]

    records: list[Record] = []
    dropped: list[Dropped] = []
    for file, fixed in files:
        if not file.is_file():
            raise ReaderError(f"{file}: not found")
        rows, cols = read_rows(file)
        if fixed is None and "Usage" not in cols:
            raise ReaderError(f"{file}: no 'Usage' column, so the split of each row is unknown")
        if "emotion" not in cols:
            raise ReaderError(f"{file}: no 'emotion' column: this file has no labels (Kaggle's test.csv has "
                              f"pixels only); use fer2013.csv or icml_face_data.csv for labelled test faces")
        for row in rows:
            source = f"{file}:row {row.index}"
            if fixed is not None:
                row_split = fixed
            elif row.usage in USAGE:
                row_split = USAGE[row.usage]
            else:
                dropped.append(Dropped(source, f"Usage {row.usage!r} is not one of {', '.join(USAGE)}"))
                continue
            if split != "all" and row_split != split:
                continue
            if row.problem:
                dropped.append(Dropped(source, row.problem))
                continue
            label = _label(row.emotion, source)
            if isinstance(label, str):
                dropped.append(Dropped(source, label))
                continue
            records.append(Record(source=source, label=label, split=row_split, pixels=row.pixels,
                                  extra={"row": row.index, "emotion": int(row.emotion)}))  # type: ignore[arg-type]
    return Manifest("fer2013", root, split, records, dropped, align="whole", notes=notes)
