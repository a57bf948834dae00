"""BU-3DFE (Binghamton University 3D Facial Expression): 100 people, neutral + 6 expressions at 4 intensities.

Layout (``root`` is the folder that holds the subject folders, or any folder above them; searched recursively)::

    F0001/F0001_AN01WH_F2D.bmp     # 2-D texture image          <- read
    F0001/F0001_AN01WH_F3D.wrl     # 3-D mesh (VRML)            (not read)
    F0001/F0001_AN01WH_F3D.bnd     # 83 mesh landmarks, 3-D     (not read: not image coordinates)
    F0001/F0001_AN01WH_RAW.wrl     # raw scan                   (not read)
    ...                            # subjects F0001-F0056, M0001-M0044

File name: ``<subject>_<expression><intensity><race>_<kind>``: expression AN anger, DI disgust, FE fear,
HA happiness, NE neutral, SA sadness, SU surprise; intensity 01-04 (00 for NE); a two-letter race code (WH, AE,
AM, BL, IN, LA as found in file names; the code-to-group table was not found, the code is kept in ``extra``).

``images`` chooses what is read:

* ``texture`` (default): the ``_F2D`` texture images. Each is stitched from two views at about +-45 degrees into
  a frontal-looking texture; its pose is not a camera pose, so ``Record.pose`` is left empty.
* ``renders``: 2-D views rendered by the user from the meshes (FER work on BU-3DFE renders chosen yaws; the exact
  view sets were not found). This is a **fer-lab convention, not part of the release**: next to the texture,
  ``F0001/F0001_AN01WH_yaw-30.png`` (any image extension, integer or decimal degrees, ``+`` optional) is the view
  at yaw -30; ``Record.pose`` is ``(yaw, 0, 0)``.

``intensity`` keeps the listed levels (``all``, default, or e.g. ``3,4``, the two strongest as much FER work
does); neutral faces (level 00) are kept unless ``neutral=false``. ``subject`` keeps only the listed people
(``F0001,M0007``): with ``protocol=transductive`` that is a personalised target. No official split: see
:class:`~fer_lab.data.readers.base.SubjectSplit` (default 10 subject folds, the literature's 10-fold protocol).
No landmarks in image coordinates: faces are detected (``align="mtcnn"``).
"""

from __future__ import annotations

import re
from pathlib import Path

from fer_lab.data.readers.base import (
    IMAGE_EXTENSIONS, READERS, Dropped, Manifest, ReaderError, Record, SubjectSplit, check_split, is_hidden,
    require_dir,
)
from fer_lab.labels import LabelMap

NAME = "bu3dfe"

#: BU-3DFE expression codes -> fer-lab labels (all seven classes).
LABELS = LabelMap.from_names(NAME, {"AN": "anger", "DI": "disgust", "FE": "fear", "HA": "happiness",
                                    "NE": "neutral", "SA": "sadness", "SU": "surprise"})
IMAGES = ("texture", "renders")

_STEM = r"([FM]\d{4})_(AN|DI|FE|HA|NE|SA|SU)(\d{2})([A-Z]{2})"
_TEXTURE = re.compile(rf"^{_STEM}_F2D\.[a-z]+$", re.IGNORECASE)
_RENDER = re.compile(rf"^{_STEM}_yaw([+-]?\d+(?:\.\d+)?)\.[a-z]+$", re.IGNORECASE)
_MESH = re.compile(rf"^{_STEM}_(F3D|RAW)\.(wrl|bnd)$", re.IGNORECASE)


def parse_intensity(intensity: object, root: Path) -> tuple[int, ...]:
    """``all`` or a list of levels 1-4; :class:`ReaderError` for anything else."""
    if str(intensity).strip().lower() == "all":
        return (1, 2, 3, 4)
    try:
        out = tuple(dict.fromkeys(int(s) for s in str(intensity).split(",") if s.strip()))
    except ValueError:
        out = ()
    if not out or any(s not in (1, 2, 3, 4) for s in out):
        raise ReaderError(f"{root}: {NAME} intensity {intensity!r} must be 'all' or a list of levels 1..4")
    return out


