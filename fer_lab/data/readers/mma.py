"""MMA Facial Expression (Kaggle ``mahmoudima/mma-facial-expression``): small web face crops in class folders.

Layout (``root`` is ``MMAFEDB/`` or the folder holding it)::

    MMAFEDB/train/{angry,disgust,fear,happy,neutral,sad,surprise}/<image>
    MMAFEDB/valid/<class>/...
    MMAFEDB/test/<class>/...

Splits map one to one: ``train`` -> train, ``val`` -> valid, ``test`` -> test (the set the Generalizable-FER
evaluation presumably uses); ``all`` reads the three. Class folders are compared case-insensitively. The
images are small tight face crops (48x48 per the Kaggle page), so they are resized whole (``align="whole"``).
Files outside a class folder, in an unknown folder or not images are dropped with the reason.
"""

from __future__ import annotations

from pathlib import Path

from fer_lab.data.readers.base import (
    READERS, Dropped, Manifest, ReaderError, Record, check_split, child_dir, require_dir, scan_class_folders,
)
from fer_lab.labels import expression_index

NAME = "mma"

#: MMA class folder -> fer-lab label.
CLASSES: dict[str, int] = {c: expression_index(c) for c in
                           ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")}

#: fer-lab split -> the MMA folder names accepted for it (first found is read).
SPLIT_FOLDERS = {"train": ("train",), "val": ("valid", "val", "validation"), "test": ("test",)}


@READERS.register(NAME)
def scan(root: Path, split: str = "train") -> Manifest:
    """List the MMA faces of ``split``."""
    root = Path(root)
    check_split(root, NAME, split)
    require_dir(root, "MMA folder")
    base = child_dir(root, "MMAFEDB") or root
    records: list[Record] = []
    dropped: list[Dropped] = []
    notes: list[str] = []
    for tag in (("train", "val", "test") if split == "all" else (split,)):
        folder = child_dir(base, *SPLIT_FOLDERS[tag])
        if folder is None:
            raise ReaderError(f"{base}: no MMA {tag} folder ({' or '.join(SPLIT_FOLDERS[tag])}/) inside; expected "
                              "MMAFEDB/{train,valid,test}/<class>/")
        recs, drops, n = scan_class_folders(folder, tag, CLASSES, "MMA")
        records += recs
        dropped += drops
        notes += n
    if not records:
        raise ReaderError(f"{base}: no MMA images found for split {split!r}"
                          + (f" ({len(dropped)} files dropped, e.g. {dropped[0].source}: {dropped[0].reason})"
                             if dropped else ""))
    return Manifest(NAME, root, split, records, dropped, align="whole", notes=notes)
