"""Small replicas of the in-the-wild FER datasets in their exact distribution formats, for the reader tests.

Each ``make_*`` writes a handful of tiny faces per class under a folder, in the layout and file format users
download (RAF-DB, FER2013 in its three CSV variants, FERPlus, AffectNet, ExpW, an ImageFolder tree), including the
known quirks (RAF-DB's misspelled ``list_patition_label.txt``, FERPlus rows with empty names, ``icml_face_data.csv``'s
space-prefixed column names) and a few bad inputs. It returns a :class:`Truth`: the faces the reader must list with
their canonical labels, written down from each dataset's documentation (never computed with the reader's code).

Every image is filled with one grey value that encodes its label (:func:`shade`), so a test can check after
decoding and alignment that no face travelled with another face's label. Nothing is downloaded.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SURPRISE, FEAR, DISGUST, HAPPY, SAD, ANGER, NEUTRAL = range(7)

#: Native ids written down from each dataset's documentation -> canonical index (kept independent of the readers).
RAF_TO_CANON = {1: SURPRISE, 2: FEAR, 3: DISGUST, 4: HAPPY, 5: SAD, 6: ANGER, 7: NEUTRAL}
KAGGLE_TO_CANON = {0: ANGER, 1: DISGUST, 2: FEAR, 3: HAPPY, 4: SAD, 5: SURPRISE, 6: NEUTRAL}   # FER2013 and ExpW
AFFECTNET_TO_CANON = {0: NEUTRAL, 1: HAPPY, 2: SAD, 3: SURPRISE, 4: FEAR, 5: DISGUST, 6: ANGER}


def shade(label: int) -> int:
    """The grey value every replica image of canonical class ``label`` is filled with."""
    return 30 + 30 * label


@dataclass
class Truth:
    """What a reader should report for a replica.

    ``faces``: source key (file name, ``row <i>``, ``<file>#face<k>`` ...) -> canonical label, per split in
    ``splits``; ``dropped``: source fragment -> phrase of the drop reason; ``landmarks``: key -> [5, 2] points.
    """

    root: Path
    faces: dict[str, int] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    boxes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)

    def of(self, split: str) -> dict[str, int]:
        return {k: v for k, v in self.faces.items() if split == "all" or self.splits[k] == split}


def write_image(path: Path, value: int, size: tuple[int, int] = (40, 32), fmt: str | None = None,
                grey: bool = False) -> None:
    """A flat image of one grey value (w x h), colour unless ``grey``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = np.full((h, w) if grey else (h, w, 3), value, np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut an image file short (a download that stopped half-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])


# -- RAF-DB ------------------------------------------------------------------------------------------------------
def make_rafdb(root: Path, misspelled: bool = True) -> Truth:
    """``basic/`` with EmoLabel, Image/original, Image/aligned, Annotation/manual and boundingbox.

    Two train and one test image per class; ``train_00005`` has no manual landmarks (falls back to its box);
    bad inputs: a label 9, a malformed line, an image listed but missing.
    """
    basic = root / "basic"
    truth = Truth(basic)
    lines = []
    k_train = k_test = 0
    for raf in range(1, 8):
        for split in ("train", "train", "test"):
            if split == "train":
                k_train += 1
                name = f"train_{k_train:05d}.jpg"
            else:
                k_test += 1
                name = f"test_{k_test:04d}.jpg"
            canon = RAF_TO_CANON[raf]
            lines.append(f"{name} {raf}")
            stem = name[:-4]
            write_image(basic / "Image" / "original" / name, shade(canon), size=(64, 48))
            write_image(basic / "Image" / "aligned" / f"{stem}_aligned.jpg", shade(canon), size=(100, 100))
            pts = np.array([[20, 18], [44, 18], [32, 27], [23, 36], [41, 36]], np.float32) + raf
            if name != "train_00005.jpg":
                rows = [f"{x:.2f}\t{y:.2f}" for x, y in pts] + ["1", "2", "2"]   # tab-separated, as in the release
                (basic / "Annotation" / "manual").mkdir(parents=True, exist_ok=True)
                (basic / "Annotation" / "manual" / f"{stem}_manu_attri.txt").write_text("\n".join(rows) + "\n")
                truth.landmarks[name] = pts
            (basic / "Annotation" / "boundingbox").mkdir(parents=True, exist_ok=True)
            (basic / "Annotation" / "boundingbox" / f"{stem}.txt").write_text("8.0 4.0 56.0 46.0\n")
            truth.boxes[name] = (8.0, 4.0, 56.0, 46.0)
            truth.faces[name] = canon
            truth.splits[name] = split
    lines += ["train_00099.jpg 9", "this line is broken", "test_0098.jpg 3"]
    truth.dropped.update({"line 22": "not one of RAF-DB's 1..7", "line 23": "malformed line",
                          "test_0098.jpg": "missing"})
    label_file = "list_patition_label.txt" if misspelled else "list_partition_label.txt"
    (basic / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (basic / "EmoLabel" / label_file).write_text("\n".join(lines) + "\n")
    return truth


# -- FER2013 -----------------------------------------------------------------------------------------------------
FER_USAGE = ("Training", "PublicTest", "PrivateTest")
FER_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


def _fer_rows(per_class: int = 2) -> list[tuple[int, str, np.ndarray]]:
    """(Kaggle emotion, Usage, 48x48 pixels) rows: per class, ``per_class`` Training + one of each test usage."""
    rows = []
    for emotion in range(7):
        usages = ["Training"] * per_class + ["PublicTest", "PrivateTest"]
        for j, usage in enumerate(usages):
            px = np.full((48, 48), shade(KAGGLE_TO_CANON[emotion]), np.uint8)
            px[0, 0] = j  # rows differ
            rows.append((emotion, usage, px))
    return rows


def _pixels_text(px: np.ndarray) -> str:
    return " ".join(str(int(v)) for v in px.ravel())


def make_fer2013(root: Path, variant: str = "fer2013", broken: bool = True) -> Truth:
    """One of the three FER2013 distributions under ``root``.

    ``variant``: ``"fer2013"`` (fer2013.csv: emotion,pixels,Usage), ``"icml"`` (icml_face_data.csv: emotion,
    Usage, pixels with leading spaces in the names), ``"kaggle"`` (train.csv: emotion,pixels; test.csv: pixels).
    With ``broken``, one Training row has a pixel string 3 values short and one has a label 7.
    """
    root.mkdir(parents=True, exist_ok=True)
    rows = _fer_rows()
    truth = Truth(root)
    if variant == "kaggle":
        train = [(e, u, px) for e, u, px in rows if u == "Training"]
        test = [(e, u, px) for e, u, px in rows if u != "Training"]
        with open(root / "train.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["emotion", "pixels"])
            for i, (e, _, px) in enumerate(train):
                w.writerow([e, _pixels_text(px)])
                truth.faces[f"train.csv:row {i}"] = KAGGLE_TO_CANON[e]
                truth.splits[f"train.csv:row {i}"] = "train"
            if broken:
                w.writerow([3, _pixels_text(px)[:-6]])
                truth.dropped[f"train.csv:row {len(train)}"] = "broken pixel row"
        with open(root / "test.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["pixels"])
            for _, _, px in test:
                w.writerow([_pixels_text(px)])
        return truth
    name = {"fer2013": "fer2013.csv", "icml": "icml_face_data.csv"}[variant]
    header = ["emotion", "pixels", "Usage"] if variant == "fer2013" else ["emotion", " Usage", " pixels"]
    with open(root / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        i = 0
        for e, u, px in rows:
            w.writerow([e, _pixels_text(px), u] if variant == "fer2013" else [e, u, _pixels_text(px)])
            truth.faces[f"{name}:row {i}"] = KAGGLE_TO_CANON[e]
            truth.splits[f"{name}:row {i}"] = FER_SPLIT[u]
            i += 1
        if broken:
            bad_px = _pixels_text(rows[0][2])
            bad = [[3, bad_px[:-6], "Training"], [7, bad_px, "Training"]]
            for e, p, u in bad:
                w.writerow([e, p, u] if variant == "fer2013" else [e, u, p])
            truth.dropped[f"{name}:row {i}"] = "broken pixel row"
            truth.dropped[f"{name}:row {i + 1}"] = "outside the FER2013 ids"
    return truth


# -- FERPlus -----------------------------------------------------------------------------------------------------
VOTE_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown",
                "NF"]

#: (votes, expected canonical label or the phrase of the drop reason); the majority rule worked out by hand.
FERPLUS_CASES: list[tuple[list[int], int | str]] = [
    ([4, 0, 0, 1, 3, 2, 0, 0, 0, 0], "unknown"),          # 4 of 9 after zeroing the single vote: no majority
    ([9, 0, 0, 1, 0, 0, 0, 0, 0, 0], NEUTRAL),
    ([0, 10, 0, 0, 0, 0, 0, 0, 0, 0], HAPPY),
    ([1, 0, 8, 0, 0, 0, 0, 0, 1, 0], SURPRISE),
    ([2, 0, 0, 8, 0, 0, 0, 0, 0, 0], SAD),
    ([0, 0, 0, 0, 7, 3, 0, 0, 0, 0], ANGER),
    ([0, 0, 0, 0, 2, 6, 0, 0, 2, 0], DISGUST),
    ([0, 0, 3, 0, 0, 0, 6, 0, 1, 0], FEAR),                # the single unknown vote is removed: 6 of 9
    ([2, 0, 0, 0, 0, 0, 0, 7, 1, 0], "contempt"),
    ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], "unknown"),           # a tie never exceeds half
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 10], "not a face"),
    ([4, 1, 1, 1, 1, 1, 1, 0, 0, 0], NEUTRAL),             # five single votes removed: 4 of 4
]


