from pathlib import Path

import pytest
from replicas_lab import NEUTRAL, make_oulu

from fer_lab.data.readers import READERS, ReaderError
from fer_lab.data.readers.oulu import scan


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return make_oulu(tmp_path_factory.mktemp("oulu"))


def rel(m, r):
    return str(Path(r.source).relative_to(m.root / "OriginalImg" / "VL" / "Strong"))


def test_registered():
    assert READERS.get("oulu") is scan


def test_peak_frames_first_frame_neutral_and_subjects(replica):
    m = scan(replica.root, "all", folds=2)
    got = {rel(m, r): r for r in m.records}
    assert {k: r.label for k, r in got.items()} == replica.faces
    assert {k: r.subject for k, r in got.items()} == replica.subjects
    r = got["P002/Happiness/000.jpeg"]
    assert r.label == NEUTRAL and r.extra["role"] == "neutral" and r.extra["modality"] == "VL"
    assert got["P002/Happiness/005.jpeg"].extra["frame"] == 5
    assert any("P001/Fear (2 frames)" in n for n in m.notes)
    assert m.align == "mtcnn"


def test_drops(replica):
    m = scan(replica.root, "all", folds=2)
    for fragment, phrase in replica.dropped.items():
        hit = [d for d in m.dropped if d.source.endswith(fragment)]
        assert len(hit) == 1 and phrase in hit[0].reason, (fragment, hit)
    assert any(d.source.endswith("P005") or "P005" in d.source for d in m.dropped)


def test_modality_and_lighting(replica):
    ni = scan(replica.root, "all", folds=2, modality="NI")
    assert len(ni) == 4 * 6 * 4 and {r.extra["modality"] for r in ni.records} == {"NI"}
    weak = scan(replica.root, "all", protocol="transductive", lighting="weak")
    assert {(r.subject, r.label) for r in weak.records} == {("P001", 3), ("P001", NEUTRAL)}
    with pytest.raises(ReaderError, match="recording folder not found .*VL/Strong"):
        scan(replica.root, "train", lighting="Dark")
    with pytest.raises(ReaderError, match="modality 'IR'"):
        scan(replica.root, "train", modality="IR")


def test_subject_split_and_root_variants(replica):
    tr = scan(replica.root, "train", folds=2)
    te = scan(replica.root, "test", folds=2)
    assert not {r.subject for r in tr.records} & {r.subject for r in te.records}
    assert len(tr) + len(te) == len(replica.faces)
    inner = scan(replica.root / "OriginalImg", "test", folds=2)  # root may be OriginalImg itself
    assert [r.source for r in inner.records] == [r.source for r in te.records]


def test_bad_roots(tmp_path):
    with pytest.raises(ReaderError, match="root folder not found"):
        scan(tmp_path / "nope")
    with pytest.raises(ReaderError, match=f"^{tmp_path}: no OriginalImg/"):
        scan(tmp_path)


def test_load_dataset_end_to_end(tmp_path, monkeypatch):
    from replicas_lab import prepared_labels

    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    t = make_oulu(tmp_path / "oulu", subjects=2, frames=4, quirks=False)
    labels, data = prepared_labels(f"oulu:{t.root}?split=train&size=32&align=whole&protocol=transductive")
    prefix = "OriginalImg/VL/Strong/"
    assert {k.removeprefix(prefix): v for k, v in labels.items()} == t.faces
    assert sorted(data.meta["subjects"]) == ["P001", "P002"]
    assert set(data.subject.tolist()) == {0, 1}
