"""Small replicas of the posed / lab FER datasets in their exact distribution layouts, for the reader tests.

Each ``make_*`` writes tiny images (a few pixels, a handful per class) under a folder, in the layout users
download, and returns the truth the reader must find: every face it should list, with its label in
:data:`fer_lab.labels.EXPRESSIONS` order, and what it should drop. The truth is written down here from the
dataset's documentation, not computed with the reader's code. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fer_lab.labels import expression_index

SURPRISE, FEAR, DISGUST, HAPPY, SAD, ANGER, NEUTRAL = range(7)


@dataclass
class Truth:
    """What a reader should report for a replica: ``faces`` maps a file name (or path relative to the
    replica root) to its label; ``dropped`` maps a path fragment to a phrase of the drop reason."""

    root: Path
    faces: dict[str, int] = field(default_factory=dict)
    subjects: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)


def write_image(path: Path, size: tuple[int, int] = (20, 16), mode: str = "L", seed: int = 0,
                fmt: str | None = None) -> Path:
    """A small random image (``size`` = width, height) in ``mode`` ("L" or "RGB")."""
    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, format=fmt)
    return path


def truncate(path: Path, keep: int = 40) -> Path:
    """Cut a file to its first ``keep`` bytes (a truncated download)."""
    path.write_bytes(path.read_bytes()[:keep])
    return path


# ---------------------------------------------------------------------------------------------------------- CK+
#: (subject, sequence, CK+ emotion id or None for an unlabelled sequence, number of frames)
CKPLUS_SEQUENCES = [
    ("S005", "001", 3, 5),     # disgust
    ("S005", "002", None, 4),  # no emotion file
    ("S010", "001", 7, 6),     # surprise
    ("S010", "004", 2, 5),     # contempt: dropped
    ("S011", "001", 1, 5),     # anger
    ("S011", "002", 4, 4),     # fear
    ("S022", "001", 5, 5),     # happy
    ("S022", "003", 6, 5),     # sadness
    ("S026", "001", 5, 3),     # happy, short: frames 2, 3 peak + frame 1 neutral
    ("S032", "002", 7, 4),     # surprise
]
CKPLUS_TO_OURS = {1: ANGER, 3: DISGUST, 4: FEAR, 5: HAPPY, 6: SAD, 7: SURPRISE}


def ck_points68(seed: int) -> np.ndarray:
    """68 plausible points whose 5-point reduction is known: eyes at (20+s, 30) / (44+s, 30), nose (32+s, 42),
    mouth corners (24+s, 52) / (40+s, 52), with s = seed."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 64, (68, 2))
    s = float(seed)
    ring = np.array([[-3, 0], [-1.5, -1], [1.5, -1], [3, 0], [1.5, 1], [-1.5, 1]])  # mean 0
    p[36:42] = np.array([20 + s, 30]) + ring
    p[42:48] = np.array([44 + s, 30]) + ring
    p[30] = [32 + s, 42]
    p[48] = [24 + s, 52]
    p[54] = [40 + s, 52]
    return p


def ck_five(seed: int) -> np.ndarray:
    s = float(seed)
    return np.array([[20 + s, 30], [44 + s, 30], [32 + s, 42], [24 + s, 52], [40 + s, 52]], np.float32)


def write_ck_landmarks(path: Path, points: np.ndarray) -> None:
    """CK+'s landmark format: one point per line, leading spaces, 3-space separator, exponent notation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"   {x:.7e}   {y:.7e}\n" for x, y in points))


def make_ckplus(root: Path, quirks: bool = True) -> Truth:
    """CK+ as the four archives unpack: cohn-kanade-images/, Emotion/, Landmarks/ (and FACS/, not read).

    Expected with ``peak=3, neutral=True``: per labelled non-contempt sequence, the last 3 frames with its label
    and frame 1 as neutral. ``quirks`` adds: a macOS ``.DS_Store``, a frame with a truncated landmark file,
    an emotion file with a bad id (9), one that is not a number, one naming a missing frame.
    """
    t = Truth(root)
    for k, (subj, seq, emo, n) in enumerate(CKPLUS_SEQUENCES):
        seq_dir = root / "cohn-kanade-images" / subj / seq
        for f in range(1, n + 1):
            name = f"{subj}_{seq}_{f:08d}"
            write_image(seq_dir / f"{name}.png", (24, 18), "RGB" if subj == "S022" else "L", seed=k * 100 + f)
            write_ck_landmarks(root / "Landmarks" / subj / seq / f"{name}_landmarks.txt", ck_points68(k + f))
            t.landmarks[f"{name}.png"] = ck_five(k + f)
        (root / "FACS" / subj / seq).mkdir(parents=True, exist_ok=True)
        if emo is None:
            t.dropped[f"{subj}/{seq}"] = "no emotion label"
            continue
        emo_path = root / "Emotion" / subj / seq / f"{subj}_{seq}_{n:08d}_emotion.txt"
        emo_path.parent.mkdir(parents=True, exist_ok=True)
        emo_path.write_text(f"   {float(emo):.7e}\n")
        if emo == 2:
            t.dropped[emo_path.name] = "contempt"
            continue
        for f in range(max(2, n - 2), n + 1):
            t.faces[f"{subj}_{seq}_{f:08d}.png"] = CKPLUS_TO_OURS[emo]
        t.faces[f"{subj}_{seq}_{1:08d}.png"] = NEUTRAL
    for subj, _, _, _ in CKPLUS_SEQUENCES:
        t.subjects[subj] = subj
    if quirks:
        (root / "cohn-kanade-images" / "S005" / "001" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        t.dropped[".DS_Store"] = "hidden"
        # a truncated landmark file: the frame stays, without landmarks
        bad_lm = root / "Landmarks" / "S011" / "001" / "S011_001_00000005_landmarks.txt"
        bad_lm.write_text("   2.9e+02   2.3e+02\n   3.0e+02\n")
        t.landmarks.pop("S011_001_00000005.png")
        t.extra["no_landmarks"] = "S011_001_00000005.png"
        for subj, seq, content, why in [("S040", "001", "   9.0000000e+00\n", "not a CK+ id"),
                                        ("S041", "001", "three\n", "does not hold one number")]:
            for f in range(1, 4):
                write_image(root / "cohn-kanade-images" / subj / seq / f"{subj}_{seq}_{f:08d}.png", seed=f)
            p = root / "Emotion" / subj / seq / f"{subj}_{seq}_{3:08d}_emotion.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)
            t.dropped[p.name] = why
        # emotion file names frame 9 but the images stop at 3
        for f in range(1, 4):
            write_image(root / "cohn-kanade-images" / "S042" / "001" / f"S042_001_{f:08d}.png", seed=f)
        p = root / "Emotion" / "S042" / "001" / "S042_001_00000009_emotion.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("   5.0000000e+00\n")
        t.dropped[p.name] = "missing"
    return t
