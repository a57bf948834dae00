"""Any dataset laid out as class folders (torchvision's ImageFolder), with an explicit class-name map.

Two layouts (see ``data_cards/imagefolder.md``)::

    <root>/<class>/<image>                   flat: one set of faces, read with split=all
    <root>/<split>/<class>/<image>           split folders: train, val (also valid, validation), test

Folder names are mapped to :data:`fer_lab.labels.EXPRESSIONS` by name, case-insensitive, with the usual synonyms
(``angry`` -> anger, ``happy`` -> happiness, ``surprised`` -> surprise, ...); ``contempt`` is dropped with its
reason. The ``classes`` option overrides or extends the map: ``classes=AN:anger,HA:happiness,XX:drop`` (``drop``
leaves a folder out, reported). A folder that maps to nothing is an error naming it, never a guessed label.

A flat layout has no split: ask for ``split=all`` (a spec such as ``imagefolder:/data/mine?split=all`` keeps that
split for training and evaluation alike, which is transductive; say so when reporting). Images are aligned by face
detection unless the spec says otherwise (``align=whole`` for folders of tight face crops).
"""

from __future__ import annotations

from pathlib import Path

from fer_lab.data.readers.base import READERS, Manifest, ReaderError, Record, check_split, is_hidden, \
    scan_class_folders
from fer_lab.labels import EXPRESSIONS, expression_index

#: Split folder names (lower-case) -> split.
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}

#: Folder names always dropped unless ``classes`` maps them.
DROPPED = {"contempt": "contempt: not one of the 7 classes"}


def parse_class_map(text: str | None, root: Path) -> tuple[dict[str, int], dict[str, str]]:
    """``"folder:expression,..."`` -> (folder -> label, folder -> drop reason); folder names lower-cased."""
    mapped: dict[str, int] = {}
    dropped: dict[str, str] = {}
    if not text:
        return mapped, dropped
    for piece in str(text).split(","):
        folder, sep, target = piece.partition(":")
        folder, target = folder.strip().lower(), target.strip().lower()
        if not sep or not folder or not target:
            raise ReaderError(f"{root}: classes entry {piece!r} is not folder:expression (or folder:drop)")
        if target == "drop":
            dropped[folder] = "dropped by the classes option"
            continue
        try:
            mapped[folder] = expression_index(target)
        except KeyError:
            raise ReaderError(f"{root}: classes entry {piece!r}: {target!r} is not an expression "
                              f"({', '.join(EXPRESSIONS)}, or drop)") from None
    return mapped, dropped


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not is_hidden(p, folder))


@READERS.register("imagefolder")
def scan(root: Path, split: str, classes: str | None = None) -> Manifest:
    """Class folders (ImageFolder layout, optionally under train/val/test), mapped by name or a classes= map."""
    root = Path(root)
    check_split(root, "imagefolder", split)
    if not root.is_dir():
        raise ReaderError(f"{root}: not a folder (imagefolder expects <root>/<class>/<image>)")
    user_map, user_drop = parse_class_map(classes, root)
    subdirs = _class_dirs(root)
    split_dirs = {name: SPLIT_FOLDERS[name.lower()] for name in subdirs if name.lower() in SPLIT_FOLDERS}
    if split_dirs:
        wanted = [(root / name, s) for name, s in sorted(split_dirs.items()) if split in ("all", s)]
        if not wanted:
            raise ReaderError(f"{root}: no {split!r} folder (found {', '.join(sorted(split_dirs))})")
        others = sorted(set(subdirs) - set(split_dirs))
        notes = [f"split folders: {', '.join(sorted(split_dirs))}"]
        if others:
            notes.append(f"folders next to the split folders are ignored: {', '.join(others)}")
    else:
        if split != "all":
            raise ReaderError(f"{root}: flat class folders have no {split!r} split; use split=all (or arrange the "
                              f"classes under train/ and test/ folders)")
        wanted = [(root, "all")]
        notes = ["flat layout: one set of faces (split=all)"]

    records: list[Record] = []
    dropped = []
    for folder, s in wanted:
        names = _class_dirs(folder)
        table: dict[str, int] = {}
        drop: dict[str, str] = {}
        unknown = []
        for name in names:
            key = name.lower()
            if key in user_map:
                table[key] = user_map[key]
            elif key in user_drop:
                drop[key] = user_drop[key]
            elif key in DROPPED:
                drop[key] = DROPPED[key]
            else:
                try:
                    table[key] = expression_index(key)
                except KeyError:
                    unknown.append(name)
        if unknown:
            raise ReaderError(f"{folder}: class folder(s) {', '.join(map(repr, unknown))} map to no expression; "
                              f"name them with classes=<folder>:<expression> or classes=<folder>:drop")
        if not table:
            raise ReaderError(f"{folder}: no class folders (expected <class>/<image>, e.g. happy/0001.jpg)")
        recs, drops, class_notes = scan_class_folders(folder, s, table, "imagefolder", drop)
        records += recs
        dropped += drops
        notes += [n for n in class_notes if "no folder for class" not in n]
    return Manifest("imagefolder", root, split, records, dropped, align="mtcnn", notes=notes)
