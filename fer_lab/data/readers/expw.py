"""ExpW (Expression in-the-Wild): 91,793 faces in 2,400-ish web scene images, one face box and label each.

Layout (see ``data_cards/expw.md``)::

    <root>/label/label.lst      "image_name face_id top left right bottom confidence label" per face
    <root>/image/origin/*.jpg   the scene images (also accepted: <root>/data/image/origin/)

The box columns are in the official order **top, left, right, bottom** (the crop is ``img[top:bottom,
left:right]``); records carry it as ``(left, top, right, bottom)``. Labels ``0 angry, 1 disgust, 2 fear, 3 happy,
4 sad, 5 surprise, 6 neutral`` map to the canonical order (:data:`LABELS`).

ExpW ships no split. This reader makes a deterministic one by **scene image** (all faces of one photo land in
the same split, so no person appears on both sides): each image name is hashed with ``split_seed`` to a number in
[0, 1); below ``test`` -> test, below ``test + val`` -> val, else train. The assignment of an image never
depends on the other rows. ``min_confidence`` drops faces whose detector confidence is lower (some loaders use
80); the default keeps all.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fer_lab.data.readers.base import READERS, Dropped, Manifest, ReaderError, Record, check_split
from fer_lab.labels import LabelMap

LABELS = LabelMap.from_names("expw", {0: "anger", 1: "disgust", 2: "fear", 3: "happiness", 4: "sadness",
                                      5: "surprise", 6: "neutral"})


def split_of(image_name: str, val: float, test: float, seed: int) -> str:
    """The split of one scene image under the hashed assignment described in the module docstring."""
    h = hashlib.sha256(f"{seed}:{image_name}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2.0 ** 64
    return "test" if u < test else "val" if u < test + val else "train"


@READERS.register("expw")
def scan(root: Path, split: str, val: float = 0.1, test: float = 0.1, split_seed: int = 0,
         min_confidence: float | None = None) -> Manifest:
    """ExpW (label/label.lst + image/origin/): face boxes in scene photos, hashed per-image splits."""
    root = Path(root)
    check_split(root, "expw", split)
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ReaderError(f"{root}: ExpW split fractions val={val}, test={test} must be >= 0 and sum below 1")
    table = root / "label" / "label.lst"
    if not table.is_file():
        raise ReaderError(f"{table}: not found (ExpW's label/label.lst)")
    images = next((d for d in (root / "image" / "origin", root / "data" / "image" / "origin") if d.is_dir()), None)
    if images is None:
        raise ReaderError(f"{root / 'image' / 'origin'}: image folder not found (also looked in data/image/origin)")
    records: list[Record] = []
    dropped: list[Dropped] = []
    exists: dict[str, bool] = {}
    for n, line in enumerate(table.read_text(encoding="utf-8-sig").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        source = f"{table}:line {n}"
        if len(parts) != 8:
            dropped.append(Dropped(source, f"{len(parts)} fields, expected 8 (name face_id top left right bottom "
                                           f"confidence label)"))
            continue
        name = parts[0]
        row_split = split_of(name, val, test, split_seed)
        if split != "all" and row_split != split:
            continue
        try:
            face_id = int(parts[1])
            top, left, right, bottom = (float(v) for v in parts[2:6])
            conf = float(parts[6])
            native = int(parts[7])
        except ValueError:
            dropped.append(Dropped(source, f"non-numeric field in {line.strip()[:80]!r}"))
            continue
        try:
            label = LABELS(native, source)
        except ValueError:
            dropped.append(Dropped(source, f"label {native} is not one of ExpW's 0..6"))
            continue
        if not (right > left and bottom > top and left >= 0 and top >= 0):
            dropped.append(Dropped(source, f"empty or negative box top={top} left={left} right={right} "
                                           f"bottom={bottom}"))
            continue
        if min_confidence is not None and conf < min_confidence:
            dropped.append(Dropped(source, f"face confidence below min_confidence={min_confidence}"))
            continue
        path = images / name
        if name not in exists:
            exists[name] = path.is_file()
        if not exists[name]:
            dropped.append(Dropped(str(path), f"image listed in {table.name} is missing"))
            continue
        records.append(Record(source=f"{path}#face{face_id}", label=label, split=row_split, path=path,
                              box=(left, top, right, bottom), extra={"face_id": face_id, "confidence": conf}))
    notes = [f"hashed per-image split: val={val}, test={test}, split_seed={split_seed} (ExpW has no official split)"]
    return Manifest("expw", root, split, records, dropped, align="bbox", notes=notes)
