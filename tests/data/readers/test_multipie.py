from pathlib import Path

import numpy as np
import pytest
from replicas_pose import MULTIPIE_PEOPLE, make_multipie

from fer_lab.data.readers import READERS, ReaderError
from fer_lab.data.readers.multipie import scan


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return make_multipie(tmp_path_factory.mktemp("multipie"))


def got(m, root):
    return {Path(r.source).relative_to(root).as_posix(): r for r in m.records}


def expected(t, cameras=None, shots=("07",)):
    return {k: v for k, v in t.faces.items()
            if (cameras is None or t.extra[k]["camera"] in cameras) and f"{t.extra[k]['shot']:02d}" in shots}


def test_registered():
    assert READERS.get("multipie") is scan


def test_defaults_head_height_cameras_frontal_flash(replica):
    m = scan(replica.root, "all", folds=3)
    g = got(m, replica.root)
    want = expected(replica, cameras=("05_1", "14_0", "19_0", "24_0"))
    assert {k: r.label for k, r in g.items()} == want
    assert {k: r.subject for k, r in g.items()} == {k: replica.subjects[k] for k in want}
    assert {k: r.pose for k, r in g.items()} == {k: (replica.yaw[k], 0.0, 0.0) for k in want}
    k = "session03/multiview/013/03/19_0/013_03_03_190_07.png"
    assert g[k].label == 2 and g[k].extra == {"session": 3, "recording": 3, "camera": "19_0", "shot": 7,
                                              "expression": "disgust"}
    assert m.align == "mtcnn"
    reasons = " | ".join(d.reason for d in m.dropped)
    assert "camera 08_1 not selected" in reasons and "shot 00 not selected" in reasons


def test_camera_shot_and_subject_options(replica):
    m = scan(replica.root, "all", folds=3, cameras="all", shots="all")
    g = got(m, replica.root)
    assert {k: r.label for k, r in g.items()} == replica.faces
    assert all(r.pose is None for k, r in g.items() if "/08_1/" in k)
    m = scan(replica.root, "all", folds=3, cameras="05_1,051,19_0", shots="0,7")
    assert {r.extra["camera"] for r in m.records} == {"05_1", "19_0"}
    assert {k: r.label for k, r in got(m, replica.root).items()} == expected(replica, ("05_1", "19_0"), ("00", "07"))
    assert {r.extra["camera"] for r in scan(replica.root, "all", folds=3, cameras=51).records} == {"05_1"}
    assert {r.extra["camera"] for r in scan(replica.root, "all", folds=3, cameras="frontal").records} == {"05_1"}
    one = scan(replica.root, "test", cameras="head", subject=13, protocol="transductive")   # spec reads 013 as 13
    assert {r.subject for r in one.records} == {"013"} and len(one) > 0
    assert {r.source for r in one.records} == {r.source for r in scan(replica.root, "train", subject="013",
                                                                      protocol="transductive").records}


def test_labels_follow_the_recording_table(replica):
    m = scan(replica.root, "all", folds=3, cameras="05_1")
    by = {(r.extra["session"], r.extra["recording"]): r.label for r in m.records}
    assert by == {(1, 1): 6, (1, 2): 3, (2, 1): 6, (2, 2): 0, (3, 1): 6, (3, 2): 3, (3, 3): 2, (4, 1): 6, (4, 2): 6}
    assert sum("squint" in d.reason for d in m.dropped) == 2   # two people in session 2, one camera, shot 07


def test_subject_split_keeps_sessions_together(replica):
    for f in range(3):
        te = scan(replica.root, "test", folds=3, fold=f)
        tr = scan(replica.root, "train", folds=3, fold=f)
        assert len({r.subject for r in te.records}) == 1
        assert not {r.subject for r in tr.records} & {r.subject for r in te.records}
        who = te.records[0].subject
        assert {r.extra["session"] for r in te.records} == set(MULTIPIE_PEOPLE[who])


def test_drops_and_errors(replica, tmp_path):
    m = scan(replica.root, "all", folds=3, cameras="all", shots="all")
    for fragment, phrase in replica.dropped.items():
        hit = [d for d in m.dropped if d.source.endswith(fragment)]
        assert len(hit) == 1 and phrase in hit[0].reason, (fragment, hit)
    listed = {d.source for d in m.dropped} | {r.source for r in m.records}
    assert not any(s.endswith(i) for s in listed for i in replica.ignored)
    with pytest.raises(ReaderError, match="camera.*'99_9'|99_9"):
        scan(replica.root, "train", cameras="99_9")
    with pytest.raises(ReaderError, match="shots"):
        scan(replica.root, "train", shots="20")
    with pytest.raises(ReaderError, match="Multi-PIE folder not found"):
        scan(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReaderError, match="no session01"):
        scan(tmp_path / "empty")
    (tmp_path / "bare" / "session01").mkdir(parents=True)
    with pytest.raises(ReaderError, match="multiview folder not found"):
        scan(tmp_path / "bare")
    with pytest.raises(ReaderError, match="no Multi-PIE images"):
        scan(replica.root, "all", subject="999")
    # one session folder as the root works too
    s1 = scan(replica.root / "session01", "all", protocol="transductive")
    assert {r.extra["session"] for r in s1.records} == {1}


def test_load_dataset_end_to_end(tmp_path, monkeypatch):
    from replicas_lab import prepared_labels

    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    t = make_multipie(tmp_path / "mp", quirks=False)
    labels, data = prepared_labels(f"multipie:{t.root}?split=all&size=32&align=whole&folds=3&cameras=05_1,24_0")
    assert {Path(k).as_posix(): v for k, v in labels.items()} == expected(t, ("05_1", "24_0"))
    yaw = dict(zip((Path(s).as_posix() for s in data.meta["sources"]), data.pose[:, 0].tolist()))
    assert yaw["session01/multiview/001/01/24_0/001_01_01_240_07.png"] == 90.0
    assert np.isfinite(data.pose).all() and len(set(data.subject.tolist())) == 3
