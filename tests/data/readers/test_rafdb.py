from pathlib import Path

import numpy as np
import pytest
from replicas import HAPPY, make_rafdb, shade, truncate

from fer_lab.data.readers import READERS, ReaderError, read_image
from fer_lab.data.readers.rafdb import scan


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return make_rafdb(tmp_path_factory.mktemp("raf"))


def faces(m):
    return {Path(r.source).name.replace("_aligned", ""): r for r in m.records}


def assert_drops(m, truth):
    for fragment, phrase in truth.dropped.items():
        assert any(fragment in d.source and phrase in d.reason for d in m.dropped), (fragment, phrase, m.dropped)


def test_registered():
    assert READERS.get("rafdb") is scan


@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_labels_and_splits(replica, split):
    m = scan(replica.root, split)
    got = {k: r.label for k, r in faces(m).items()}
    assert got == replica.of(split)
    assert all(r.split == replica.splits[k] for k, r in faces(m).items())
    assert m.class_counts() == {n: (2 if split == "train" else 1 if split == "test" else 3)
                                for n in m.class_counts()}


def test_manual_landmarks_boxes_and_attributes(replica):
    m = scan(replica.root, "train")
    assert m.align == "landmarks"
    f = faces(m)
    for name, pts in replica.landmarks.items():
        if name in f:
            np.testing.assert_allclose(f[name].landmarks, pts, atol=1e-4)
    assert f["train_00005.jpg"].landmarks is None          # no manual file: aligned from its box instead
    assert f["train_00005.jpg"].box == replica.boxes["train_00005.jpg"]
    assert f["train_00001.jpg"].extra["gender"] == "female" and f["train_00001.jpg"].extra["age"] == "20-39"
    assert any("13 of 14 faces have manual landmarks" in n for n in m.notes)


def test_aligned_images_are_read_whole(replica):
    m = scan(replica.root, "test", images="aligned")
    assert m.align == "whole"
    assert all(r.path.name.endswith("_aligned.jpg") and r.landmarks is None for r in m.records)
    img = read_image(faces(m)["test_0004.jpg"])
    assert img.shape == (100, 100, 3) and abs(int(img.mean()) - shade(HAPPY)) <= 2


def test_bad_rows_are_reported_not_guessed(replica):
    m = scan(replica.root, "all")
    assert_drops(m, replica)
    assert "train_00099.jpg" not in faces(m)


def test_correctly_spelled_label_file_and_parent_root(tmp_path):
    t = make_rafdb(tmp_path, misspelled=False)
    m = scan(tmp_path, "train")          # the folder above basic/ works too
    assert {k: r.label for k, r in faces(m).items()} == t.of("train")
    assert any("list_partition_label.txt" in n for n in m.notes)


def test_wrong_root_and_missing_images(tmp_path, replica):
    with pytest.raises(ReaderError, match="EmoLabel"):
        scan(tmp_path, "train")
    with pytest.raises(ReaderError, match="no validation split"):
        scan(replica.root, "val")
    with pytest.raises(ReaderError, match="images='big'"):
        scan(replica.root, "train", images="big")
    t = make_rafdb(tmp_path / "x")
    (t.root / "Image" / "original").rename(t.root / "Image" / "gone")
    assert scan(t.root, "train").align == "whole"       # falls back to the aligned crops
    (t.root / "Image" / "aligned").rename(t.root / "Image" / "gone2")
    with pytest.raises(ReaderError, match=r"Image/aligned.*not found"):
        scan(t.root, "train")


def test_truncated_image_fails_with_its_name(tmp_path):
    t = make_rafdb(tmp_path)
    truncate(t.root / "Image" / "original" / "train_00003.jpg", 0.3)
    rec = faces(scan(t.root, "train"))["train_00003.jpg"]
    with pytest.raises(ReaderError, match="train_00003.jpg: not a readable image"):
        read_image(rec)
