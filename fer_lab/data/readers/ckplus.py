"""CK+ (the Extended Cohn-Kanade dataset): posed neutral-to-apex sequences of 123 subjects.

Layout, as the four archives of the distribution unpack (``root`` is the folder that holds them)::

    cohn-kanade-images/S005/001/S005_001_00000001.png ... S005_001_00000011.png
    Emotion/S005/001/S005_001_00000011_emotion.txt        # one float, on the last (apex) frame only
    Landmarks/S005/001/S005_001_00000011_landmarks.txt    # 68 "x y" rows per frame (AAM tracking)
    FACS/...                                               # not read

The emotion file exists for 327 of the 593 sequences; the others have no expression label and are dropped with
that reason. Native ids: 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise.
Contempt sequences are left out (contempt is not one of the 7 classes). Following the usual protocol, the last
``peak`` frames up to the labelled frame carry the sequence's label and the first frame is a neutral face.

The 68 landmarks of each frame are reduced to the 5 of :data:`fer_lab.labels.LANDMARKS` by
:func:`fer_lab.data.align.five_from_68` (eye centres = mean of the 6 contour points of each eye, nose tip =
point 30, mouth corners = points 48 and 54, 0-based); the 68 points stay in ``Record.extra["landmarks68"]``.
Frames whose landmark file is missing or broken keep no landmarks (a note says so) and the aligner detects them. CK+ has no official split: see :class:`SubjectSplit`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fer_lab.data.align import five_from_68
from fer_lab.data.readers.base import (
    READERS, Dropped, Manifest, ReaderError, Record, SubjectSplit, check_split, is_hidden, peak_and_neutral,
    require_dir,
)
from fer_lab.labels import LabelMap

NAME = "ckplus"

#: CK+ emotion ids (Emotion/*_emotion.txt) -> fer-lab labels.
LABELS = LabelMap.from_names(
    NAME,
    {0: "neutral", 1: "anger", 3: "disgust", 4: "fear", 5: "happiness", 6: "sadness", 7: "surprise"},
    dropped={2: "contempt: not one of the 7 classes"},
)

IMAGE_DIRS = ("cohn-kanade-images", "extended-cohn-kanade-images")
EMOTION_DIRS = ("Emotion", "Emotion_labels/Emotion", "Emotion_labels")
LANDMARK_DIRS = ("Landmarks", "Landmarks/Landmarks")

_FRAME = re.compile(r"^(S\d+)_(\d+)_(\d+)\.png$", re.IGNORECASE)
_EMOTION = re.compile(r"^(S\d+)_(\d+)_(\d+)_emotion\.txt$", re.IGNORECASE)


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def read_landmarks68(path: Path) -> np.ndarray:
    """A CK+ landmark file as ``[68, 2]`` float32; :class:`ReaderError` names the file when it is not one."""
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except (OSError, UnicodeDecodeError) as e:
        raise ReaderError(f"{path}: cannot read landmark file ({e})") from None
    except ValueError:
        raise ReaderError(f"{path}: landmark file holds a value that is not a number") from None
    if values.size != 136:
        raise ReaderError(f"{path}: expected 68 'x y' rows (136 numbers), found {values.size} numbers")
    if not np.isfinite(values).all():
        raise ReaderError(f"{path}: landmark file holds a non-finite value")
    return values.reshape(68, 2).astype(np.float32)


def read_emotion(path: Path) -> int:
    """The integer id in a CK+ ``*_emotion.txt`` (written as a float, e.g. ``3.0000000e+00``)."""
    try:
        text = path.read_text().strip()
        value = float(text)
    except (OSError, UnicodeDecodeError) as e:
        raise ReaderError(f"{path}: cannot read emotion file ({e})") from None
    except ValueError:
        raise ReaderError(f"{path}: emotion file does not hold one number (found {text[:40]!r})") from None
    if not np.isfinite(value) or value != round(value):
        raise ReaderError(f"{path}: emotion id {value!r} is not a whole number")
    return int(round(value))


@READERS.register(NAME)
def scan(root: Path, split: str = "train", *, peak: int = 3, neutral: bool = True, landmarks: bool = True,
         protocol: str = "subject", folds: int = 10, fold: int = 0, val_folds: int = 0,
         split_seed: int = 0) -> Manifest:
    """List the CK+ faces of ``split``.

    peak:       frames per labelled sequence that take its label: the last ``peak`` up to the labelled frame
    neutral:    also take the first frame of each labelled (non-contempt) sequence as a neutral face
    landmarks:  read the 68 tracked points and give each record the 5 landmarks (else the aligner detects)
    protocol, folds, fold, val_folds, split_seed: the split, see :class:`SubjectSplit` (CK+ has no official one)
    """
    root = Path(root)
    check_split(root, NAME, split)
    if peak < 1:
        raise ReaderError(f"{root}: {NAME} peak must be >= 1, got {peak}")
    splitter = SubjectSplit(protocol, int(folds), int(fold), int(val_folds), int(split_seed))
    splitter.check(root, NAME)
    require_dir(root, "CK+ root folder")
    images = _first_dir(root, IMAGE_DIRS)
    if images is None:
        raise ReaderError(f"{root}: no CK+ image folder ({' or '.join(IMAGE_DIRS)}) inside; point the spec at the "
                          "folder where cohn-kanade-images.zip and Emotion_labels.zip were unpacked")
    emotions = _first_dir(root, EMOTION_DIRS)
    if emotions is None:
        raise ReaderError(f"{root}: no CK+ emotion label folder ({' or '.join(EMOTION_DIRS)}) inside; unpack "
                          "Emotion_labels.zip there")
    lm_dir = _first_dir(root, LANDMARK_DIRS) if landmarks else None
    notes: list[str] = []
    if landmarks and lm_dir is None:
        notes.append(f"{root}: no Landmarks folder; faces will be found by the detector")

    records: list[Record] = []
    dropped: list[Dropped] = []
    lm_problems: list[str] = []
    short: list[str] = []
    seq_dirs = sorted(d for s in images.iterdir() if s.is_dir() and not s.name.startswith(".")
                      for d in s.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not seq_dirs:
        raise ReaderError(f"{images}: no sequence folders (expected {images.name}/Sxxx/yyy/Sxxx_yyy_nnnnnnnn.png)")
    for seq in seq_dirs:
        subject, seq_id = seq.parent.name, seq.name
        rel = Path(subject) / seq_id
        frames: dict[int, Path] = {}
        for f in sorted(seq.iterdir()):
            if not f.is_file():
                continue
            m = _FRAME.match(f.name)
            if is_hidden(f, images):
                dropped.append(Dropped(str(f), "hidden or macOS metadata file"))
            elif not m:
                dropped.append(Dropped(str(f), "name does not follow Sxxx_yyy_nnnnnnnn.png"))
            elif (m.group(1), m.group(2)) != (subject, seq_id):
                dropped.append(Dropped(str(f), f"file name does not match its folder {rel}"))
            else:
                frames[int(m.group(3))] = f
        if not frames:
            dropped.append(Dropped(str(seq), "sequence folder holds no frames"))
            continue
        emo_files = sorted(p for p in (emotions / rel).glob("*_emotion.txt")
                           if _EMOTION.match(p.name)) if (emotions / rel).is_dir() else []
        if not emo_files:
            dropped.append(Dropped(str(seq), "no emotion label (no *_emotion.txt; CK+ labels 327 of its "
                                             "593 sequences)"))
            continue
        if len(emo_files) > 1:
            dropped.append(Dropped(str(seq), f"{len(emo_files)} emotion files; expected one on the apex frame"))
            continue
        emo = emo_files[0]
        try:
            native = read_emotion(emo)
            label = LABELS(native, str(emo))
        except ReaderError as e:
            dropped.append(Dropped(str(emo), str(e).removeprefix(f"{emo}: ")))
            continue
        except ValueError:
            dropped.append(Dropped(str(emo), f"emotion id {native} is not a CK+ id (0-7)"))
            continue
        if label is None:
            dropped.append(Dropped(str(emo), f"{LABELS.dropped[native]} (CK+ id {native}); sequence left out"))
            continue
        apex = int(_EMOTION.match(emo.name).group(3))
        if apex not in frames:
            dropped.append(Dropped(str(emo), f"labels frame {apex}, whose image is missing"))
            continue
        order = sorted(n for n in frames if n <= apex)
        peaks, first = peak_and_neutral(len(order), peak, neutral)
        if len(order) < peak + (1 if neutral else 0):
            short.append(f"{rel} ({len(order)} frames)")
        chosen = [(order[i], label, "peak") for i in peaks]
        if first is not None:
            chosen.insert(0, (order[first], LABELS(0), "neutral"))
        for n, lab, role in chosen:
            path = frames[n]
            five = None
            extra = {"sequence": str(rel), "frame": n, "role": role, "emotion_id": native if role == "peak" else 0}
            if lm_dir is not None:
                lm_path = lm_dir / rel / f"{path.stem}_landmarks.txt"
                if not lm_path.is_file():
                    lm_problems.append(f"{lm_path}: landmark file not found")
                else:
                    try:
                        p68 = read_landmarks68(lm_path)
                        five = five_from_68(p68)
                        extra["landmarks68"] = p68
                    except ReaderError as e:
                        lm_problems.append(str(e))
            records.append(Record(source=str(path), label=lab, split="train", path=path, landmarks=five,
                                  subject=subject, extra=extra))
    if short:
        notes.append(f"{len(short)} sequences are shorter than peak+neutral frames and give fewer faces: "
                     + ", ".join(short[:5]) + (" ..." if len(short) > 5 else ""))
    if lm_problems:
        notes.append(f"{len(lm_problems)} frames have no usable landmarks and will be found by the detector, "
                     f"e.g. {lm_problems[0]}")
    if not records:
        raise ReaderError(f"{root}: no labelled CK+ sequence found ({len(dropped)} files or sequences dropped, "
                          f"e.g. {dropped[0].source}: {dropped[0].reason})" if dropped else
                          f"{root}: no labelled CK+ sequence found")
    records = splitter.apply(records, split, root, NAME)
    notes.append(splitter.describe())
    # faces without landmarks fall back to detection in prepare (landmarks -> bbox -> mtcnn, per face)
    align = "landmarks" if any(r.landmarks is not None for r in records) else "mtcnn"
    return Manifest(NAME, root, split, records, dropped, align=align, notes=notes)
