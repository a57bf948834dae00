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


# -------------------------------------------------------------------------------------------------------- JAFFE
JAFFE_CODES = {"AN": ANGER, "DI": DISGUST, "FE": FEAR, "HA": HAPPY, "NE": NEUTRAL, "SA": SAD, "SU": SURPRISE}
JAFFE_EXPRESSERS = ("KA", "KL", "KM", "KR", "MK", "NA")


def make_jaffe(root: Path, quirks: bool = True) -> Truth:
    """``jaffedbase/`` with flat 256x256-like grey TIFFs ``KA.AN1.39.tiff`` (small here), plus README_FIRST.txt.

    Each expresser has one image per code and a second happy sample. ``quirks`` adds a macOS ``._`` file, a
    TIFF with a malformed name, one with an unknown code, a stray JPEG and a duplicate name in another folder.
    """
    t = Truth(root)
    base = root / "jaffedbase"
    image_id = 1
    for e, who in enumerate(JAFFE_EXPRESSERS):
        for c, (code, label) in enumerate(JAFFE_CODES.items()):
            for sample in ((1, 2) if code == "HA" else (1,)):
                name = f"{who}.{code}{sample}.{image_id}.tiff"
                write_image(base / name, (16, 16), "L", seed=image_id, fmt="TIFF")
                t.faces[name] = label
                t.subjects[name] = who
                image_id += 1
    (base / "README_FIRST.txt").write_text("JAFFE documentation\n")
    if quirks:
        (base / "._KA.AN1.1.tiff").write_bytes(b"\0\5\26\7AppleDouble")
        t.dropped["._KA.AN1.1.tiff"] = "hidden"
        write_image(base / "KA-AN1-999.tiff", fmt="TIFF")
        t.dropped["KA-AN1-999.tiff"] = "name does not follow"
        write_image(base / "KA.XX1.998.tiff", fmt="TIFF")
        t.dropped["KA.XX1.998.tiff"] = "not a JAFFE code"
        write_image(base / "preview.jpg")
        t.dropped["preview.jpg"] = "not a JAFFE TIFF"
        write_image(root / "jaffedbase_copy" / "KL.SU1.16.tiff", (16, 16), fmt="TIFF")
        assert "KL.SU1.16.tiff" in t.faces
        t.dropped["jaffedbase_copy/KL.SU1.16.tiff"] = "duplicate of"
    return t


# --------------------------------------------------------------------------------------------------------- SFEW
SFEW_CLASSES = {"Angry": ANGER, "Disgust": DISGUST, "Fear": FEAR, "Happy": HAPPY, "Neutral": NEUTRAL,
                "Sad": SAD, "Surprise": SURPRISE}


def make_sfew(root: Path, quirks: bool = True, val_folder: str = "Val/Val_Aligned_Faces") -> Truth:
    """``Train/Train_Aligned_Faces/<Class>/<Movie>_<frame>_<n>.png`` and the same for Val (2 and 1 per class),
    plus an unlabelled ``Test/Test_Aligned_Faces/`` (not read). ``val_folder`` places Val elsewhere (e.g. the
    ``Val_Aligned_Faces_new`` name of its archive). ``quirks``: a Thumbs.db in a class folder, an image in an
    unknown folder, a lower-case class folder name, an empty Fear folder in Val."""
    t = Truth(root)
    t.extra["train"], t.extra["val"] = {}, {}
    k = 0
    for split, folder, per in (("train", "Train/Train_Aligned_Faces", 2), ("val", val_folder, 1)):
        for cls, label in SFEW_CLASSES.items():
            d = root / folder / (cls.lower() if quirks and cls == "Sad" and split == "train" else cls)
            if quirks and split == "val" and cls == "Fear":
                d.mkdir(parents=True, exist_ok=True)
                continue
            for n in range(per):
                k += 1
                name = f"Movie{k}_{k * 1000:09d}_{n + 1:08d}.png"
                write_image(d / name, (14, 18), "RGB", seed=k)
                t.extra[split][name] = label
    write_image(root / "Test" / "Test_Aligned_Faces" / "Airheads_000519240_00000005.png", seed=99)
    if quirks:
        (root / "Train" / "Train_Aligned_Faces" / "Happy" / "Thumbs.db").write_bytes(b"\0" * 16)
        t.dropped["Thumbs.db"] = "not an image file"
        write_image(root / "Train" / "Train_Aligned_Faces" / "Contempt" / "Film_000000001_00000001.png")
        t.dropped["Contempt"] = "not a SFEW class"
    t.faces = {**t.extra["train"], **t.extra["val"]}
    return t


# --------------------------------------------------------------------------------------------------- Oulu-CASIA
OULU_CLASSES = {"Anger": ANGER, "Disgust": DISGUST, "Fear": FEAR, "Happiness": HAPPY, "Sadness": SAD,
                "Surprise": SURPRISE}


