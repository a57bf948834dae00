"""Prepare/cache of real datasets, the dataset factories, and ``fer-lab data check|prepare``, on format replicas."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "readers"))
from replicas import FEAR, make_fer2013, make_ferplus, make_imagefolder, make_rafdb, shade, \
    truncate  # noqa: E402

from fer_lab.cli import main  # noqa: E402
from fer_lab.data import prepare as prep  # noqa: E402
from fer_lab.data.align import FaceAligner, reference_landmarks  # noqa: E402
from fer_lab.data.readers import ReaderError  # noqa: E402
from fer_lab.data.spec import DATASETS, SpecError, load_dataset  # noqa: E402
from fer_lab.data.store import FaceArrays  # noqa: E402


class CountingAligner:
    """A real :class:`FaceAligner` (no detector) that counts faces, can stop after ``fail_after`` faces (a killed
    run) and reports "no face" for images of one grey value (what a detector does on a face it misses)."""

    def __init__(self, size, fail_after=None, no_face_value=None):
        self.inner = FaceAligner(size=size, detector=None)
        self.calls = 0
        self.fail_after = fail_after
        self.no_face_value = no_face_value

    def align_batch(self, images, landmarks=None, boxes=None, mode="auto"):
        out = []
        for img, lm, box in zip(images, landmarks, boxes):
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise KeyboardInterrupt("killed")
            self.calls += 1
            if self.no_face_value is not None and int(img[img.shape[0] // 2, img.shape[1] // 2, 0]) == \
                    self.no_face_value:
                out.append(None)
                continue
            out.append(self.inner.align(img, lm, box, mode="whole" if mode == "mtcnn" else mode))
        return out


@pytest.fixture(scope="module")
def fer_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fer2013")
    return root, make_fer2013(root)


@pytest.fixture(scope="module")
def raf(tmp_path_factory):
    return make_rafdb(tmp_path_factory.mktemp("raf"))


def test_prepare_whole_keeps_labels_with_their_pixels(fer_root, tmp_path):
    root, truth = fer_root
    m = prep.scan_spec(f"fer2013:{root}?split=train")
    res = prep.prepare(m, tmp_path / "store", size=32, progress=False)
    a = res.arrays
    assert not res.cached and len(a) == len(truth.of("train")) and a.image_size == (32, 32)
    assert a.meta["align"] == "whole" and a.meta["methods"] == {"whole": len(a)}
    assert [s.split(":")[-1] for s in a.meta["sources"]] == [k.split(":")[-1] for k in truth.of("train")]
    assert list(a.labels) == list(truth.of("train").values())
    for img, label in zip(a.images, a.labels):
        assert abs(int(img[16, 16, 0]) - shade(int(label))) <= 1
    np.testing.assert_allclose(a.landmarks, np.broadcast_to(reference_landmarks(32), a.landmarks.shape), atol=1e-5)
    assert a.meta["drop_counts"] and any("broken pixel row" in d["reason"] for d in a.meta["dropped"])
    assert (tmp_path / "store" / "no_face.txt").read_text() == ""
    assert not (tmp_path / "store.partial").exists()
    again = prep.prepare(m, tmp_path / "store", size=32, progress=False)
    assert again.cached and np.array_equal(again.arrays.images, a.images)


def test_prepare_landmarks_fall_back_per_face_and_list_unreadable(tmp_path):
    t = make_rafdb(tmp_path / "raf")
    truncate(t.root / "Image" / "original" / "train_00003.jpg", 0.3)
    m = prep.scan_spec(f"rafdb:{t.root}?split=train")
    a = prep.prepare(m, tmp_path / "store", size=64, progress=False).arrays
    # 14 train faces: one unreadable; train_00005 has no manual points, so its box is used
    assert len(a) == 13 and a.meta["methods"] == {"landmarks": 12, "bbox": 1}
    assert len(a.meta["unreadable"]) == 1 and "train_00003.jpg: not a readable image" in a.meta["unreadable"][0]
    assert "train_00003.jpg" in (tmp_path / "store" / "unreadable.txt").read_text()
    ref = reference_landmarks(64)
    for img, lm, label, src in zip(a.images, a.landmarks, a.labels, a.meta["sources"]):
        assert abs(int(img[32, 32, 0]) - shade(int(label))) <= 3, src   # the face travelled with its label
        assert np.abs(lm - ref).max() < 6, src                           # given points land near the template
    assert a.meta["subjects"] == [] and (a.subject == -1).all() and np.isnan(a.pose).all()


def test_unusable_geometry_is_listed_not_a_crash(tmp_path):
    t = make_rafdb(tmp_path / "raf")
    (t.root / "Annotation" / "manual" / "train_00002_manu_attri.txt").write_text("10\t10\n" * 5 + "1\n2\n2\n")
    m = prep.scan_spec(f"rafdb:{t.root}?split=train")
    a = prep.prepare(m, tmp_path / "store", size=32, progress=False).arrays
    assert len(a) == len(t.of("train")) - 1
    assert "train_00002.jpg: cannot align (landmarks)" in a.meta["unreadable"][0]
    assert "coincide" in (tmp_path / "store" / "unreadable.txt").read_text()
    assert not any(src.endswith("train_00002.jpg") for src in a.meta["sources"])


def test_no_face_is_listed_not_silently_dropped(tmp_path):
    t = make_imagefolder(tmp_path / "mine", splits=("train", "test"))
    m = prep.scan_spec(f"imagefolder:{t.root}?split=train")
    assert m.align == "mtcnn"
    al = CountingAligner(32, no_face_value=shade(FEAR))
    a = prep.prepare(m, tmp_path / "store", size=32, aligner=al, progress=False).arrays
    fear = [k for k, v in t.of("train").items() if v == FEAR]
    assert len(a) == len(t.of("train")) - len(fear) and FEAR not in set(a.labels.tolist())
    listed = (tmp_path / "store" / "no_face.txt").read_text().splitlines()
    assert len(listed) == len(fear) == len(a.meta["no_face"])
    assert all("no face found (mtcnn)" in line for line in listed)


def test_prepare_resumes_after_a_kill(fer_root, tmp_path):
    root, _ = fer_root
    m = prep.scan_spec(f"fer2013:{root}?split=all")
    full = prep.prepare(m, tmp_path / "ref", size=24, chunk_size=4, aligner=CountingAligner(24), progress=False)
    killed = CountingAligner(24, fail_after=10)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(m, tmp_path / "run", size=24, chunk_size=4, aligner=killed, progress=False)
    assert not (tmp_path / "run").exists()
    assert len(list((tmp_path / "run.partial").glob("chunk_*.npz"))) == 2      # 8 faces in two finished chunks
    resumed = CountingAligner(24)
    res = prep.prepare(m, tmp_path / "run", size=24, chunk_size=4, aligner=resumed, progress=False)
    assert resumed.calls == len(m) - 8
    for key in ("images", "labels", "landmarks", "subject"):
        assert np.array_equal(getattr(res.arrays, key), getattr(full.arrays, key))
    assert res.arrays.meta["sources"] == full.arrays.meta["sources"]
    assert res.arrays.meta["splits"] == [r.split for r in m.records]


def test_partial_work_from_other_settings_is_discarded(fer_root, tmp_path):
    root, _ = fer_root
    m = prep.scan_spec(f"fer2013:{root}?split=val")
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(m, tmp_path / "s", size=24, chunk_size=2, aligner=CountingAligner(24, fail_after=4),
                     progress=False)
    al = CountingAligner(32)
    a = prep.prepare(m, tmp_path / "s", size=32, chunk_size=2, aligner=al, progress=False).arrays
    assert al.calls == len(m) and a.image_size == (32, 32)


def test_factories_cache_and_trainer_defaults(fer_root, monkeypatch):
    root, truth = fer_root
    load_dataset("synth:lab?n=8&size=16")           # makes sure the built-ins are registered
    assert {"rafdb", "fer2013", "ferplus", "affectnet", "expw", "imagefolder"} <= set(DATASETS.names())
    a = load_dataset(f"fer2013:{root}", split="test", defaults={"n": 3, "size": 32, "seed": 0})
    assert len(a) == len(truth.of("test")) and a.image_size == (32, 32)            # n does not subsample
    assert a.meta["spec"].startswith("fer2013:") and "split=test" in a.meta["spec"]
    folder = prep.cache_dir(f"fer2013:{root}?split=test", 32, "auto")
    assert folder.is_dir() and folder.parent.name == "fer2013"
    c = load_dataset(f"fer2013:{root}?split=test&size=32&cache=false")   # prepared in a temporary folder
    assert not isinstance(c.images, np.memmap) and np.array_equal(c.images, np.asarray(a.images))

    def no_scan(*args, **kwargs):
        raise AssertionError("a cached split must load without rescanning")

    monkeypatch.setattr(prep, "scan_spec", no_scan)
    b = load_dataset(f"fer2013:{root}?split=test&size=32")
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))


def test_spec_errors_name_the_problem(fer_root, tmp_path):
    root, _ = fer_root
    with pytest.raises(SpecError, match=r"unknown parameter\(s\) bogus; fer2013 accepts split, size, align"):
        load_dataset(f"fer2013:{root}?bogus=1")
    with pytest.raises(SpecError, match="align 'sideways' is not one of"):
        load_dataset(f"fer2013:{root}?align=sideways")
    with pytest.raises(ReaderError, match="dataset root not found"):
        load_dataset(f"rafdb:{tmp_path}/nowhere?split=train")
    with pytest.raises(ReaderError, match="no FER2013 CSV found"):
        load_dataset(f"fer2013:{tmp_path}?split=train")
    empty = make_imagefolder(tmp_path / "e", splits=("train",), per_class=0).root
    with pytest.raises(ReaderError, match="has no faces to prepare"):
        load_dataset(f"imagefolder:{empty}?split=train&size=16")


# -- the command line ------------------------------------------------------------------------------------------
def test_cli_check_reports_counts_drops_and_unreadable_images(tmp_path, capsys):
    t = make_rafdb(tmp_path / "raf")
    assert main(["data", "check", f"rafdb:{t.root}?split=test", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "rafdb [test]" in out and "7 faces" in out and "happiness  1" in out
    assert "decoded 7 of 7 images; 0 unreadable" in out and "image listed in list_patition_label.txt is missing" in out
    truncate(t.root / "Image" / "original" / "test_0002.jpg", 0.4)
    (t.root / "Image" / "original" / "test_0005.jpg").write_bytes(b"not a jpeg")
    assert main(["data", "check", f"rafdb:{t.root}?split=test", "--no-progress", "--verbose"]) == 1
    out = capsys.readouterr().out
    assert "2 unreadable" in out and "test_0002.jpg: not a readable image" in out and "test_0005.jpg" in out
    assert "dropped " in out and "test_0098.jpg" in out
    assert main(["data", "check", f"rafdb:{t.root}?split=test", "--quick"]) == 0


def test_cli_broken_layout_exits_2_with_one_line(tmp_path, capsys):
    assert main(["data", "check", f"rafdb:{tmp_path}?split=train"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fer-lab: error: ") and "EmoLabel" in err and "\n" not in err
    assert main(["data", "prepare", f"ferplus:{tmp_path}", "--out", str(tmp_path / "x")]) == 2
    assert "not a FERPlus layout" in capsys.readouterr().err


def test_cli_prepare_writes_a_loadable_store(tmp_path, capsys):
    t = make_ferplus(tmp_path / "ferplus")
    out = tmp_path / "store"
    args = ["data", "prepare", f"ferplus:{t.root}?split=train", "--out", str(out), "--size", "32", "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "prepared in" in text and "8 faces 32x32" in text and "whole 8" in text
    a = FaceArrays.load(out)
    assert sorted(a.labels.tolist()) == sorted(t.of("train").values())
    assert main(args) == 0 and "already prepared" in capsys.readouterr().out
    assert main(args + ["--force"]) == 0 and "prepared in" in capsys.readouterr().out
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    assert main(args[:3] + ["--out", str(tmp_path / "junk"), "--no-progress"]) == 2
    assert "junk: exists and is not a fer-lab store" in capsys.readouterr().err
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine"


def test_cli_prepare_defaults_to_the_cache_and_lists_datasets(fer_root, capsys):
    root, _ = fer_root
    assert main(["data", "prepare", f"fer2013:{root}?split=val", "--size", "16", "--no-progress"]) == 0
    assert str(prep.cache_dir(f"fer2013:{root}?split=val", 16, "auto")) in capsys.readouterr().out
    p = subprocess.run([sys.executable, "-m", "fer_lab", "datasets"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "fer2013" in p.stdout and "rafdb" in p.stdout


@pytest.mark.slow
def test_trainer_runs_on_prepared_real_formats(tmp_path, fer_root):
    root, _ = fer_root
    t = make_ferplus(tmp_path / "ferplus")
    p = subprocess.run([sys.executable, "-m", "fer_lab", "train", "--method", "dann", "--source", f"fer2013:{root}",
                        "--target", f"ferplus:{t.root}", "--steps", "2", "--batch-size", "4", "--image-size", "32",
                        "--out-dir", str(tmp_path / "run"), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| dann" in p.stdout and (tmp_path / "run" / "results.json").exists()


def test_detection_end_to_end_on_a_real_photograph(tmp_path):
    """imagefolder -> MTCNN -> store: the astronaut's face is found and aligned, a blank image is listed."""
    pytest.importorskip("facenet_pytorch")
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    (tmp_path / "photos" / "happy").mkdir(parents=True)
    Image.fromarray(data.astronaut()).save(tmp_path / "photos" / "happy" / "astronaut.jpg", quality=95)
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(tmp_path / "photos" / "happy" / "wall.png")
    a = load_dataset(f"imagefolder:{tmp_path / 'photos'}?split=all&size=112")
    assert len(a) == 1 and a.labels.tolist() == [3] and a.meta["methods"] == {"mtcnn": 1}
    assert np.abs(a.landmarks[0] - reference_landmarks(112)).max() < 8
    assert len(a.meta["no_face"]) == 1 and "wall.png: no face found (mtcnn)" in a.meta["no_face"][0]
