from pathlib import Path

import numpy as np
import pytest
from replicas_lab import ANGER, NEUTRAL, SURPRISE, make_ckplus, truncate

from fer_lab.data.readers import READERS, ReaderError, read_image
from fer_lab.data.readers.ckplus import read_landmarks68, scan


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return make_ckplus(tmp_path_factory.mktemp("ckplus"))


def by_name(manifest):
    return {Path(r.source).name: r for r in manifest.records}


def test_registered():
    assert READERS.get("ckplus") is scan


def test_labels_peak_frames_and_neutral_first_frame(replica):
    m = scan(replica.root, "all", folds=3)
    got = {name: r.label for name, r in by_name(m).items()}
    assert got == replica.faces
    r = by_name(m)
    assert r["S010_001_00000001.png"].extra["role"] == "neutral"
    assert r["S010_001_00000006.png"].extra == {**r["S010_001_00000006.png"].extra, "role": "peak", "frame": 6,
                                                "emotion_id": 7, "sequence": "S010/001"}
    # 7 labelled non-contempt sequences of 4-6 frames give 3 peak + 1 neutral each; S026/001 has 3 frames:
    # 2 peak + 1 neutral
    assert len(m) == 7 * 4 + 3
    assert m.class_counts()["neutral"] == 8
    assert m.class_counts()["surprise"] == 6
    assert m.class_counts()["anger"] == 3


def test_subjects_and_landmarks_reduced_to_five(replica):
    m = scan(replica.root, "all", folds=3)
    for name, r in by_name(m).items():
        assert r.subject == name[:4]
        if name == replica.extra["no_landmarks"]:
            assert r.landmarks is None
            continue
        np.testing.assert_allclose(r.landmarks, replica.landmarks[name], atol=1e-4)
        assert r.extra["landmarks68"].shape == (68, 2)
    assert m.align == "landmarks"  # the frame with a broken landmark file falls back to detection in prepare
    assert scan(replica.root, "all", folds=3, landmarks=False).align == "mtcnn"
    assert any("no usable landmarks" in n and "S011_001_00000005_landmarks.txt" in n for n in m.notes)


def test_drops_are_reported_with_reasons(replica):
    m = scan(replica.root, "all", folds=3)
    for fragment, phrase in replica.dropped.items():
        hits = [d for d in m.dropped if fragment in d.source]
        assert hits, f"nothing dropped for {fragment}"
        assert any(phrase in d.reason for d in hits), (fragment, [d.reason for d in hits])
    contempt = [d for d in m.dropped if "contempt" in d.reason]
    assert len(contempt) == 1 and "S010_004" in contempt[0].source
    assert not any("S010_004" in r.source for r in m.records)
    assert "S005_002" not in " ".join(r.source for r in m.records)


def test_subject_split_is_disjoint_deterministic_and_covers_all(replica):
    parts = {s: scan(replica.root, s, folds=3, val_folds=1) for s in ("train", "val", "test")}
    subjects = {s: {r.subject for r in m.records} for s, m in parts.items()}
    assert all(subjects.values())
    assert not subjects["train"] & subjects["test"] and not subjects["train"] & subjects["val"]
    assert not subjects["val"] & subjects["test"]
    every = scan(replica.root, "all", folds=3, val_folds=1)
    assert sum(len(m) for m in parts.values()) == len(every)
    assert {r.split for r in parts["test"].records} == {"test"}
    again = scan(replica.root, "test", folds=3, val_folds=1)
    assert [r.source for r in again.records] == [r.source for r in parts["test"].records]
    other = [scan(replica.root, "test", folds=3, split_seed=s) for s in range(4)]
    assert len({tuple(sorted({r.subject for r in m.records})) for m in other}) > 1
    # the folds of a 3-fold rotation partition the subjects
    folds = [{r.subject for r in scan(replica.root, "test", folds=3, fold=f).records} for f in range(3)]
    assert set().union(*folds) == subjects["train"] | subjects["val"] | subjects["test"]
    assert sum(len(f) for f in folds) == len(set().union(*folds))


def test_transductive_protocol_gives_every_face_in_every_split(replica):
    tr = scan(replica.root, "train", protocol="transductive")
    te = scan(replica.root, "test", protocol="transductive")
    assert len(tr) == len(te) == len(replica.faces)
    assert {r.split for r in te.records} == {"test"}


def test_options_peak_and_neutral(replica):
    m = scan(replica.root, "all", folds=3, peak=1, neutral=False)
    got = {name: r.label for name, r in by_name(m).items()}
    assert NEUTRAL not in got.values()
    assert got["S010_001_00000006.png"] == SURPRISE and len(got) == 8
    assert got["S011_001_00000005.png"] == ANGER


def test_bad_layouts_raise_naming_the_path(tmp_path, replica):
    with pytest.raises(ReaderError, match=str(tmp_path / "nope")):
        scan(tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReaderError, match="cohn-kanade-images"):
        scan(tmp_path / "empty", "train")
    (tmp_path / "noemo" / "cohn-kanade-images" / "S005" / "001").mkdir(parents=True)
    with pytest.raises(ReaderError, match="emotion label folder"):
        scan(tmp_path / "noemo", "train")
    with pytest.raises(ReaderError, match="split 'dev'"):
        scan(replica.root, "dev")
    with pytest.raises(ReaderError, match="fewer than folds=10"):
        scan(replica.root, "train")  # 6 subjects, default 10 folds
    with pytest.raises(ReaderError, match="split 'val' is empty"):
        scan(replica.root, "val", folds=3)
    with pytest.raises(ReaderError, match="protocol 'loso'"):
        scan(replica.root, "train", protocol="loso")


