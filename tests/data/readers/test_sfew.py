from pathlib import Path

import pytest
from replicas_lab import make_sfew

from fer_lab.data.readers import READERS, ReaderError
from fer_lab.data.readers.sfew import scan


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return make_sfew(tmp_path_factory.mktemp("sfew"))


def names(m):
    return {Path(r.source).name: r.label for r in m.records}


def test_registered():
    assert READERS.get("sfew") is scan


def test_train_is_train_and_val_is_the_test_split(replica):
    tr = scan(replica.root, "train")
    te = scan(replica.root, "test")
    va = scan(replica.root, "val")
    assert names(tr) == replica.extra["train"]
    assert names(te) == replica.extra["val"] == names(va)
    assert {r.split for r in te.records} == {"test"} and {r.split for r in va.records} == {"val"}
    assert tr.class_counts()["sadness"] == 2  # the lower-case "sad" folder
    assert any("Val is read as the test" in n for n in te.notes)
    assert te.align == "mtcnn"
    assert not any("Airheads" in r.source for r in te.records)  # Test has no labels
    assert any("Test: not read" in n for n in te.notes)


def test_all_is_train_plus_val(replica):
    m = scan(replica.root, "all")
    assert names(m) == replica.faces
    assert {r.split for r in m.records} == {"train", "test"}


def test_empty_class_and_drops_are_reported(replica):
    te = scan(replica.root, "test")
    assert te.class_counts()["fear"] == 0
    assert any("Fear: class folder holds no images" in n for n in te.notes)
    tr = scan(replica.root, "train")
    for fragment, phrase in replica.dropped.items():
        hit = [d for d in tr.dropped if fragment in d.source]
        assert len(hit) == 1 and phrase in hit[0].reason
    movie = next(r for r in tr.records if Path(r.source).name.startswith("Movie1_"))
    assert movie.extra == {"movie": "Movie1", "frame": 1000}


def test_other_val_folder_names(tmp_path):
    t = make_sfew(tmp_path, quirks=False, val_folder="Val/Val_Aligned_Faces_new")
    assert names(scan(t.root, "test")) == t.extra["val"]
    t2 = make_sfew(tmp_path / "cdfer", quirks=False, val_folder="Val/imgs")
    assert names(scan(t2.root, "test")) == t2.extra["val"]


def test_bad_layouts(tmp_path):
    with pytest.raises(ReaderError, match="SFEW root folder not found"):
        scan(tmp_path / "nope")
    (tmp_path / "Train" / "Train_Aligned_Faces" / "Happy").mkdir(parents=True)
    with pytest.raises(ReaderError, match=f"^{tmp_path}: no SFEW Val class folders"):
        scan(tmp_path, "test")
    with pytest.raises(ReaderError, match="no SFEW images found for split 'train'"):
        scan(tmp_path, "train")


def test_load_dataset_end_to_end(tmp_path, monkeypatch):
    from replicas_lab import prepared_labels

    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    t = make_sfew(tmp_path / "sfew")
    labels, data = prepared_labels(f"sfew:{t.root}?split=test&size=32&align=whole")
    assert {Path(k).name: v for k, v in labels.items()} == t.extra["val"]
    assert all(k.startswith("Val/Val_Aligned_Faces/") for k in labels)
    assert data.meta["split"] == "test" and data.images.shape[1:] == (32, 32, 3)
