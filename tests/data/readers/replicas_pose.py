"""Small replicas of the multi-pose FER datasets (Multi-PIE, BU-3DFE) in their distribution layouts, for the
reader tests.

Each ``make_*`` writes tiny images in the layout users have on disk and returns the truth the reader must find:
every face it should list with its label in :data:`fer_lab.labels.EXPRESSIONS` order, its subject and yaw, and
what it should drop. The truth is written down here from the datasets' documentation (datasets.md section 11),
not computed with the readers' code. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SURPRISE, FEAR, DISGUST, HAPPY, SAD, ANGER, NEUTRAL = range(7)


@dataclass
class Truth:
    """``faces``: path relative to ``root`` -> label; ``subjects`` / ``yaw``: the same keys -> subject id / yaw
    (None when the dataset gives none); ``dropped``: path fragment -> phrase of the drop reason; ``ignored``:
    files the reader must neither list nor drop."""

    root: Path
    faces: dict[str, int] = field(default_factory=dict)
    subjects: dict[str, str] = field(default_factory=dict)
    yaw: dict[str, float | None] = field(default_factory=dict)
    extra: dict[str, dict] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


def write_image(path: Path, seed: int, size: tuple[int, int] = (8, 6), fmt: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(path, format=fmt)
    return path


# ------------------------------------------------------------------------------------------------------ Multi-PIE
#: (session, recording) -> label, or None for squint / scream (no place in the 7 classes); from the database's
#: recording table (bob.db.multipie, FFWM).
MULTIPIE_EXPRESSIONS = {
    (1, "01"): NEUTRAL, (1, "02"): HAPPY,
    (2, "01"): NEUTRAL, (2, "02"): SURPRISE, (2, "03"): None,
    (3, "01"): NEUTRAL, (3, "02"): HAPPY, (3, "03"): DISGUST,
    (4, "01"): NEUTRAL, (4, "02"): NEUTRAL, (4, "03"): None,
}
#: the cameras written (name -> yaw; 08_1 sits above the subject and has none)
MULTIPIE_CAMERAS = {"05_1": 0.0, "14_0": -15.0, "19_0": 45.0, "24_0": 90.0, "08_1": None}
#: subject -> sessions attended (not everyone came to every session)
MULTIPIE_PEOPLE = {"001": (1, 2, 3, 4), "013": (1, 2, 3), "250": (1, 3, 4)}
MULTIPIE_SHOTS = ("00", "07")


def make_multipie(root: Path, quirks: bool = True) -> Truth:
    """``Multi-Pie/data/session<SS>/multiview/<subject>/<recording>/<camera>/<file>.png`` for three people, five
    cameras, shots 00 and 07. ``faces`` holds every well-formed image of a kept expression (tests filter by
    camera and shot); squint / scream images are in ``dropped``. ``quirks``: a file whose name says another
    session, a misnamed file, a macOS ``._`` file, a recording missing from the table, a ``highres`` tree."""
    data = root / "Multi-Pie" / "data"
    t = Truth(data)
    k = 0
    for who, sessions in MULTIPIE_PEOPLE.items():
        for ses in sessions:
            for (s, rec), label in MULTIPIE_EXPRESSIONS.items():
                if s != ses:
                    continue
                for cam, yaw in MULTIPIE_CAMERAS.items():
                    for shot in MULTIPIE_SHOTS:
                        k += 1
                        rel = f"session{ses:02d}/multiview/{who}/{rec}/{cam}/{who}_{ses:02d}_{rec}_{cam.replace('_', '')}_{shot}.png"
                        write_image(data / rel, k)
                        if label is None:
                            t.dropped[rel] = "no place in the 7 classes"
                        else:
                            t.faces[rel] = label
                            t.subjects[rel] = who
                            t.yaw[rel] = yaw
                            t.extra[rel] = {"session": ses, "recording": int(rec), "camera": cam, "shot": int(shot)}
    if quirks:
        write_image(data / "session02/multiview/001/01/05_1/001_01_01_051_07.png", 900)
        t.dropped["session02/multiview/001/01/05_1/001_01_01_051_07.png"] = "does not match its folders"
        write_image(data / "session01/multiview/001/01/05_1/001_01_01_051_07 (copy).png", 901)
        t.dropped["001_01_01_051_07 (copy).png"] = "name does not follow"
        (data / "session01/multiview/001/01/05_1/._001_01_01_051_07.png").write_bytes(b"\0\5\26\7")
        t.dropped["._001_01_01_051_07.png"] = "hidden"
        write_image(data / "session01/multiview/013/04/05_1/013_01_04_051_07.png", 902)
        t.dropped["013_01_04_051_07.png"] = "not in the expression table"
        write_image(data / "session01/highres/001/001_01_01_051_07.png", 903)
        t.ignored.append("session01/highres/001/001_01_01_051_07.png")
    return t


# -------------------------------------------------------------------------------------------------------- BU-3DFE
BU3DFE_CODES = {"AN": ANGER, "DI": DISGUST, "FE": FEAR, "HA": HAPPY, "SA": SAD, "SU": SURPRISE}
BU3DFE_PEOPLE = {"F0001": "WH", "F0002": "AE", "M0001": "BL", "M0002": "LA"}
BU3DFE_YAWS = ("-30", "+0", "45")


def make_bu3dfe(root: Path, quirks: bool = True, renders: bool = True) -> Truth:
    """``BU-3DFE/<subject>/<subject>_<expr><level><race>_F2D.bmp`` (25 per person: NE00 and six expressions at
    levels 01-04) with the ``_F3D.wrl``, ``_F3D.bnd`` and ``_RAW.wrl`` files beside them. ``faces`` keys are the
    texture files; ``extra["renders"]`` maps fer-lab's rendered-view files (``..._yaw-30.png``, three views of
    the level-04 faces and of neutral) to ``(label, yaw)``. ``quirks``: a misnamed texture, a texture in another
    person's folder, a neutral face with level 01, a macOS ``._`` file, a readme."""
    base = root / "BU-3DFE"
    t = Truth(base)
    t.extra["renders"] = {}
    k = 0
    for who, race in BU3DFE_PEOPLE.items():
        stems = [(f"{who}_NE00{race}", NEUTRAL, 0)]
        stems += [(f"{who}_{code}{level:02d}{race}", label, level) for code, label in BU3DFE_CODES.items()
                  for level in range(1, 5)]
        for stem, label, level in stems:
            k += 1
            rel = f"{who}/{stem}_F2D.bmp"
            write_image(base / rel, k, fmt="BMP")
            t.faces[rel] = label
            t.subjects[rel] = who
            t.extra[rel] = {"intensity": level, "race": race}
            for kind in ("F3D.wrl", "F3D.bnd", "RAW.wrl"):
                (base / who / f"{stem}_{kind}").write_text("#VRML V2.0 utf8\n" if kind.endswith("wrl") else "1 2 3\n")
                t.ignored.append(f"{who}/{stem}_{kind}")
            if renders and level in (0, 4):
                for yaw in BU3DFE_YAWS:
                    r = f"{who}/{stem}_yaw{yaw}.png"
                    write_image(base / r, 1000 + k, fmt="PNG")
                    t.extra["renders"][r] = (label, float(yaw))
    if quirks:
        write_image(base / "F0001" / "F0001_AN01WH_F2D_old.bmp", 2000, fmt="BMP")
        t.dropped["F0001_AN01WH_F2D_old.bmp"] = "name does not follow"
        write_image(base / "F0002" / "F0001_HA02WH_F2D.bmp", 2001, fmt="BMP")
        t.dropped["F0002/F0001_HA02WH_F2D.bmp"] = "inside folder F0002"
        write_image(base / "M0001" / "M0001_NE01BL_F2D.bmp", 2002, fmt="BMP")
        t.dropped["M0001_NE01BL_F2D.bmp"] = "does not fit expression NE"
        (base / "M0002" / "._M0002_HA01LA_F2D.bmp").write_bytes(b"\0\5\26\7")
        t.dropped["._M0002_HA01LA_F2D.bmp"] = "hidden"
        (base / "README.txt").write_text("BU-3DFE\n")
        t.ignored.append("README.txt")
    return t
