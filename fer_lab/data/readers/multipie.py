"""CMU Multi-PIE, multiview part: 337 people, up to 4 sessions, 15 cameras, 20 flash shots, 6 expressions.

Layout (``root`` is the folder that holds the ``session01`` ... ``session04`` folders, or one of them)::

    session02/multiview/001/02/05_1/001_02_02_051_07.png
    #       <session>/multiview/<subject>/<recording>/<camera>/<subject>_<session>_<recording>_<camera>_<shot>.png

The camera folder ``05_1`` is written ``051`` in the file name. The expression is a property of the recording
within its session (bob.db.multipie; FFWM ``data_process/process.py``)::

    session 1: 01 neutral, 02 smile
    session 2: 01 neutral, 02 surprise, 03 squint
    session 3: 01 neutral, 02 smile, 03 disgust
    session 4: 01 neutral, 02 neutral, 03 scream

Mapped to fer-lab's classes: smile -> happiness, surprise, disgust, neutral. **Squint and scream have no place** in
the seven classes (no FER paper we read states a mapping), so their images are dropped with that reason.

``cameras`` chooses the views: ``head`` (default: the 13 cameras at head height, yaw -90 ... +90 in 15 degree
steps), ``all`` (also 08_1 and 19_1, which sit above the subject and get no yaw), ``frontal`` (05_1), or a
comma-separated list of camera names (``05_1,14_0,05_0``; ``051`` works too). ``shots`` chooses the flash
illuminations: ``07`` (default: the frontal flash), ``all`` (00-19), or a list (``0,7``). Images of other cameras
or shots are dropped with that reason. ``subject`` keeps only the listed people (``001,013``): with
``protocol=transductive`` that is a personalised target (every split holds that person's faces).

``Record.pose`` is ``(yaw, 0, 0)`` from the camera table (datasets.md section 11; the sign convention of the
source is arbitrary and is taken as fer-lab's: positive yaw towards image right, unverified); the elevated
cameras get no pose. The subject id is the 3-digit number (not contiguous, up to 346); a subject split keeps all
of a person's sessions together. The ``highres/`` trees are not read. No landmarks: faces are detected
(``align="mtcnn"``); the far profiles often defeat the detector and land in ``no_face.txt``.
"""

from __future__ import annotations

import re
from pathlib import Path

from fer_lab.data.readers.base import (
    READERS, Dropped, Manifest, ReaderError, Record, SubjectSplit, check_split, is_hidden, require_dir,
)
from fer_lab.labels import expression_index

NAME = "multipie"

#: (session, recording) -> Multi-PIE expression name.
RECORDINGS: dict[tuple[int, int], str] = {
    (1, 1): "neutral", (1, 2): "smile",
    (2, 1): "neutral", (2, 2): "surprise", (2, 3): "squint",
    (3, 1): "neutral", (3, 2): "smile", (3, 3): "disgust",
    (4, 1): "neutral", (4, 2): "neutral", (4, 3): "scream",
}
#: Multi-PIE expression -> fer-lab label, or the reason it is dropped.
EXPRESSION_LABELS: dict[str, int] = {"neutral": expression_index("neutral"), "smile": expression_index("happiness"),
                                     "surprise": expression_index("surprise"), "disgust": expression_index("disgust")}
DROPPED_EXPRESSIONS: dict[str, str] = {"squint": "squint has no place in the 7 classes",
                                       "scream": "scream has no place in the 7 classes"}

#: Head-height cameras -> yaw in degrees.
CAMERA_YAW: dict[str, float] = {
    "11_0": -90.0, "12_0": -75.0, "09_0": -60.0, "08_0": -45.0, "13_0": -30.0, "14_0": -15.0, "05_1": 0.0,
    "05_0": 15.0, "04_1": 30.0, "19_0": 45.0, "20_0": 60.0, "01_0": 75.0, "24_0": 90.0,
}
#: Cameras above the subject (no yaw given).
ELEVATED: tuple[str, ...] = ("08_1", "19_1")
SHOTS = tuple(range(20))

_FILE = re.compile(r"^(\d{3})_(\d{2})_(\d{2})_(\d{3})_(\d{2})\.png$", re.IGNORECASE)
_SESSION = re.compile(r"^session0?([1-4])$", re.IGNORECASE)


def _camera_name(text: str) -> str:
    """``05_1``, ``051`` or ``51`` (a spec value read as an integer) -> ``05_1``."""
    t = str(text).strip().replace("_", "")
    return f"{t.zfill(3)[:2]}_{t.zfill(3)[2]}" if t.isdigit() and len(t) <= 3 else str(text).strip()


def parse_cameras(cameras: object, root: Path) -> tuple[str, ...]:
    """The ``cameras`` option as camera names; :class:`ReaderError` names an unknown one."""
    known = (*CAMERA_YAW, *ELEVATED)
    text = str(cameras).strip().lower()
    if text == "head":
        return tuple(CAMERA_YAW)
    if text == "all":
        return known
    if text == "frontal":
        return ("05_1",)
    names = tuple(dict.fromkeys(_camera_name(c) for c in str(cameras).split(",") if c.strip()))
    bad = [c for c in names if c not in known]
    if bad or not names:
        raise ReaderError(f"{root}: {NAME} camera(s) {', '.join(bad) or repr(cameras)} unknown; use head, all, "
                          f"frontal or a list of {', '.join(known)}")
    return names