def test_corrupt_frame_fails_at_decode_naming_the_file(tmp_path):
    t = make_ckplus(tmp_path, quirks=False)
    m = scan(t.root, "all", folds=3)
    assert m.align == "landmarks"
    rec = by_name(m)["S022_001_00000005.png"]
    img = read_image(rec)
    assert img.shape == (18, 24, 3) and img.dtype == np.uint8
    truncate(rec.path)
    with pytest.raises(ReaderError, match="S022_001_00000005.png"):
        read_image(rec)


def test_landmark_file_format(tmp_path):
    p = np.arange(136, dtype=np.float32).reshape(68, 2)
    f = tmp_path / "x_landmarks.txt"
    f.write_text("".join(f"   {x:.7e}   {y:.7e}\n" for x, y in p))
    np.testing.assert_allclose(read_landmarks68(f), p)
    f.write_text("   1.0e+00   2.0e+00\n")
    with pytest.raises(ReaderError, match="x_landmarks.txt: expected 68"):
        read_landmarks68(f)


def test_load_dataset_end_to_end_with_landmark_alignment(tmp_path, monkeypatch):
    from replicas_lab import prepared_labels

    from fer_lab.data.align import reference_landmarks

    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    t = make_ckplus(tmp_path / "ck", quirks=False)
    spec = f"ckplus:{t.root}?split=test&size=32&folds=3"
    labels, data = prepared_labels(spec)
    test = scan(t.root, "test", folds=3)
    assert len(labels) == len(test) > 0
    assert {Path(k).name: v for k, v in labels.items()} == {Path(r.source).name: t.faces[Path(r.source).name]
                                                            for r in test.records}
    assert data.images.shape[1:] == (32, 32, 3) and data.meta["methods"] == {"landmarks": len(test)}
    # warped by the dataset's own 5 points: they land near the template
    assert np.abs(data.landmarks - reference_landmarks(32)).max() < 4
    assert sorted(data.meta["subjects"]) == sorted({r.subject for r in test.records})
    again, _ = prepared_labels(spec)  # from the cache
    assert again == labels


def test_cli_data_check_and_prepare(tmp_path, capsys):
    from fer_lab.cli import main
    from fer_lab.data.store import FaceArrays

    t = make_ckplus(tmp_path / "ck")
    spec = f"ckplus:{t.root}?split=all&folds=3"
    assert main(["data", "check", spec, "--no-progress", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "ckplus [all]" in out and "contempt" in out and "no emotion label" in out
    assert f"decoded {len(t.faces)} of {len(t.faces)} images" in out
    truncate(t.root / "cohn-kanade-images" / "S022" / "001" / "S022_001_00000005.png")
    assert main(["data", "check", spec, "--no-progress"]) == 1
    assert "unreadable: " in capsys.readouterr().out
    assert main(["data", "prepare", spec, "--out", str(tmp_path / "store"), "--size", "24", "--no-progress"]) == 0
    store = FaceArrays.load(tmp_path / "store")
    assert len(store) == len(t.faces) - 2  # the truncated frame, and the landmark-less frame the detector misses
    assert any("S022_001_00000005.png" in u for u in store.meta["unreadable"])
    assert any("S011_001_00000005.png" in u for u in store.meta["no_face"])


def test_peak_and_neutral_frame_positions():
    from fer_lab.data.readers.base import peak_and_neutral

    assert peak_and_neutral(10, 3, True) == ([7, 8, 9], 0)
    assert peak_and_neutral(3, 3, True) == ([1, 2], 0)      # the first frame is never also a peak frame
    assert peak_and_neutral(3, 3, False) == ([0, 1, 2], None)
    assert peak_and_neutral(1, 3, True) == ([0], None)      # a single frame is the apex, no neutral
    assert peak_and_neutral(0, 3, True) == ([], None)
    with pytest.raises(ValueError):
        peak_and_neutral(5, 0, True)


def test_subject_folds_are_balanced_and_seeded():
    from fer_lab.data.readers.base import SubjectSplit

    ids = [f"S{i:03d}" for i in range(23)]
    folds = [SubjectSplit(folds=5, fold=f).assign(ids) for f in range(5)]
    tests = [{s for s, v in a.items() if v == "test"} for a in folds]
    assert sorted(len(t) for t in tests) == [4, 4, 5, 5, 5] and set().union(*tests) == set(ids)
    assert SubjectSplit(folds=5).assign(reversed(ids)) == folds[0]   # order of discovery does not matter
    assert SubjectSplit(folds=5, seed=1).assign(ids) != folds[0]
    val = SubjectSplit(folds=5, fold=4, val_folds=2).assign(ids)
    assert {s for s, v in val.items() if v == "val"} == tests[0] | tests[1]  # the folds after 4, cyclically
