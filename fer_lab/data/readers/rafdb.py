"""RAF-DB (basic): 15,339 web images with seven basic-emotion labels, manual 5-point landmarks and face boxes.

Layout (the ``basic/`` folder of the release, zips extracted; see ``data_cards/rafdb.md``)::

    basic/EmoLabel/list_patition_label.txt      "<name> <label>" per line, labels 1..7 (the misspelled name is
                                                the one the release ships; list_partition_label.txt is accepted)
    basic/Image/original/train_00001.jpg        original images            (images=original)
    basic/Image/aligned/train_00001_aligned.jpg 100x100 aligned crops       (images=aligned)
    basic/Annotation/manual/train_00001_manu_attri.txt   5 "x y" lines (eye centres, nose tip, mouth corners),
                                                then gender, race, age lines (original-image pixels)
    basic/Annotation/boundingbox/train_00001.txt         4 numbers, left top right bottom (original pixels)

Labels ``1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness, 6 anger, 7 neutral`` are the canonical order
shifted by one (:data:`LABELS`). The split is the name prefix: ``train_`` (12,271) and ``test_`` (3,068); there is
no validation split. ``images=auto`` reads the original images when ``Image/original`` exists, else the aligned
crops. Original images come with the manual landmarks (align mode ``landmarks``; a face without them falls back
to its box, then to detection); aligned crops are already aligned, so they are resized whole (``whole``;
``align=mtcnn`` re-detects landmarks on them instead).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fer_lab.data.readers.base import READERS, Dropped, Manifest, ReaderError, Record, check_split, require_dir
from fer_lab.labels import LabelMap

#: RAF-DB basic labels (1-based) -> canonical order.
LABELS = LabelMap.from_names("rafdb", {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness",
                                       6: "anger", 7: "neutral"})

LABEL_FILES = ("list_patition_label.txt", "list_partition_label.txt")

#: Attribute codes of the manual annotation files.
GENDER = {0: "male", 1: "female", 2: "unsure"}
RACE = {0: "Caucasian", 1: "African-American", 2: "Asian"}
AGE = {0: "0-3", 1: "4-19", 2: "20-39", 3: "40-69", 4: "70+"}

_NAME = re.compile(r"^(train|test)_\d+\.(jpg|jpeg|png)$", re.IGNORECASE)


def find_basic(root: Path) -> Path:
    """The ``basic`` folder: ``root`` itself when it holds ``EmoLabel/``, else ``root/basic``."""
    for cand in (root, root / "basic", root / "RAF-DB" / "basic"):
        if (cand / "EmoLabel").is_dir():
            return cand
    raise ReaderError(f"{root}: no EmoLabel/ folder here or in basic/ (expected RAF-DB's basic/ folder with "
                      f"EmoLabel/list_patition_label.txt)")


def _numbers(path: Path) -> list[list[float]]:
    """Rows of numbers of a small annotation file (tabs or spaces)."""
    rows = []
    for line in path.read_text().replace("\t", " ").splitlines():
        if line.strip():
            rows.append([float(t) for t in line.split()])
    return rows


def read_manual(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """Five ``(x, y)`` points and the gender/race/age attributes of a ``*_manu_attri.txt`` file.

    Raises ``ValueError`` with the problem when the file is malformed.
    """
    rows = _numbers(path)
    if len(rows) < 5 or any(len(r) != 2 for r in rows[:5]):
        raise ValueError("expected 5 lines of 'x y' first")
    pts = np.array(rows[:5], dtype=np.float32)
    attrs: dict[str, str] = {}
    for key, table, row in zip(("gender", "race", "age"), (GENDER, RACE, AGE), rows[5:8]):
        if len(row) == 1 and int(row[0]) in table:
            attrs[key] = table[int(row[0])]
    return pts, attrs


def read_box(path: Path) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` from a ``boundingbox/*.txt`` file (CD-FER's reading of the 4 numbers)."""
    vals = [v for row in _numbers(path) for v in row]
    if len(vals) != 4:
        raise ValueError(f"expected 4 numbers, found {len(vals)}")
    x1, y1, x2, y2 = vals
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"box {vals} is empty (expects left top right bottom)")
    return float(x1), float(y1), float(x2), float(y2)


