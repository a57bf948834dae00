from pathlib import Path

import pytest
from replicas_lab import make_kdef

from fer_lab.data.readers import READERS, ReaderError
from fer_lab.data.readers.kdef import scan


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return make_kdef(tmp_path_factory.mktemp("kdef"))


def got(m):
    return {Path(r.source).name: r for r in m.records}


def test_registered():
    assert READERS.get("kdef") is scan


def test_frontal_by_default_with_labels_subjects_and_pose(replica):
    m = scan(replica.root, "all", folds=5)
    g = got(m)
    assert {k: r.label for k, r in g.items()} == {k: v for k, v in replica.faces.items() if k.endswith("S.JPG")}
    assert {k: r.subject for k, r in g.items()} == {k: replica.subjects[k] for k in g}
    assert g["BM02AFS.JPG"].extra == {"session": "B", "code": "AF", "angle": "S"}
    assert g["BM02AFS.JPG"].pose == (0.0, 0.0, 0.0)
    assert len(m) == 2 * 5 * 7 and m.class_counts()["fear"] == 10
    assert sum("not selected" in d.reason for d in m.dropped) == 4 * 70


def test_angle_option(replica):
    m = scan(replica.root, "all", folds=5, angle="HL,HR")
    assert {r.extra["angle"] for r in m.records} == {"HL", "HR"} and len(m) == 140
    assert {r.pose[0] for r in m.records} == {-45.0, 45.0}
    every = scan(replica.root, "all", folds=5, angle="all")
    assert {k: r.label for k, r in got(every).items()} == replica.faces
    with pytest.raises(ReaderError, match="angle 'up'"):
        scan(replica.root, "train", angle="up")


def test_sessions_of_one_person_stay_in_one_split(replica):
    for f in range(5):
        te = scan(replica.root, "test", folds=5, fold=f)
        assert len({r.subject for r in te.records}) == 1
        assert {r.extra["session"] for r in te.records} == {"A", "B"}
        tr = scan(replica.root, "train", folds=5, fold=f)
        assert not {r.subject for r in tr.records} & {r.subject for r in te.records}


def test_drops_and_errors(replica, tmp_path):
    m = scan(replica.root, "all", folds=5)
    for fragment, phrase in replica.dropped.items():
        hit = [d for d in m.dropped if d.source.endswith(fragment)]
        assert len(hit) == 1 and phrase in hit[0].reason
    assert not any(d.source.endswith(".txt") for d in m.dropped)
    with pytest.raises(ReaderError, match="KDEF folder not found"):
        scan(tmp_path / "nope")
    (tmp_path / "KDEF").mkdir()
    with pytest.raises(ReaderError, match="no KDEF images"):
        scan(tmp_path)


def test_load_dataset_end_to_end(tmp_path, monkeypatch):
    import numpy as np
    from replicas_lab import prepared_labels

    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    t = make_kdef(tmp_path / "kdef", people=("F01", "M01"), quirks=False)
    labels, data = prepared_labels(f"kdef:{t.root}?split=all&size=32&align=whole&folds=2&angle=S,FR")
    assert {Path(k).name: v for k, v in labels.items()} == {k: v for k, v in t.faces.items()
                                                            if k.endswith(("S.JPG", "FR.JPG"))}
    yaw = dict(zip((Path(s).name for s in data.meta["sources"]), data.pose[:, 0].tolist()))
    assert yaw["AF01HAFR.JPG"] == 90.0 and yaw["BM01NES.JPG"] == 0.0
    assert np.isfinite(data.pose).all()
