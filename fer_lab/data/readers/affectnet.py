"""AffectNet (manually annotated part): ~290k web faces with expression, valence/arousal, box and 68 landmarks.

Layout (see ``data_cards/affectnet.md``)::

    <root>/training.csv, validation.csv       (also accepted under Manually_Annotated_file_lists/)
    <root>/Manually_Annotated_Images/<subDirectory_filePath>
                                               (also accepted under Manually_Annotated/)

CSV header: ``subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,
arousal``; ``facial_landmarks`` is 136 numbers separated by ``;`` (68 ``x;y`` pairs, iBUG order), reduced to the
five points by :func:`fer_lab.data.align.five_from_68`.

Labels ``0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger`` map to the canonical order
(:data:`LABELS`); ``7 contempt`` (not one of the 7 classes), ``8 none``, ``9 uncertain`` and ``10 no-face`` are
dropped with their reason. Splits: ``train`` = training.csv, ``test`` = validation.csv (AffectNet's test set is
not public, so its validation set is everyone's test set); there is no ``val`` split.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fer_lab.data.readers.base import READERS, Dropped, Manifest, ReaderError, Record, check_split
from fer_lab.labels import LabelMap

LABELS = LabelMap.from_names(
    "affectnet", {0: "neutral", 1: "happiness", 2: "sadness", 3: "surprise", 4: "fear", 5: "disgust", 6: "anger"},
    dropped={7: "contempt: not one of the 7 classes", 8: "none (no basic expression)", 9: "uncertain",
             10: "no face"},
)

HEADER = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
          "expression", "valence", "arousal")
FILES = {"train": "training.csv", "test": "validation.csv"}


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).exists():
            return root / name
    return None


def parse_landmarks(text: str) -> np.ndarray:
    """The 68 ``(x, y)`` points of a ``facial_landmarks`` field (136 numbers separated by ``;``)."""
    parts = [t for t in text.split(";") if t.strip()]
    try:
        vals = np.array(parts, dtype=np.float32)   # converted in C: 300k rows stay a few seconds
    except ValueError:
        raise ValueError("landmark numbers are not all numbers") from None
    if vals.size != 136:
        raise ValueError(f"{vals.size} landmark numbers, expected 136")
    if not np.isfinite(vals).all():
        raise ValueError("landmark numbers are not all finite")
    return vals.reshape(68, 2)


@READERS.register("affectnet")
def scan(root: Path, split: str, landmarks: bool = True) -> Manifest:
    """AffectNet (training.csv / validation.csv, Manually_Annotated_Images/): 7 classes, 68 landmarks -> 5."""
    from fer_lab.data.align import five_from_68

    root = Path(root)
    check_split(root, "affectnet", split)
    if split == "val":
        raise ReaderError(f"{root}: AffectNet has no separate validation split; validation.csv is the test split "
                          f"(split=test)")
    lists = _find(root, (".", "Manually_Annotated_file_lists"))
    images = _find(root, ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images"))
    splits = ["train", "test"] if split == "all" else [split]
    tables = [(s, (lists / FILES[s]) if lists else root / FILES[s]) for s in splits]
    for _, t in tables:
        if not t.is_file():
            raise ReaderError(f"{t}: not found (AffectNet's {t.name}; also looked in Manually_Annotated_file_lists/)")
    if images is None:
        raise ReaderError(f"{root}: Manually_Annotated_Images/ not found (also looked in Manually_Annotated/)")

    records: list[Record] = []
    dropped: list[Dropped] = []
    notes: list[str] = []
    for s, table in tables:
        with open(table, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = tuple(h.strip() for h in next(reader, []))
            if header[:len(HEADER)] != HEADER:
                raise ReaderError(f"{table}: header {','.join(header)[:120]!r} is not AffectNet's "
                                  f"{','.join(HEADER)!r}")
            for n, fields in enumerate(reader, 2):
                source = f"{table}:line {n}"
                if len(fields) < len(HEADER):
                    dropped.append(Dropped(source, f"{len(fields)} fields, expected {len(HEADER)}"))
                    continue
                rel, fx, fy, fw, fh, lm_text, expr, valence, arousal = (x.strip() for x in fields[:9])
                try:
                    label = LABELS(int(expr), source)
                except ValueError:
                    dropped.append(Dropped(source, f"expression {expr!r} is not one of AffectNet's 0..10"))
                    continue
                if label is None:
                    dropped.append(Dropped(source, LABELS.dropped[int(expr)]))
                    continue
                path = images / rel
                if not rel or not path.is_file():
                    dropped.append(Dropped(str(path), f"image listed in {table.name} is missing"))
                    continue
                try:
                    x, y, w, h = (float(v) for v in (fx, fy, fw, fh))
                    box = (x, y, x + w, y + h) if w > 0 and h > 0 else None
                except ValueError:
                    box = None
                pts = None
                if landmarks and lm_text:
                    try:
                        pts = five_from_68(parse_landmarks(lm_text)).astype(np.float32)
                    except ValueError as e:
                        notes.append(f"{source}: unreadable landmarks ({e}); face aligned from its box")
                extra: dict = {"file": rel}
                for key, val in (("valence", valence), ("arousal", arousal)):
                    try:
                        extra[key] = float(val)
                    except ValueError:
                        pass
                records.append(Record(source=str(path), label=label, split=s, path=path, landmarks=pts, box=box,
                                      extra=extra))
    if len(notes) > 20:
        notes = notes[:20] + [f"... and {len(notes) - 20} more rows with unreadable landmarks"]
    return Manifest("affectnet", root, split, records, dropped, align="landmarks" if landmarks else "bbox",
                    notes=notes)
