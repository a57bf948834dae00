"""KDEF (the Karolinska Directed Emotional Faces): 70 posed actors, 7 expressions, 5 camera angles, 2 sessions.

Layout (``root`` is ``KDEF/`` or any folder above it; it is searched recursively)::

    KDEF/AF01/AF01AFS.JPG  AF01ANHL.JPG ...        # <session A|B><gender F|M><id 01-35><expr><angle>.JPG

Expression codes AF afraid, AN angry, DI disgusted, HA happy, NE neutral, SA sad, SU surprised; angle codes S
straight (frontal), HL / HR half left / right, FL / FR full left / right profile. ``angle`` chooses which
views are read: ``S`` (default, frontal, as most FER work uses KDEF), a comma-separated list such as
``S,HL,HR``, or ``all``. Files of other angles are dropped with that reason, as are image files whose name does
not follow the pattern and repeated names. Sessions A and B photograph the same person, so the subject id is
gender + number (``F01``) and a subject split keeps both sessions together.

``Record.pose`` is ``(yaw, 0, 0)`` with yaw 0 for S, +-45 for the half and +-90 for the full profiles, negative
for the "left" views (this sign assumes "left" names the side of the face shown, which then turns towards image
left; the KDEF documentation's convention was not verified). KDEF has no official split: see
:class:`~fer_lab.data.readers.base.SubjectSplit`. No landmarks: faces are detected (``align="mtcnn"``).
"""

from __future__ import annotations

import re
from pathlib import Path

from fer_lab.data.readers.base import (
    IMAGE_EXTENSIONS, READERS, Dropped, Manifest, ReaderError, Record, SubjectSplit, check_split, is_hidden,
    require_dir,
)
from fer_lab.labels import LabelMap

NAME = "kdef"

#: KDEF expression codes -> fer-lab labels.
LABELS = LabelMap.from_names(NAME, {"AF": "fear", "AN": "anger", "DI": "disgust", "HA": "happiness",
                                    "NE": "neutral", "SA": "sadness", "SU": "surprise"})

#: Angle code -> yaw in degrees (sign: see the module docstring).
ANGLES: dict[str, float] = {"S": 0.0, "HL": -45.0, "HR": 45.0, "FL": -90.0, "FR": 90.0}

_FILE = re.compile(r"^([AB])([FM])(\d\d)(AF|AN|DI|HA|NE|SA|SU)(S|HL|HR|FL|FR)\.(jpe?g|png)$", re.IGNORECASE)


def parse_angles(angle: str, root: Path) -> tuple[str, ...]:
    """``"S"``, ``"S,HL,HR"`` or ``"all"`` as angle codes; :class:`ReaderError` for an unknown code."""
    text = str(angle).strip().upper()
    if text == "ALL":
        return tuple(ANGLES)
    codes = tuple(dict.fromkeys(c.strip() for c in text.replace("+", ",").split(",") if c.strip()))
    bad = [c for c in codes if c not in ANGLES]
    if bad or not codes:
        raise ReaderError(f"{root}: {NAME} angle {angle!r} is not 'all' or a list of {', '.join(ANGLES)}")
    return codes


@READERS.register(NAME)
def scan(root: Path, split: str = "train", *, angle: str = "S", protocol: str = "subject", folds: int = 10,
         fold: int = 0, val_folds: int = 0, split_seed: int = 0) -> Manifest:
    """List the KDEF faces of ``split`` seen from ``angle``; the split options are those of :class:`SubjectSplit`."""
    root = Path(root)
    check_split(root, NAME, split)
    angles = parse_angles(angle, root)
    splitter = SubjectSplit(protocol, int(folds), int(fold), int(val_folds), int(split_seed))
    splitter.check(root, NAME)
    require_dir(root, "KDEF folder")
    records: list[Record] = []
    dropped: list[Dropped] = []
    seen: dict[str, Path] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue  # documentation
        if is_hidden(path, root):
            dropped.append(Dropped(str(path), "hidden or macOS metadata file"))
            continue
        m = _FILE.match(path.name)
        if not m:
            dropped.append(Dropped(str(path), "name does not follow <A|B><F|M><nn><expression><angle>.JPG"))
            continue
        session, gender, number, code, view = (g.upper() for g in m.groups()[:5])
        if view not in angles:
            dropped.append(Dropped(str(path), f"angle {view} not selected (angle={','.join(angles)})"))
            continue
        key = path.name.upper()
        if key in seen:
            dropped.append(Dropped(str(path), f"duplicate of {seen[key]}"))
            continue
        seen[key] = path
        records.append(Record(source=str(path), label=LABELS(code), split="train", path=path,
                              subject=f"{gender}{number}", pose=(ANGLES[view], 0.0, 0.0),
                              extra={"session": session, "code": code, "angle": view}))
    if not records:
        raise ReaderError(f"{root}: no KDEF images of angle {','.join(angles)} found"
                          + (f"; {len(dropped)} files dropped, e.g. {dropped[0].source}: {dropped[0].reason}"
                             if dropped else ""))
    notes = [f"angles read: {','.join(angles)}", splitter.describe()]
    records = splitter.apply(records, split, root, NAME)
    return Manifest(NAME, root, split, records, dropped, align="mtcnn", notes=notes)
