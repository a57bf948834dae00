"""Oulu-CASIA NIR&VIS: posed neutral-to-apex sequences of 80 subjects, 6 expressions, two cameras, 3 lights.

Layout (``root`` is the folder that holds ``OriginalImg/``, or that folder itself)::

    OriginalImg/VL/Strong/P001/Anger/000.jpeg 001.jpeg ...       # visible light, strong illumination
    OriginalImg/NI/...                                            # near-infrared camera
    OriginalImg/VL/{Weak,Dark}/...                                # other illumination

``modality`` (``VL`` or ``NI``) and ``lighting`` (``Strong``, ``Weak``, ``Dark``) choose one of the six
recordings (default ``VL/Strong``, the one the literature and the CD-FER benchmark use); ``variant`` names
another image folder of the release in place of ``OriginalImg``. Expression folders are Anger, Disgust,
Fear, Happiness, Sadness, Surprise; frames are numbered from ``000``. Each sequence starts neutral and ends at
the apex, so, as for CK+, the last ``peak`` frames take the expression and the first frame is a neutral face
(Oulu-CASIA has no neutral class of its own and no contempt). No landmarks or boxes: faces are detected.

Oulu-CASIA has no official split: see :class:`~fer_lab.data.readers.base.SubjectSplit` (the default 10
subject folds are the literature's 10-fold protocol; ``protocol=transductive`` is the CD-FER one).
"""

from __future__ import annotations

import re
from pathlib import Path

from fer_lab.data.readers.base import (
    IMAGE_EXTENSIONS, READERS, Dropped, Manifest, ReaderError, Record, SubjectSplit, check_split, child_dir,
    is_hidden, peak_and_neutral, require_dir,
)
from fer_lab.labels import expression_index

NAME = "oulu"

#: Oulu-CASIA expression folder (lower-case) -> fer-lab label.
CLASSES: dict[str, int] = {c: expression_index(c) for c in
                           ("anger", "disgust", "fear", "happiness", "sadness", "surprise")}
MODALITIES = ("VL", "NI")
LIGHTINGS = ("Strong", "Weak", "Dark")

_SUBJECT = re.compile(r"^P\d+$", re.IGNORECASE)


@READERS.register(NAME)
def scan(root: Path, split: str = "train", *, modality: str = "VL", lighting: str = "Strong",
         variant: str = "OriginalImg", peak: int = 3, neutral: bool = True, protocol: str = "subject",
         folds: int = 10, fold: int = 0, val_folds: int = 0, split_seed: int = 0) -> Manifest:
    """List the Oulu-CASIA faces of ``split`` for one camera (``modality``) and illumination (``lighting``).

    peak / neutral: frames per sequence, as for CK+; the split options are those of :class:`SubjectSplit`.
    """
    root = Path(root)
    check_split(root, NAME, split)
    if str(modality).upper() not in MODALITIES:
        raise ReaderError(f"{root}: {NAME} modality {modality!r} is not one of {', '.join(MODALITIES)}")
    if str(lighting).capitalize() not in LIGHTINGS:
        raise ReaderError(f"{root}: {NAME} lighting {lighting!r} is not one of {', '.join(LIGHTINGS)}")
    if peak < 1:
        raise ReaderError(f"{root}: {NAME} peak must be >= 1, got {peak}")
    splitter = SubjectSplit(protocol, int(folds), int(fold), int(val_folds), int(split_seed))
    splitter.check(root, NAME)
    require_dir(root, "Oulu-CASIA root folder")
    base = child_dir(root, variant) or (root if child_dir(root, modality) else None)
    if base is None:
        raise ReaderError(f"{root}: no {variant}/ folder (nor VL/, NI/) inside; point the spec at the folder that "
                          f"holds {variant}/")
    rec_dir = child_dir(base, modality)
    rec_dir = child_dir(rec_dir, lighting) if rec_dir else None
    if rec_dir is None:
        have = sorted(f"{m.name}/{l.name}" for m in base.iterdir() if m.is_dir() for l in m.iterdir() if l.is_dir())
        raise ReaderError(f"{base / modality / lighting}: recording folder not found (found: "
                          f"{', '.join(have) or 'nothing'})")
    records: list[Record] = []
    dropped: list[Dropped] = []
    notes: list[str] = []
    short: list[str] = []
    subjects = sorted(p for p in rec_dir.iterdir() if p.is_dir())
    for subj in subjects:
        if not _SUBJECT.match(subj.name):
            dropped.append(Dropped(str(subj), "folder is not a subject folder (Pnnn)"))
            continue
        for seq in sorted(p for p in subj.iterdir()):
            if not seq.is_dir():
                dropped.append(Dropped(str(seq), "file outside an expression folder"))
                continue
            label = CLASSES.get(seq.name.lower())
            if label is None:
                dropped.append(Dropped(str(seq), f"folder {seq.name!r} is not an Oulu-CASIA expression "
                                                 f"({', '.join(sorted(CLASSES))})"))
                continue
            frames: dict[int, Path] = {}
            for f in sorted(seq.iterdir()):
                if not f.is_file():
                    continue
                if is_hidden(f, rec_dir):
                    dropped.append(Dropped(str(f), "hidden or macOS metadata file"))
                elif f.suffix.lower() not in IMAGE_EXTENSIONS:
                    dropped.append(Dropped(str(f), f"not an image file ({f.suffix or 'no extension'})"))
                elif not f.stem.isdigit():
                    dropped.append(Dropped(str(f), "frame name is not a number (000.jpeg, 001.jpeg, ...)"))
                else:
                    frames[int(f.stem)] = f
            if not frames:
                dropped.append(Dropped(str(seq), "sequence folder holds no frames"))
                continue
            order = sorted(frames)
            peaks, first = peak_and_neutral(len(order), int(peak), bool(neutral))
            if len(order) < peak + (1 if neutral else 0):
                short.append(f"{subj.name}/{seq.name} ({len(order)} frames)")
            chosen = [(order[i], label, "peak") for i in peaks]
            if first is not None:
                chosen.insert(0, (order[first], expression_index("neutral"), "neutral"))
            for n, lab, role in chosen:
                records.append(Record(source=str(frames[n]), label=lab, split="train", path=frames[n],
                                      subject=subj.name.upper(),
                                      extra={"sequence": f"{subj.name}/{seq.name}", "frame": n, "role": role,
                                             "modality": rec_dir.parent.name, "lighting": rec_dir.name}))
    if short:
        notes.append(f"{len(short)} sequences are shorter than peak+neutral frames and give fewer faces: "
                     + ", ".join(short[:5]) + (" ..." if len(short) > 5 else ""))
    if not records:
        raise ReaderError(f"{rec_dir}: no Oulu-CASIA sequences (Pnnn/<Expression>/nnn.jpeg) found")
    present = {r.label for r in records}
    missing = [c for c, i in CLASSES.items() if i not in present]
    if missing:
        notes.append(f"{rec_dir}: no sequences for {', '.join(missing)}")
    records = splitter.apply(records, split, root, NAME)
    notes.append(splitter.describe())
    return Manifest(NAME, root, split, records, dropped, align="mtcnn", notes=notes)
