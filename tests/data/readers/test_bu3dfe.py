from pathlib import Path

import pytest
from replicas_pose import BU3DFE_PEOPLE, make_bu3dfe

from fer_lab.data.readers import READERS, ReaderError
from fer_lab.data.readers.bu3dfe import scan


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return make_bu3dfe(tmp_path_factory.mktemp("bu3dfe"))


def got(m, root):
    return {Path(r.source).relative_to(root).as_posix(): r for r in m.records}


def test_registered():
    assert READERS.get("bu3dfe") is scan


def test_textures_with_labels_subjects_and_levels(replica):
    m = scan(replica.root, "all", folds=2)
    g = got(m, replica.root)
    assert {k: r.label for k, r in g.items()} == replica.faces
    assert {k: r.subject for k, r in g.items()} == replica.subjects
    assert all(r.pose is None for r in m.records) and m.align == "mtcnn"
    assert g["M0001/M0001_FE03BL_F2D.bmp"].extra == {"intensity": 3, "race": "BL", "code": "FE"}
    assert len(m) == 25 * len(BU3DFE_PEOPLE) and m.class_counts()["neutral"] == len(BU3DFE_PEOPLE)
    assert any("rendered view not read" in d.reason for d in m.dropped)


def test_intensity_neutral_and_subject_options(replica):
    m = scan(replica.root, "all", folds=2, intensity="3,4")
    assert {r.extra["intensity"] for r in m.records} == {0, 3, 4} and len(m) == 13 * len(BU3DFE_PEOPLE)
    m = scan(replica.root, "all", folds=2, intensity=4, neutral=False)
    assert {r.extra["intensity"] for r in m.records} == {4}
    assert any(d.reason == "neutral not selected (neutral=false)" for d in m.dropped)
    assert any("intensity 02 not selected" in d.reason for d in m.dropped)
    one = scan(replica.root, "test", subject="m0002", protocol="transductive")
    assert {r.subject for r in one.records} == {"M0002"} and len(one) == 25
    with pytest.raises(ReaderError, match="intensity '5'"):
        scan(replica.root, "train", intensity="5")


def test_rendered_views_carry_their_yaw(replica):
    m = scan(replica.root, "all", folds=2, images="renders")
    g = got(m, replica.root)
    assert {k: (r.label, r.pose) for k, r in g.items()} == \
        {k: (lab, (yaw, 0.0, 0.0)) for k, (lab, yaw) in replica.extra["renders"].items()}
    assert any("texture image not read" in d.reason for d in m.dropped)


def test_subject_split(replica):
    te, tr = scan(replica.root, "test", folds=4, fold=1), scan(replica.root, "train", folds=4, fold=1)
    assert len({r.subject for r in te.records}) == 1 and len({r.subject for r in tr.records}) == 3
    assert not {r.subject for r in te.records} & {r.subject for r in tr.records}


def test_drops_and_errors(replica, tmp_path):
    m = scan(replica.root, "all", folds=2)
    for fragment, phrase in replica.dropped.items():
        hit = [d for d in m.dropped if d.source.endswith(fragment)]
        assert len(hit) == 1 and phrase in hit[0].reason, (fragment, hit)
    listed = {d.source for d in m.dropped} | {r.source for r in m.records}
    assert not any(s.endswith(i) for s in listed for i in replica.ignored)
    with pytest.raises(ReaderError, match="images 'meshes'"):
        scan(replica.root, "train", images="meshes")
    with pytest.raises(ReaderError, match="BU-3DFE folder not found"):
        scan(tmp_path / "nope")
    (tmp_path / "F0001").mkdir()
    (tmp_path / "F0001" / "F0001_NE00WH_F3D.wrl").write_text("#VRML\n")
    with pytest.raises(ReaderError, match="no BU-3DFE texture images"):
        scan(tmp_path)


def test_load_dataset_end_to_end(tmp_path, monkeypatch):
    from replicas_lab import prepared_labels

    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    t = make_bu3dfe(tmp_path / "bu", quirks=False)
    labels, data = prepared_labels(f"bu3dfe:{t.root}?split=all&size=32&align=whole&folds=2&images=renders")
    assert {Path(k).as_posix(): v for k, v in labels.items()} == {k: v[0] for k, v in t.extra["renders"].items()}
    yaw = dict(zip((Path(s).as_posix() for s in data.meta["sources"]), data.pose[:, 0].tolist()))
    assert yaw["F0002/F0002_SU04AE_yaw-30.png"] == -30.0 and yaw["M0001/M0001_NE00BL_yaw45.png"] == 45.0
