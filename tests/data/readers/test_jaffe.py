from pathlib import Path

import numpy as np
import pytest
from replicas_lab import JAFFE_EXPRESSERS, make_jaffe, truncate

from fer_lab.data.readers import READERS, ReaderError, read_image
from fer_lab.data.readers.jaffe import scan


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return make_jaffe(tmp_path_factory.mktemp("jaffe"))


def test_registered():
    assert READERS.get("jaffe") is scan


def test_labels_from_file_names_and_subjects(replica):
    m = scan(replica.root, "all", folds=3)
    got = {Path(r.source).name: r for r in m.records}
    assert {k: r.label for k, r in got.items()} == replica.faces
    assert {k: r.subject for k, r in got.items()} == replica.subjects
    assert got["KA.HA2.5.tiff"].extra == {"code": "HA", "sample": 2, "image_id": 5}
    assert m.align == "mtcnn"
    assert m.class_counts()["happiness"] == 2 * len(JAFFE_EXPRESSERS)
    assert all(r.landmarks is None and r.box is None for r in m.records)


def test_drops_name_file_and_reason(replica):
    m = scan(replica.root, "all", folds=3)
    assert len(m.dropped) == len(replica.dropped)
    for fragment, phrase in replica.dropped.items():
        hit = [d for d in m.dropped if d.source.endswith(fragment)]
        assert len(hit) == 1 and phrase in hit[0].reason, (fragment, hit)
    assert not any("README" in d.source for d in m.dropped)  # documentation is not data


def test_leave_one_subject_out_folds(replica):
    n = len(JAFFE_EXPRESSERS)
    tests = [scan(replica.root, "test", folds=n, fold=f) for f in range(n)]
    assert sorted(next(iter({r.subject for r in m.records})) for m in tests) == sorted(JAFFE_EXPRESSERS)
    assert all(len({r.subject for r in m.records}) == 1 for m in tests)
    train = scan(replica.root, "train", folds=n, fold=0)
    assert not {r.subject for r in train.records} & {r.subject for r in tests[0].records}
    assert len(train) + len(tests[0]) == len(replica.faces)


def test_transductive_is_the_cdfer_protocol(replica):
    tr, te = (scan(replica.root, s, protocol="transductive") for s in ("train", "test"))
    assert [r.source for r in tr.records] == [r.source for r in te.records]
    assert len(te) == len(replica.faces)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_decodes_grey_tiff_as_rgb_and_reports_corrupt_files(tmp_path):
    t = make_jaffe(tmp_path, quirks=False)
    m = scan(t.root, "all", protocol="transductive")
    rec = next(r for r in m.records if r.source.endswith("KA.AN1.1.tiff"))
    img = read_image(rec)
    assert img.shape == (16, 16, 3) and (img[..., 0] == img[..., 2]).all() and img.dtype == np.uint8
    truncate(rec.path, 30)
    with pytest.raises(ReaderError, match=r"KA\.AN1\.1\.tiff"):
        read_image(rec)


def test_bad_roots(tmp_path):
    with pytest.raises(ReaderError, match="JAFFE folder not found"):
        scan(tmp_path / "missing", "train")
    (tmp_path / "jaffedbase").mkdir()
    (tmp_path / "jaffedbase" / "README_FIRST.txt").write_text("x")
    with pytest.raises(ReaderError, match=f"^{tmp_path}: no JAFFE images"):
        scan(tmp_path, "train", protocol="transductive")


def test_load_dataset_end_to_end(tmp_path, monkeypatch):
    from replicas_lab import prepared_labels

    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    t = make_jaffe(tmp_path / "jaffe")
    labels, data = prepared_labels(f"jaffe:{t.root}?split=test&size=32&align=whole&folds=3&fold=1")
    expected = {f"jaffedbase/{r.path.name}": t.faces[r.path.name]
                for r in scan(t.root, "test", folds=3, fold=1).records}
    assert labels == expected and data.images.shape == (len(expected), 32, 32, 3)
    assert len(data.meta["dropped"]) == len(t.dropped)


def test_detector_lists_images_without_a_face(tmp_path, monkeypatch):
    """Random-noise replicas have no face: the default (MTCNN) alignment lists every one, none is kept."""
    from replicas_lab import prepared_labels

    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    t = make_jaffe(tmp_path / "jaffe", quirks=False)
    labels, data = prepared_labels(f"jaffe:{t.root}?split=test&size=32&folds=3")
    n = len(scan(t.root, "test", folds=3))
    assert labels == {} and len(data.meta["no_face"]) == n
    assert all("no face found (mtcnn)" in line for line in data.meta["no_face"])