def make_ferplus(root: Path, layout: str = "votes", pixels: str = "fer2013") -> Truth:
    """FERPlus: ``layout="votes"`` writes fer2013new.csv next to a FER2013 CSV (``pixels`` variant:
    ``"fer2013"`` or ``"icml"``); ``layout="folders"`` writes FER2013Train/Valid/Test with PNGs and label.csv.

    Every vote case of :data:`FERPLUS_CASES` appears in each usage; plus one row with an empty image name per usage
    (the FERPlus quirk), whose FER2013 pixels are all zero.
    """
    root.mkdir(parents=True, exist_ok=True)
    truth = Truth(root)
    rows = []   # (usage, name, votes, canonical or reason)
    idx = 0
    for usage in FER_USAGE:
        for votes, want in FERPLUS_CASES:
            rows.append((usage, f"fer{idx:07d}.png", votes, want))
            idx += 1
        rows.append((usage, "", [0] * 9 + [10], "empty image name"))
        idx += 1

    def expect(key: str, usage: str, want: int | str) -> None:   # a face with its label and split, or a drop
        if isinstance(want, int):
            truth.faces[key] = want
            truth.splits[key] = FER_SPLIT[usage]
        else:
            truth.dropped[key] = want

    if layout == "votes":
        new = root / "fer2013new.csv"
        with open(new, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["Usage", "Image name", *VOTE_COLUMNS])
            for usage, name, votes, _ in rows:
                w.writerow([usage, name, *votes])
        pix_name = "fer2013.csv" if pixels == "fer2013" else "icml_face_data.csv"
        with open(root / pix_name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["emotion", "pixels", "Usage"] if pixels == "fer2013" else ["emotion", " Usage", " pixels"])
            for i, (usage, name, votes, want) in enumerate(rows):
                px = np.full((48, 48), shade(want) if isinstance(want, int) else 0, np.uint8)
                text = _pixels_text(px)
                w.writerow([0, text, usage] if pixels == "fer2013" else [0, usage, text])
                expect(f"fer2013new.csv:row {i}", usage, want)
        return truth
    folders = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
    by_folder: dict[str, list[str]] = {}
    for usage, name, votes, want in rows:
        if not name:
            continue   # generate_training_data.py writes no image for empty names
        folder = root / folders[usage]
        write_image(folder / name, shade(want) if isinstance(want, int) else 0, size=(48, 48), fmt="PNG", grey=True)
        by_folder.setdefault(folder.name, []).append(
            f'{name},"(0, 0, 48, 48)",' + ",".join(str(v) for v in votes))
        expect(f"{folders[usage]}/{name}", usage, want)
    for folder, lines in by_folder.items():
        (root / folder / "label.csv").write_text("\n".join(lines) + "\n")
    return truth