@READERS.register(NAME)
def scan(root: Path, split: str = "train", *, images: str = "texture", intensity: str = "all", neutral: bool = True,
         subject: str | None = None, protocol: str = "subject", folds: int = 10, fold: int = 0, val_folds: int = 0,
         split_seed: int = 0) -> Manifest:
    """List the BU-3DFE faces of ``split`` (options: see the module docstring and :class:`SubjectSplit`)."""
    root = Path(root)
    check_split(root, NAME, split)
    if images not in IMAGES:
        raise ReaderError(f"{root}: {NAME} images {images!r} is not one of {', '.join(IMAGES)}")
    levels = parse_intensity(intensity, root)
    neutral = neutral if isinstance(neutral, bool) else str(neutral).lower() in ("1", "true", "yes")
    keep = None if subject is None or str(subject).lower() == "all" else \
        {s.strip().upper() for s in str(subject).split(",") if s.strip()}
    splitter = SubjectSplit(protocol, int(folds), int(fold), int(val_folds), int(split_seed))
    splitter.check(root, NAME)
    require_dir(root, "BU-3DFE folder", "expected subject folders F0001 ... M0044 inside")
    pattern = _TEXTURE if images == "texture" else _RENDER
    records: list[Record] = []
    dropped: list[Dropped] = []
    seen: dict[str, Path] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if _MESH.match(path.name):
            continue  # meshes and 3-D landmarks: part of the release, never images
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue  # documentation
        if is_hidden(path, root):
            dropped.append(Dropped(str(path), "hidden or macOS metadata file"))
            continue
        m = pattern.match(path.name)
        if not m:
            if (_RENDER if images == "texture" else _TEXTURE).match(path.name):
                reason = f"{'rendered view' if images == 'texture' else 'texture image'} not read (images={images})"
            else:
                reason = ("name does not follow <subject>_<expression><level><race>_"
                          + ("F2D.bmp" if images == "texture" else "yaw<degrees>.png"))
            dropped.append(Dropped(str(path), reason))
            continue
        who, code, level, race = (g.upper() for g in m.groups()[:4])
        level_n = int(level)
        if path.parent.name.upper() != who:
            dropped.append(Dropped(str(path), f"file of subject {who} inside folder {path.parent.name}"))
            continue
        if (code == "NE") != (level_n == 0):
            dropped.append(Dropped(str(path), f"intensity {level} does not fit expression {code} "
                                              f"(NE is 00, the others 01-04)"))
            continue
        if (code == "NE" and not neutral) or (code != "NE" and level_n not in levels):
            dropped.append(Dropped(str(path), "neutral not selected (neutral=false)" if code == "NE" else
                                   f"intensity {level} not selected (intensity={intensity})"))
            continue
        if keep is not None and who not in keep:
            dropped.append(Dropped(str(path), f"subject {who} not selected"))
            continue
        key = path.name.upper().rsplit(".", 1)[0]
        if key in seen:
            dropped.append(Dropped(str(path), f"duplicate of {seen[key]}"))
            continue
        seen[key] = path
        pose = (float(m.group(5)), 0.0, 0.0) if images == "renders" else None
        records.append(Record(source=str(path), label=LABELS(code), split="train", path=path, subject=who,
                              pose=pose, extra={"intensity": level_n, "race": race, "code": code}))
    if not records:
        raise ReaderError(f"{root}: no BU-3DFE {images} images found"
                          + (f"; {len(dropped)} files dropped, e.g. {dropped[0].source}: {dropped[0].reason}"
                             if dropped else ""))
    notes = [f"images={images}; intensity levels {','.join(map(str, levels))}; neutral {'kept' if neutral else 'dropped'}",
             splitter.describe()]
    records = splitter.apply(records, split, root, NAME)
    return Manifest(NAME, root, split, records, dropped, align="mtcnn", notes=notes)