@READERS.register("rafdb")
def scan(root: Path, split: str, images: str = "auto", landmarks: bool = True) -> Manifest:
    """RAF-DB basic (EmoLabel/list_patition_label.txt; original or aligned images; manual 5 landmarks)."""
    root = Path(root)
    check_split(root, "rafdb", split)
    if split == "val":
        raise ReaderError(f"{root}: RAF-DB has no validation split (train_* and test_* images only); "
                          f"use split=train or split=test")
    if images not in ("auto", "original", "aligned"):
        raise ReaderError(f"{root}: images={images!r} is not one of auto, original, aligned")
    basic = find_basic(root)
    table = next((basic / "EmoLabel" / n for n in LABEL_FILES if (basic / "EmoLabel" / n).is_file()), None)
    if table is None:
        raise ReaderError(f"{basic / 'EmoLabel' / LABEL_FILES[0]}: label list not found")
    if images == "auto":
        images = "original" if (basic / "Image" / "original").is_dir() else "aligned"
    image_dir = basic / "Image" / images
    require_dir(image_dir, "image folder", f"unzip Image/{images}.zip there")
    manual_dir = basic / "Annotation" / "manual"
    box_dir = basic / "Annotation" / "boundingbox"
    use_geometry = images == "original"
    notes = [f"labels from {table.name}; images from Image/{images}"]
    if table.name != LABEL_FILES[0]:
        notes.append(f"label list found as {table.name} (the release spells it {LABEL_FILES[0]})")
    if use_geometry and landmarks and not manual_dir.is_dir():
        notes.append(f"{manual_dir} not found: no manual landmarks, faces are aligned from boxes or detection")

    records: list[Record] = []
    dropped: list[Dropped] = []
    seen: set[str] = set()
    for n, line in enumerate(table.read_text(encoding="utf-8-sig").splitlines(), 1):
        source = f"{table}:line {n}"
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not _NAME.match(parts[0]):
            dropped.append(Dropped(source, f"malformed line {line.strip()[:60]!r} (expected '<train_|test_name> "
                                           f"<label>')"))
            continue
        name, label_text = parts
        row_split = name.split("_", 1)[0].lower()
        if split != "all" and row_split != split:
            continue
        if name in seen:
            dropped.append(Dropped(source, f"{name} listed twice"))
            continue
        seen.add(name)
        try:
            label = LABELS(int(label_text), source)
        except ValueError:
            dropped.append(Dropped(source, f"label {label_text!r} is not one of RAF-DB's 1..7"))
            continue
        stem = Path(name).stem
        path = image_dir / (name if images == "original" else f"{stem}_aligned.jpg")
        if not path.is_file():
            dropped.append(Dropped(str(path), f"image listed in {table.name} is missing"))
            continue
        pts, box, extra = None, None, {"name": name}
        if use_geometry and landmarks and (manual_dir / f"{stem}_manu_attri.txt").is_file():
            mfile = manual_dir / f"{stem}_manu_attri.txt"
            try:
                pts, attrs = read_manual(mfile)
                extra.update(attrs)
            except (ValueError, OSError) as e:
                notes.append(f"{mfile}: unreadable landmarks ({e}); face aligned without them")
        if use_geometry and (box_dir / f"{stem}.txt").is_file():
            try:
                box = read_box(box_dir / f"{stem}.txt")
            except (ValueError, OSError) as e:
                notes.append(f"{box_dir / (stem + '.txt')}: unreadable box ({e}); ignored")
        records.append(Record(source=str(path), label=label, split=row_split, path=path, landmarks=pts, box=box,
                              extra=extra))
    if not records and not dropped:
        raise ReaderError(f"{table}: no {split} rows (is this RAF-DB's list_patition_label.txt?)")
    with_pts = sum(r.landmarks is not None for r in records)
    if use_geometry:
        notes.append(f"{with_pts} of {len(records)} faces have manual landmarks")
    align = "landmarks" if use_geometry and with_pts else ("bbox" if use_geometry and any(r.box for r in records)
                                                          else ("mtcnn" if use_geometry else "whole"))
    return Manifest("rafdb", root, split, records, dropped, align=align, notes=notes)
