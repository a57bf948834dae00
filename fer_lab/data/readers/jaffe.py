"""JAFFE (the Japanese Female Facial Expression database): 213 posed images of 10 expressers.

The Zenodo release (record 3451524) is a folder of 256x256 8-bit grey TIFF files (commonly ``jaffedbase/``)
plus ``README_FIRST.txt``; ``root`` may be that folder or any folder above it (it is searched recursively).
Labels come from the file name, ``KA.AN1.39.tiff`` = ``<expresser>.<expression code><sample>.<image id>.tiff``
with codes AN anger, DI disgust, FE fear, HA happiness, NE neutral, SA sadness, SU surprise. The images are
head-and-shoulder photographs without landmarks or boxes, so faces are found by the detector (``align="mtcnn"``).

JAFFE has no official split: see :class:`~fer_lab.data.readers.base.SubjectSplit` (10 subjects, so the default
10 folds are leave-one-subject-out folds). TIFF files whose name does not follow the pattern, other image files
and repeated names are dropped with the reason; documentation files (``.txt``, ``.pdf``) are not data and are
not listed.
"""

from __future__ import annotations

import re
from pathlib import Path

from fer_lab.data.readers.base import (
    IMAGE_EXTENSIONS, READERS, Dropped, Manifest, ReaderError, Record, SubjectSplit, check_split, is_hidden,
    require_dir,
)
from fer_lab.labels import LabelMap

NAME = "jaffe"

#: JAFFE expression codes (second part of the file name) -> fer-lab labels.
LABELS = LabelMap.from_names(NAME, {"AN": "anger", "DI": "disgust", "FE": "fear", "HA": "happiness",
                                    "NE": "neutral", "SA": "sadness", "SU": "surprise"})

_FILE = re.compile(r"^([A-Z]{2})\.([A-Z]{2})(\d+)\.(\d+)\.tiff?$", re.IGNORECASE)


@READERS.register(NAME)
def scan(root: Path, split: str = "train", *, protocol: str = "subject", folds: int = 10, fold: int = 0,
         val_folds: int = 0, split_seed: int = 0) -> Manifest:
    """List the JAFFE faces of ``split``; the split options are those of :class:`SubjectSplit`."""
    root = Path(root)
    check_split(root, NAME, split)
    splitter = SubjectSplit(protocol, int(folds), int(fold), int(val_folds), int(split_seed))
    splitter.check(root, NAME)
    require_dir(root, "JAFFE folder")
    records: list[Record] = []
    dropped: list[Dropped] = []
    seen: dict[str, Path] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        ext = path.suffix.lower()
        if is_hidden(path, root):
            if ext in IMAGE_EXTENSIONS or path.name.startswith("._"):
                dropped.append(Dropped(str(path), "hidden or macOS metadata file"))
            continue
        if ext not in IMAGE_EXTENSIONS:
            continue  # README_FIRST.txt and other documentation
        if ext not in (".tif", ".tiff"):
            dropped.append(Dropped(str(path), f"not a JAFFE TIFF image ({path.suffix})"))
            continue
        m = _FILE.match(path.name)
        if not m:
            dropped.append(Dropped(str(path), "name does not follow <expresser>.<code><n>.<id>.tiff"))
            continue
        expresser, code, sample, image_id = m.group(1).upper(), m.group(2).upper(), m.group(3), m.group(4)
        if code not in LABELS.table:
            dropped.append(Dropped(str(path), f"expression code {code!r} is not a JAFFE code "
                                              f"({', '.join(LABELS.table)})"))
            continue
        key = path.name.lower()
        if key in seen:
            dropped.append(Dropped(str(path), f"duplicate of {seen[key]}"))
            continue
        seen[key] = path
        records.append(Record(source=str(path), label=LABELS(code), split="train", path=path, subject=expresser,
                              extra={"code": code, "sample": int(sample), "image_id": int(image_id)}))
    if not records:
        raise ReaderError(f"{root}: no JAFFE images (<expresser>.<code><n>.<id>.tiff) found"
                          + (f"; {len(dropped)} files dropped, e.g. {dropped[0].source}: {dropped[0].reason}"
                             if dropped else ""))
    notes = [splitter.describe()]
    records = splitter.apply(records, split, root, NAME)
    return Manifest(NAME, root, split, records, dropped, align="mtcnn", notes=notes)