# -- AffectNet ---------------------------------------------------------------------------------------------------
def landmarks68(offset: float = 0.0) -> np.ndarray:
    """A plausible 68-point iBUG layout on a 64x64 face (only the eyes, nose tip and mouth corners matter)."""
    pts = np.zeros((68, 2), np.float32)
    pts[:17] = np.stack([np.linspace(8, 56, 17), 30 + 20 * np.sin(np.linspace(0, np.pi, 17))], 1)
    pts[17:27] = np.stack([np.linspace(14, 50, 10), np.full(10, 16.0)], 1)
    pts[27:31] = np.stack([np.full(4, 32.0), np.linspace(22, 34, 4)], 1)        # nose bridge; 30 = tip (32, 34)
    pts[31:36] = np.stack([np.linspace(28, 36, 5), np.full(5, 37.0)], 1)
    ring = np.array([[-4, 0], [-2, -2], [2, -2], [4, 0], [2, 2], [-2, 2]], np.float32)
    pts[36:42] = ring + (20, 24)                                                 # image-left eye, centre (20, 24)
    pts[42:48] = ring + (44, 24)                                                 # image-right eye, centre (44, 24)
    pts[48:68] = np.stack([np.linspace(22, 42, 20), np.full(20, 46.0)], 1)
    pts[48] = (22, 46)
    pts[54] = (42, 46)
    return pts + offset


