from pathlib import Path

import pytest
from replicas import make_expw, shade

from fer_lab.data.readers import READERS, ReaderError, read_image
from fer_lab.data.readers.expw import scan, split_of


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return make_expw(tmp_path_factory.mktemp("expw"))


def keyed(m):
    return {Path(r.source).name: r for r in m.records}


def test_registered():
    assert READERS.get("expw") is scan


def test_all_faces_labels_and_boxes(replica):
    m = scan(replica.root, "all")
    got = keyed(m)
    assert {k: r.label for k, r in got.items()} == replica.faces
    assert m.align == "bbox"
    for k, r in got.items():
        assert r.box == replica.boxes[k]
        x1, y1, x2, y2 = map(int, r.box)
        crop = read_image(r)[y1 + 4:y2 - 4, x1 + 4:x2 - 4].astype(int)   # inside the JPEG ringing
        assert abs(crop - shade(r.label)).max() <= 20   # the box (top, left, right, bottom order) frames that face
    for fragment, phrase in replica.dropped.items():
        assert any(fragment in d.source and phrase in d.reason for d in m.dropped), (fragment, m.dropped)


def test_splits_partition_by_scene_image(replica):
    parts = {s: scan(replica.root, s) for s in ("train", "val", "test")}
    keys = {s: set(keyed(m)) for s, m in parts.items()}
    assert set().union(*keys.values()) == set(replica.faces)
    assert sum(map(len, keys.values())) == len(replica.faces)
    scenes = {s: {k.split("#")[0] for k in ks} for s, ks in keys.items()}
    assert not (scenes["train"] & scenes["test"]) and not (scenes["train"] & scenes["val"])
    assert all(r.split == s for s, m in parts.items() for r in m.records)
    # deterministic and independent of the other rows
    assert split_of("scene_007.jpg", 0.1, 0.1, 0) == split_of("scene_007.jpg", 0.1, 0.1, 0)
    other = scan(replica.root, "test", split_seed=1)
    assert {r.split for r in other.records} == {"test"}


def test_fractions_and_confidence(replica):
    assert len(scan(replica.root, "train", val=0.0, test=0.0)) == len(replica.faces)
    assert len(scan(replica.root, "test", val=0.0, test=0.0)) == 0
    m = scan(replica.root, "all", min_confidence=80)
    assert all(r.extra["confidence"] >= 80 for r in m.records)
    assert any("min_confidence=80" in d.reason for d in m.dropped)
    with pytest.raises(ReaderError, match="must be >= 0 and sum below 1"):
        scan(replica.root, "train", val=0.6, test=0.5)


def test_wrong_root(tmp_path):
    with pytest.raises(ReaderError, match=r"label/label.lst: not found"):
        scan(tmp_path, "train")
