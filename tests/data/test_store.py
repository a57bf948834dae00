import numpy as np
import pytest

from fer_lab.data.store import FaceArrays


def _arrays(n=6, labels=None):
    rng = np.random.default_rng(0)
    return FaceArrays(
        images=rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8),
        labels=np.asarray(labels if labels is not None else np.arange(n) % 7, dtype=np.int64),
        landmarks=rng.uniform(0, 16, (n, 5, 2)).astype(np.float32),
        meta={"name": "toy"},
    )


def test_defaults_and_counts():
    a = _arrays(labels=[0, 0, 3, -1, 6, 6])
    assert np.isnan(a.pose).all() and (a.subject == -1).all()
    assert a.class_counts() == {"surprise": 2, "fear": 0, "disgust": 0, "happiness": 1, "sadness": 0,
                                "anger": 0, "neutral": 2, "unknown": 1}


def test_save_load_round_trip(tmp_path):
    a = _arrays()
    a.save(tmp_path / "store")
    b = FaceArrays.load(tmp_path / "store")
    for k in ("images", "labels", "landmarks", "subject"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert b.meta == {"name": "toy"}
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_label_and_shapes_named():
    with pytest.raises(ValueError, match=r"toy: label 7 at row 2"):
        _arrays(n=3, labels=[0, 1, 7])
    with pytest.raises(ValueError, match="landmarks has shape"):
        FaceArrays(np.zeros((2, 8, 8, 3), np.uint8), np.zeros(2, np.int64), np.zeros((2, 4, 2), np.float32))


def test_load_missing_store_names_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not a fer-lab store \(missing images.npy"):
        FaceArrays.load(tmp_path)


def test_concurrent_writers_keep_one_complete_store(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    a = _arrays()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: a.save(tmp_path / "store", overwrite=False), range(8)))
    b = FaceArrays.load(tmp_path / "store")
    np.testing.assert_array_equal(a.images, b.images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no temporary folders left


def test_overwrite_flag(tmp_path):
    _arrays(labels=[0] * 6).save(tmp_path / "s")
    _arrays(labels=[1] * 6).save(tmp_path / "s", overwrite=False)
    assert (FaceArrays.load(tmp_path / "s").labels == 0).all()
    _arrays(labels=[2] * 6).save(tmp_path / "s", overwrite=True)
    assert (FaceArrays.load(tmp_path / "s").labels == 2).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_subset_keeps_per_row_meta_in_step():
    a = _arrays(labels=[0, 1, 2, 3, 4, 5])
    a.meta.update(sources=[f"img{i}.jpg" for i in range(6)], splits=["train"] * 3 + ["test"] * 3,
                  class_counts=a.class_counts(), note="kept")
    for index, expected in ((np.array([4, 1]), ["img4.jpg", "img1.jpg"]),
                            (np.array([False, True, False, False, True, False]), ["img1.jpg", "img4.jpg"])):
        b = a.subset(index)
        assert b.meta["sources"] == expected
        assert [b.meta["sources"][k] for k in range(2)] == [f"img{int(y)}.jpg" for y in b.labels]
        assert b.meta["splits"] == ["test" if y >= 3 else "train" for y in b.labels]
        assert b.meta["class_counts"]["fear"] == 1 and b.meta["class_counts"]["surprise"] == 0
        assert b.meta["note"] == "kept"
    assert a.meta["sources"][0] == "img0.jpg"      # the original is untouched