#: The five points :func:`landmarks68` reduces to (eye centres, nose tip 30, mouth corners 48 and 54).
FIVE_OF_68 = np.array([[20, 24], [44, 24], [32, 34], [22, 46], [42, 46]], np.float32)


def make_affectnet(root: Path) -> Truth:
    """training.csv / validation.csv with all 11 expression ids, plus a missing image and a bad landmark field."""
    root.mkdir(parents=True, exist_ok=True)
    truth = Truth(root)
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
              "expression", "valence", "arousal"]
    reasons = {7: "contempt", 8: "none", 9: "uncertain", 10: "no face"}
    for table, split in (("training.csv", "train"), ("validation.csv", "test")):
        with open(root / table, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            line = 1
            for expr in range(11):
                for k in range(2 if split == "train" else 1):
                    rel = f"{100 + expr}/{split}_{expr}_{k}.jpg"
                    canon = AFFECTNET_TO_CANON.get(expr)
                    write_image(root / "Manually_Annotated_Images" / rel, shade(canon) if canon is not None else 0,
                                size=(64, 64))
                    lm = ";".join(f"{v:.2f}" for v in landmarks68(k).ravel())
                    w.writerow([rel, 4, 6, 52, 54, lm, expr, 0.25, -0.5])
                    line += 1
                    key = f"{100 + expr}/{split}_{expr}_{k}.jpg"
                    if canon is None:
                        truth.dropped[f"{table}:line {line}"] = reasons[expr]
                    else:
                        truth.faces[key] = canon
                        truth.splits[key] = split
                        truth.landmarks[key] = FIVE_OF_68 + k
                        truth.boxes[key] = (4.0, 6.0, 56.0, 60.0)
            # a row whose image was never extracted, and one with a truncated landmark field (kept, no points)
            w.writerow(["999/missing.jpg", 0, 0, 10, 10, "1;2;3", 1, 0, 0])
            truth.dropped["missing.jpg"] = "missing"
            rel = f"200/{split}_short_landmarks.jpg"
            write_image(root / "Manually_Annotated_Images" / rel, shade(HAPPY), size=(64, 64))
            w.writerow([rel, 4, 6, 52, 54, "1;2;3", 1, 0.5, 0.1])
            truth.faces[rel] = HAPPY
            truth.splits[rel] = split
            truth.boxes[rel] = (4.0, 6.0, 56.0, 60.0)
    return truth


# -- ExpW --------------------------------------------------------------------------------------------------------
def make_expw(root: Path, images: int = 30) -> Truth:
    """label/label.lst with one to two faces per scene image (boxes in top, left, right, bottom order)."""
    truth = Truth(root)
    lines = []
    for i in range(images):
        name = f"scene_{i:03d}.jpg"
        emotions = [i % 7] + ([(i + 3) % 7] if i % 3 == 0 else [])
        img = np.zeros((80, 120, 3), np.uint8)
        for face_id, e in enumerate(emotions):
            top, left = 6 + 30 * face_id, 14 + 50 * face_id   # top != left: a swapped order shows
            right, bottom = left + 40, top + 30
            img[top:bottom, left:right] = shade(KAGGLE_TO_CANON[e])
            lines.append(f"{name} {face_id} {top} {left} {right} {bottom} {90.5 - i} {e}")
            key = f"{name}#face{face_id}"
            truth.faces[key] = KAGGLE_TO_CANON[e]
            truth.boxes[key] = (float(left), float(top), float(right), float(bottom))
        (root / "image" / "origin").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "image" / "origin" / name)
    lines += ["scene_000.jpg 5 20 20 10 40 80.0 3",       # right < left
              "scene_001.jpg 6 1 2 3",                    # too few fields
              "scene_404.jpg 0 1 1 20 20 99.0 2"]         # image missing
    n0 = images + images // 3 + (1 if images % 3 else 0)
    truth.dropped.update({f"line {n0 + 1}": "empty or negative box", f"line {n0 + 2}": "fields, expected 8",
                          "scene_404.jpg": "missing"})
    (root / "label").mkdir(parents=True, exist_ok=True)
    (root / "label" / "label.lst").write_text("\n".join(lines) + "\n")
    return truth


