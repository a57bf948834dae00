"""FERPlus: FER2013's faces relabelled by 10 crowd taggers each (Microsoft's ``fer2013new.csv``).

Two layouts are read (see ``data_cards/ferplus.md``):

* **votes + pixels** (preferred): ``fer2013new.csv`` (``Usage,Image name,neutral,happiness,surprise,sadness,
  anger,disgust,fear,contempt,unknown,NF``) next to a FER2013 CSV holding the pixels (``fer2013.csv`` or
  ``icml_face_data.csv``, in the same folder, its ``fer2013/`` sub-folder or its parent; or named with the
  ``fer2013=`` option). Row ``i`` of one is row ``i`` of the other (the image name ``ferXXXXXXX.png`` is that
  index); the reader checks that both files have the same number of rows and the same Usage on every row.
* **generated folders**: ``FER2013Train/``, ``FER2013Valid/``, ``FER2013Test/`` each with PNGs and a header-less
  ``label.csv`` (``name,"(x, y, w, h)",<10 votes>``), as written by FERPlus's ``generate_training_data.py``.

Label rule (FERPlus ``src/ferplus.py``, "majority" mode): votes of 1 are zeroed (outlier removal); the class with
the most remaining votes is kept when it has more than half of them, else the face is *unknown*. Faces whose
result is unknown or NF (not a face) are dropped, and so is contempt, which has no place in the 7 classes. A tie
for the most votes never wins (it cannot exceed half). Rows with an empty image name (FER2013 rows FERPlus
marks unusable) are dropped with that reason.

Splits: ``train`` = Training / FER2013Train, ``val`` = PublicTest / FER2013Valid, ``test`` = PrivateTest /
FER2013Test.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fer_lab.data.readers.base import READERS, Dropped, Manifest, ReaderError, Record, check_split
from fer_lab.data.readers.fer2013 import USAGE, read_rows
from fer_lab.labels import LabelMap

#: The vote columns of fer2013new.csv / label.csv, in file order.
VOTES: tuple[str, ...] = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                          "unknown", "NF")

#: Majority class name -> canonical order; the rest are dropped with the reason given.
LABELS = LabelMap.from_names(
    "ferplus", {v: v for v in VOTES[:7]},
    dropped={"contempt": "contempt: not one of the 7 classes",
             "unknown": "unknown: no class has more than half of the votes (after removing single votes)",
             "NF": "not a face (NF has the majority of the votes)"},
)

FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
PIXEL_FILES = ("fer2013.csv", "icml_face_data.csv")


def majority(votes: np.ndarray | list[float]) -> str:
    """The FERPlus "majority" label of one face's 10 vote counts: a name from :data:`VOTES`, ``"unknown"``
    when no class has more than half of the votes left after zeroing the single votes."""
    v = np.asarray(votes, dtype=np.float64).copy()
    if v.shape != (len(VOTES),):
        raise ValueError(f"expected {len(VOTES)} vote counts, got {v.shape[0] if v.ndim == 1 else v.shape}")
    v[v <= 1.0] = 0.0
    total = v.sum()
    top = int(np.argmax(v))
    return VOTES[top] if total > 0 and v[top] > 0.5 * total else "unknown"


def _parse_votes(fields: list[str]) -> np.ndarray:
    votes = np.array([float(x) for x in fields], dtype=np.float64)
    if (votes < 0).any() or not np.isfinite(votes).all():
        raise ValueError("negative or non-finite vote count")
    return votes


def _find_pixels(root: Path, given: str | None) -> Path | None:
    if given:
        p = Path(given).expanduser()
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            for name in PIXEL_FILES:
                if (p / name).is_file():
                    return p / name
        if not p.is_file():
            raise ReaderError(f"{p}: FER2013 pixel CSV not found (option fer2013=)")
        return p
    for folder in (root, root / "fer2013", root.parent, root.parent / "fer2013"):
        for name in PIXEL_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def _label(votes: np.ndarray) -> tuple[int | None, str]:
    name = majority(votes)
    return LABELS(name), name


def _scan_votes(root: Path, table: Path, pixels_csv: Path, split: str
                ) -> tuple[list[Record], list[Dropped]]:
    pixel_rows, _ = read_rows(pixels_csv)
    records: list[Record] = []
    dropped: list[Dropped] = []
    with open(table, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        expected = ["Usage", "Image name", *VOTES]
        if header != expected:
            raise ReaderError(f"{table}: header {','.join(header)!r} is not FERPlus's {','.join(expected)!r}")
        rows = list(reader)
    if len(rows) != len(pixel_rows):
        raise ReaderError(f"{table}: {len(rows)} rows but {pixels_csv} has {len(pixel_rows)}; FERPlus labels "
                          f"must be the FER2013 rows in the same order")
    for i, fields in enumerate(rows):
        source = f"{table}:row {i}"
        if len(fields) != len(expected):
            dropped.append(Dropped(source, f"{len(fields)} fields, expected {len(expected)}"))
            continue
        usage, name = fields[0].strip(), fields[1].strip()
        px = pixel_rows[i]
        if px.usage is not None and px.usage != usage:
            raise ReaderError(f"{table}: row {i} has Usage {usage!r} but {pixels_csv} row {i} has {px.usage!r}; "
                              f"the two files are not the same rows in the same order")
        if usage not in USAGE:
            dropped.append(Dropped(source, f"Usage {usage!r} is not one of {', '.join(USAGE)}"))
            continue
        row_split = USAGE[usage]
        if split != "all" and row_split != split:
            continue
        if not name:
            dropped.append(Dropped(source, "empty image name: FERPlus marks this FER2013 row as unusable"))
            continue
        try:
            votes = _parse_votes(fields[2:])
        except ValueError as e:
            dropped.append(Dropped(source, f"malformed votes ({e})"))
            continue
        label, winner = _label(votes)
        if label is None:
            dropped.append(Dropped(source, LABELS.dropped[winner]))
            continue
        if px.problem:
            dropped.append(Dropped(f"{pixels_csv}:row {i}", px.problem))
            continue
        records.append(Record(source=f"{source} ({name})", label=label, split=row_split, pixels=px.pixels,
                              extra={"name": name, "votes": votes.astype(int).tolist()}))
    return records, dropped


def _scan_folders(root: Path, split: str) -> tuple[list[Record], list[Dropped]]:
    records: list[Record] = []
    dropped: list[Dropped] = []
    splits = list(FOLDERS) if split == "all" else [split]
    for s in splits:
        folder = root / FOLDERS[s]
        table = folder / "label.csv"
        if not table.is_file():
            raise ReaderError(f"{table}: not found (FERPlus's generated layout has {FOLDERS[s]}/label.csv)")
        with open(table, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
        for i, fields in enumerate(rows):
            source = f"{table}:line {i + 1}"
            if len(fields) == 2 + len(VOTES):
                name, votes_text = fields[0].strip(), fields[2:]
            elif len(fields) == 1 + len(VOTES):   # older label.csv files without the face rectangle
                name, votes_text = fields[0].strip(), fields[1:]
            else:
                dropped.append(Dropped(source, f"{len(fields)} fields, expected {2 + len(VOTES)}"))
                continue
            try:
                votes = _parse_votes(votes_text)
            except ValueError as e:
                dropped.append(Dropped(source, f"malformed votes ({e})"))
                continue
            label, winner = _label(votes)
            image = folder / name
            if label is None:
                dropped.append(Dropped(str(image), LABELS.dropped[winner]))
                continue
            if not name or not image.is_file():
                dropped.append(Dropped(str(image), f"image listed in {table.name} is missing"))
                continue
            records.append(Record(source=str(image), label=label, split=s, path=image,
                                  extra={"name": name, "votes": votes.astype(int).tolist()}))
    return records, dropped


@READERS.register("ferplus")
def scan(root: Path, split: str, fer2013: str | None = None) -> Manifest:
    """FERPlus (fer2013new.csv votes + FER2013 pixels, or the FER2013Train/Valid/Test folders): majority labels."""
    root = Path(root)
    check_split(root, "ferplus", split)
    folder = root.parent if root.is_file() else root
    table = root if root.is_file() else root / "fer2013new.csv"
    notes = []
    if table.is_file():
        pixels_csv = _find_pixels(folder, fer2013)
        if pixels_csv is None:
            raise ReaderError(f"{table}: FER2013 pixels not found next to it (looked for {', '.join(PIXEL_FILES)} in "
                              f"{folder}, {folder / 'fer2013'} and {folder.parent}); give fer2013=/path/fer2013.csv")
        records, dropped = _scan_votes(folder, table, pixels_csv, split)
        notes.append(f"votes from {table.name}, pixels from {pixels_csv}")
    elif (folder / FOLDERS["train"]).is_dir() or (folder / FOLDERS["test"]).is_dir():
        records, dropped = _scan_folders(folder, split)
        notes.append("generated FER2013Train/Valid/Test folders with label.csv")
    else:
        raise ReaderError(f"{folder}: neither fer2013new.csv nor FER2013Train/FER2013Valid/FER2013Test folders found "
                          f"(not a FERPlus layout)")
    return Manifest("ferplus", root, split, records, dropped, align="whole", notes=notes)