def make_oulu(root: Path, subjects: int = 4, frames: int = 6, quirks: bool = True) -> Truth:
    """``OriginalImg/{VL,NI}/Strong/Pnnn/<Expression>/nnn.jpeg``, ``frames`` frames per sequence; also a
    ``VL/Weak`` recording for one subject. Truth (``faces``: path relative to the recording folder) for
    ``peak=3, neutral=True`` in VL/Strong. ``quirks``: a 2-frame sequence, an empty sequence folder, a
    ``Thumbs.db``, an unknown expression folder."""
    t = Truth(root)
    for mod in ("VL", "NI"):
        for p in range(1, subjects + 1):
            subj = f"P{p:03d}"
            for cls, label in OULU_CLASSES.items():
                n = 2 if quirks and mod == "VL" and p == 1 and cls == "Fear" else frames
                for f in range(n):
                    write_image(root / "OriginalImg" / mod / "Strong" / subj / cls / f"{f:03d}.jpeg",
                                (16, 12), "RGB" if mod == "VL" else "L", seed=p * 100 + f, fmt="JPEG")
                    if mod == "VL" and (f == 0 or f >= max(1, n - 3)):
                        t.faces[f"{subj}/{cls}/{f:03d}.jpeg"] = NEUTRAL if f == 0 else label
                        t.subjects[f"{subj}/{cls}/{f:03d}.jpeg"] = subj
    for f in range(frames):
        write_image(root / "OriginalImg" / "VL" / "Weak" / "P001" / "Happiness" / f"{f:03d}.jpeg", seed=f, fmt="JPEG")
    if quirks:
        vl = root / "OriginalImg" / "VL" / "Strong"
        (vl / "P002" / "Surprise" / "Thumbs.db").write_bytes(b"\0" * 8)
        t.dropped["P002/Surprise/Thumbs.db"] = "not an image file"
        (vl / "P003" / "Sadness_old").mkdir()
        t.dropped["P003/Sadness_old"] = "not an Oulu-CASIA expression"
        write_image(vl / "P003" / "Sadness_old" / "000.jpeg", fmt="JPEG")
        (vl / "P004" / "Contempt").mkdir()
        t.dropped["P004/Contempt"] = "not an Oulu-CASIA expression"
        (vl / "P005" / "Anger").mkdir(parents=True)
        t.dropped["P005/Anger"] = "holds no frames"
    return t


# --------------------------------------------------------------------------------------------------------- KDEF
KDEF_CODES = {"AF": FEAR, "AN": ANGER, "DI": DISGUST, "HA": HAPPY, "NE": NEUTRAL, "SA": SAD, "SU": SURPRISE}
KDEF_ANGLES = ("S", "HL", "HR", "FL", "FR")


def make_kdef(root: Path, people: tuple[str, ...] = ("F01", "F02", "M01", "M02", "M03"),
              quirks: bool = True) -> Truth:
    """``KDEF_and_AKDEF/KDEF/<AF01>/<AF01ANS>.JPG``: both sessions, all 7 expressions and 5 angles.
    ``faces`` holds every file name with its label (the tests filter by angle). ``quirks``: a misnamed file,
    a ``.txt`` note, a macOS ``._`` file."""
    t = Truth(root)
    base = root / "KDEF_and_AKDEF" / "KDEF"
    k = 0
    for session in "AB":
        for who in people:
            for code, label in KDEF_CODES.items():
                for angle in KDEF_ANGLES:
                    k += 1
                    name = f"{session}{who}{code}{angle}.JPG"
                    write_image(base / f"{session}{who}" / name, (12, 16), "RGB", seed=k, fmt="JPEG")
                    t.faces[name] = label
                    t.subjects[name] = who
    (root / "KDEF_and_AKDEF" / "ReadThisFirst.txt").write_text("KDEF\n")
    if quirks:
        write_image(base / "AF01" / "AF01ANS_copy.JPG", fmt="JPEG")
        t.dropped["AF01ANS_copy.JPG"] = "name does not follow"
        (base / "AF01" / "._AF01ANS.JPG").write_bytes(b"\0\5\26\7")
        t.dropped["._AF01ANS.JPG"] = "hidden"
    return t


# ---------------------------------------------------------------------------------------------------------- MMA
MMA_CLASSES = {"angry": ANGER, "disgust": DISGUST, "fear": FEAR, "happy": HAPPY, "neutral": NEUTRAL, "sad": SAD,
               "surprise": SURPRISE}


def make_mma(root: Path, quirks: bool = True) -> Truth:
    """``MMAFEDB/{train,valid,test}/<class>/<n>.jpg`` (48x48 in the original; 8x8 here), 3/1/2 per class.
    ``extra[split]`` maps each file (relative to MMAFEDB) to its label. ``quirks``: an image directly in
    ``train/``, an ``.ipynb_checkpoints`` folder, a ``desktop.ini``."""
    t = Truth(root)
    k = 0
    for split, folder, per in (("train", "train", 3), ("val", "valid", 1), ("test", "test", 2)):
        t.extra[split] = {}
        for cls, label in MMA_CLASSES.items():
            for n in range(per):
                k += 1
                rel = f"{folder}/{cls}/{k}.jpg"
                write_image(root / "MMAFEDB" / rel, (8, 8), "L" if k % 2 else "RGB", seed=k, fmt="JPEG")
                t.extra[split][rel] = label
    if quirks:
        write_image(root / "MMAFEDB" / "train" / "stray.jpg", fmt="JPEG")
        t.dropped["train/stray.jpg"] = "not inside a class folder"
        write_image(root / "MMAFEDB" / "train" / ".ipynb_checkpoints" / "1-checkpoint.jpg", fmt="JPEG")
        t.dropped[".ipynb_checkpoints"] = "hidden"
        (root / "MMAFEDB" / "test" / "happy" / "desktop.ini").write_text("[.ShellClassInfo]\n")
        t.dropped["desktop.ini"] = "not an image file"
    t.faces = {k: v for s in ("train", "val", "test") for k, v in t.extra[s].items()}
    return t


def prepared_labels(spec: str) -> tuple[dict[str, int], object]:
    """Load a spec through :func:`fer_lab.data.spec.load_dataset` (scan, align, cache) and return
    ``({source relative to the dataset root: label}, FaceArrays)``."""
    from fer_lab.data.spec import load_dataset

    data = load_dataset(spec)
    return dict(zip(data.meta["sources"], (int(v) for v in data.labels))), data