# -- ImageFolder -------------------------------------------------------------------------------------------------
FOLDER_NAMES = {"angry": ANGER, "disgust": DISGUST, "fear": FEAR, "happy": HAPPY, "neutral": NEUTRAL, "sad": SAD,
                "surprise": SURPRISE}


def make_imagefolder(root: Path, splits: tuple[str, ...] = ("train", "valid", "test"), per_class: int = 2,
                     extra_folder: str | None = None) -> Truth:
    """MMA-style ``<split>/<lower-case class>/<image>`` (or flat ``<class>/<image>`` when ``splits`` is empty),
    plus a ``contempt`` folder, a stray text file, an empty ``fear`` folder in the last split and, when
    ``extra_folder`` is given, a folder of that name that maps to no expression."""
    truth = Truth(root)
    split_name = {"train": "train", "valid": "val", "val": "val", "test": "test"}
    for s in splits or ("",):
        base = root / s if s else root
        for cls, canon in FOLDER_NAMES.items():
            n = 0 if (s == (splits[-1] if splits else "") and cls == "fear") else per_class
            (base / cls).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                rel = f"{s + '/' if s else ''}{cls}/{cls}_{k}.png"
                write_image(root / rel, shade(canon), size=(36, 36), fmt="PNG")
                truth.faces[rel] = canon
                truth.splits[rel] = split_name[s] if s else "all"
        write_image(base / "contempt" / "c0.png", 5, size=(36, 36), fmt="PNG")
        truth.dropped[f"{s + '/' if s else ''}contempt/c0.png"] = "contempt"
        (base / "happy" / "notes.txt").write_text("not an image")
        truth.dropped[f"{s + '/' if s else ''}happy/notes.txt"] = "not an image"
        if extra_folder:
            write_image(base / extra_folder / "x.png", 5, size=(36, 36), fmt="PNG")
    return truth
