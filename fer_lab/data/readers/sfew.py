"""SFEW 2.0 (Static Facial Expressions in the Wild, EmotiW 2015): faces from movie frames in emotion folders.

Layout, as the aligned-face archives unpack (``root`` is the folder holding ``Train/`` and ``Val/``)::

    Train/Train_Aligned_Faces/<Class>/<Movie>_<frame>_<n>.png     # 958 faces
    Val/Val_Aligned_Faces/<Class>/...                              # 436 faces
    Test/Test_Aligned_Faces/...                                    # 372 faces, labels held by the organisers

with ``<Class>`` one of Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise (compared case-insensitively).
Also accepted for each split folder ``S``: ``S_Aligned_Faces/`` at the root, ``S/S_Aligned_Faces_new/`` (the
name of the Val archive), ``S/imgs/`` (the CD-FER benchmark's layout) and the class folders directly in ``S/``.

Splits: ``train`` is Train. The labelled held-out set is Val, and since Test has no public labels, Val is the
test set of the literature (the CD-FER benchmark's target-test set). Both ``test`` and ``val`` read Val; ``all``
is Train plus Val (as ``test``). The aligned faces are loose crops of varying quality (a few are not faces),
so the aligner detects (``align="mtcnn"``) and lists the images where it finds none.
"""

from __future__ import annotations

import re
from pathlib import Path

from fer_lab.data.readers.base import (
    READERS, Dropped, Manifest, ReaderError, Record, check_split, child_dir, require_dir, scan_class_folders,
)
from fer_lab.labels import expression_index

NAME = "sfew"

#: SFEW class folder (lower-case) -> fer-lab label.
CLASSES: dict[str, int] = {c: expression_index(c) for c in
                           ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")}

#: The split folder each fer-lab split reads.
SPLIT_FOLDERS = {"train": "Train", "val": "Val", "test": "Val"}

_MOVIE = re.compile(r"^(.+?)_(\d+)_(\d+)$")


def _has_classes(folder: Path | None) -> bool:
    return folder is not None and folder.is_dir() and any(
        p.is_dir() and p.name.lower() in CLASSES for p in folder.iterdir())


def class_root(root: Path, folder: str) -> Path:
    """The folder holding the class folders of split folder ``folder`` (``Train`` / ``Val``)."""
    s = child_dir(root, folder)
    candidates = [
        child_dir(s, f"{folder}_Aligned_Faces") if s else None,
        child_dir(root, f"{folder}_Aligned_Faces"),
        child_dir(s, f"{folder}_Aligned_Faces_new") if s else None,
        child_dir(root, f"{folder}_Aligned_Faces_new"),
        child_dir(s, "imgs") if s else None,
        s,
    ]
    for c in candidates:
        if _has_classes(c):
            return c
    tried = [f"{folder}/{folder}_Aligned_Faces", f"{folder}_Aligned_Faces", f"{folder}/{folder}_Aligned_Faces_new",
             f"{folder}/imgs", folder]
    raise ReaderError(f"{root}: no SFEW {folder} class folders (Angry, Disgust, ...) found in any of "
                      f"{', '.join(tried)}")


@READERS.register(NAME)
def scan(root: Path, split: str = "train") -> Manifest:
    """List the SFEW 2.0 faces of ``split`` (``test`` and ``val`` both read Val)."""
    root = Path(root)
    check_split(root, NAME, split)
    require_dir(root, "SFEW root folder")
    wanted = [("train", "Train"), ("test", "Val")] if split == "all" else [(split, SPLIT_FOLDERS[split])]
    records: list[Record] = []
    dropped: list[Dropped] = []
    notes: list[str] = []
    for tag, folder in wanted:
        base = class_root(root, folder)
        recs, drops, n = scan_class_folders(base, tag, CLASSES, "SFEW")
        for r in recs:
            m = _MOVIE.match(Path(r.source).stem)
            if m:
                r.extra.update(movie=m.group(1), frame=int(m.group(2)))
        records += recs
        dropped += drops
        notes += n
    if split in ("test", "val"):
        notes.append("SFEW's Test set has no public labels; Val is read as the test (and val) split")
    if child_dir(root, "Test") is not None and split in ("test", "all"):
        notes.append(f"{child_dir(root, 'Test')}: not read (labels held by the EmotiW organisers)")
    if not records:
        raise ReaderError(f"{root}: no SFEW images found for split {split!r}"
                          + (f" ({len(dropped)} files dropped, e.g. {dropped[0].source}: {dropped[0].reason})"
                             if dropped else ""))
    return Manifest(NAME, root, split, records, dropped, align="mtcnn", notes=notes)
