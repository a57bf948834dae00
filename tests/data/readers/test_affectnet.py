from pathlib import Path

import numpy as np
import pytest
from replicas import AFFECTNET_TO_CANON, make_affectnet, shade

from fer_lab.data.readers import READERS, ReaderError, read_image
from fer_lab.data.readers.affectnet import LABELS, scan


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return make_affectnet(tmp_path_factory.mktemp("affectnet"))


def keyed(m, truth):
    return {str(Path(r.source).relative_to(truth.root / "Manually_Annotated_Images")): r for r in m.records}


def test_registered_and_label_map():
    assert READERS.get("affectnet") is scan
    assert {i: LABELS(i) for i in range(7)} == AFFECTNET_TO_CANON
    assert all(LABELS(i) is None for i in range(7, 11))


@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_labels_splits_and_drops(replica, split):
    m = scan(replica.root, split)
    got = keyed(m, replica)
    assert {k: r.label for k, r in got.items()} == replica.of(split)
    assert all(read_image(r)[10, 10, 0] == shade(r.label) for r in m.records)
    reasons = m.drop_counts()
    per = {"train": 2, "test": 1, "all": 3}[split]
    assert reasons["contempt: not one of the 7 classes"] == per
    assert reasons["none (no basic expression)"] == reasons["uncertain"] == reasons["no face"] == per
    assert sum("is missing" in d.reason and "missing.jpg" in d.source for d in m.dropped) == (2 if split == "all"
                                                                                             else 1)


def test_68_landmarks_reduced_to_five_and_boxes(replica):
    m = scan(replica.root, "train")
    assert m.align == "landmarks"
    for key, r in keyed(m, replica).items():
        assert r.box == replica.boxes[key]
        if key in replica.landmarks:
            np.testing.assert_allclose(r.landmarks, replica.landmarks[key], atol=1e-4)
        else:   # the row with a truncated landmark field keeps its box and is reported
            assert r.landmarks is None
            assert any("short_landmarks" not in n and "unreadable landmarks" in n for n in m.notes)
    assert keyed(m, replica)["106/train_6_0.jpg"].extra["valence"] == 0.25


def test_bad_layouts(tmp_path, replica):
    with pytest.raises(ReaderError, match="training.csv: not found"):
        scan(tmp_path, "train")
    with pytest.raises(ReaderError, match="no separate validation split"):
        scan(replica.root, "val")
    (tmp_path / "training.csv").write_text("a,b,c\n")
    (tmp_path / "Manually_Annotated_Images").mkdir()
    with pytest.raises(ReaderError, match="training.csv: header"):
        scan(tmp_path, "train")