def parse_shots(shots: object, root: Path) -> tuple[int, ...]:
    """The ``shots`` option as shot numbers 0-19; :class:`ReaderError` for anything else."""
    if str(shots).strip().lower() == "all":
        return SHOTS
    try:
        out = tuple(dict.fromkeys(int(s) for s in str(shots).split(",") if s.strip()))
    except ValueError:
        out = ()
    if not out or any(s not in SHOTS for s in out):
        raise ReaderError(f"{root}: {NAME} shots {shots!r} must be 'all' or a list of numbers in 0..19")
    return out


def parse_subjects(subject: object) -> set[str] | None:
    """``subject`` (``"001,013"``, or an int a spec read from ``001``) as 3-digit ids; ``None`` keeps everyone."""
    if subject is None or str(subject).strip().lower() in ("", "all"):
        return None
    return {str(s).strip().zfill(3) for s in str(subject).split(",") if str(s).strip()}


def _session_folders(root: Path) -> list[tuple[int, Path]]:
    if _SESSION.match(root.name):
        return [(int(_SESSION.match(root.name).group(1)), root)]
    return sorted((int(_SESSION.match(p.name).group(1)), p) for p in root.iterdir()
                  if p.is_dir() and _SESSION.match(p.name))


@READERS.register(NAME)
def scan(root: Path, split: str = "train", *, cameras: str = "head", shots: str = "07", subject: str | None = None,
         protocol: str = "subject", folds: int = 5, fold: int = 0, val_folds: int = 0,
         split_seed: int = 0) -> Manifest:
    """List the Multi-PIE faces of ``split`` (options: see the module docstring and :class:`SubjectSplit`)."""
    root = Path(root)
    check_split(root, NAME, split)
    cams, shot_set, keep = parse_cameras(cameras, root), set(parse_shots(shots, root)), parse_subjects(subject)
    splitter = SubjectSplit(protocol, int(folds), int(fold), int(val_folds), int(split_seed))
    splitter.check(root, NAME)
    require_dir(root, "Multi-PIE folder", "expected session01 ... session04 inside")
    sessions = _session_folders(root)
    if not sessions:
        raise ReaderError(f"{root}: no session01 ... session04 folders (the Multi-PIE layout is "
                          f"session<SS>/multiview/<subject>/<recording>/<camera>/<file>.png)")
    records: list[Record] = []
    dropped: list[Dropped] = []
    for number, folder in sessions:
        multiview = folder / "multiview"
        if not multiview.is_dir():
            raise ReaderError(f"{multiview}: multiview folder not found in {folder.name}")
        for path in sorted(p for p in multiview.rglob("*") if p.is_file()):
            if is_hidden(path, root):
                dropped.append(Dropped(str(path), "hidden or macOS metadata file"))
                continue
            m = _FILE.match(path.name)
            if not m:
                dropped.append(Dropped(str(path), "name does not follow <subject>_<session>_<recording>_<camera>_"
                                                  "<shot>.png"))
                continue
            who, ses, rec, cam, shot = m.groups()
            cam_name = f"{cam[:2]}_{cam[2]}"
            rel = path.relative_to(multiview).parts
            if rel[:-1] != (who, rec, cam_name) or int(ses) != number:
                dropped.append(Dropped(str(path), f"file name does not match its folders (expected "
                                                  f"session{int(ses):02d}/multiview/{who}/{rec}/{cam_name}/)"))
                continue
            if cam_name not in cams:
                dropped.append(Dropped(str(path), f"camera {cam_name} not selected (cameras={cameras})"))
                continue
            if int(shot) not in shot_set:
                dropped.append(Dropped(str(path), f"shot {shot} not selected (shots={shots})"))
                continue
            if keep is not None and who not in keep:
                dropped.append(Dropped(str(path), f"subject {who} not selected"))
                continue
            expression = RECORDINGS.get((number, int(rec)))
            if expression is None:
                dropped.append(Dropped(str(path), f"recording {rec} of session {number} is not in the "
                                                  f"expression table"))
                continue
            if expression in DROPPED_EXPRESSIONS:
                dropped.append(Dropped(str(path), DROPPED_EXPRESSIONS[expression]))
                continue
            yaw = CAMERA_YAW.get(cam_name)
            records.append(Record(source=str(path), label=EXPRESSION_LABELS[expression], split="train", path=path,
                                  subject=who, pose=None if yaw is None else (yaw, 0.0, 0.0),
                                  extra={"session": number, "recording": int(rec), "camera": cam_name,
                                         "shot": int(shot), "expression": expression}))
    if not records:
        raise ReaderError(f"{root}: no Multi-PIE images of the selected cameras / shots / subjects found"
                          + (f"; {len(dropped)} files dropped, e.g. {dropped[0].source}: {dropped[0].reason}"
                             if dropped else ""))
    notes = [f"cameras read: {','.join(cams)}; shots: {','.join(f'{s:02d}' for s in sorted(shot_set))}",
             "squint and scream are dropped (no place in the 7 classes)", splitter.describe()]
    records = splitter.apply(records, split, root, NAME)
    return Manifest(NAME, root, split, records, dropped, align="mtcnn", notes=notes)
