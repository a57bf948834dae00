import pytest
from replicas_lab import make_mma

from fer_lab.data.readers import READERS, ReaderError, read_image
from fer_lab.data.readers.mma import scan


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return make_mma(tmp_path_factory.mktemp("mma"))


def labels(m):
    base = m.root / "MMAFEDB"
    return {str(r.path.relative_to(base)): r.label for r in m.records}


def test_registered():
    assert READERS.get("mma") is scan


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_each_split_reads_its_folder(replica, split):
    m = scan(replica.root, split)
    assert labels(m) == replica.extra[split]
    assert {r.split for r in m.records} == {split}
    assert m.align == "whole"


def test_all_and_root_variants(replica):
    m = scan(replica.root, "all")
    assert labels(m) == replica.faces
    inner = scan(replica.root / "MMAFEDB", "test")
    assert [r.source for r in inner.records] == [r.source for r in scan(replica.root, "test").records]


def test_drops_and_decoding(replica):
    m = scan(replica.root, "all")
    for fragment, phrase in replica.dropped.items():
        hit = [d for d in m.dropped if fragment in d.source]
        assert len(hit) == 1 and phrase in hit[0].reason, (fragment, hit)
    assert read_image(m.records[0]).shape == (8, 8, 3)


def test_bad_layouts(tmp_path):
    with pytest.raises(ReaderError, match="MMA folder not found"):
        scan(tmp_path / "nope")
    (tmp_path / "MMAFEDB" / "train" / "happy").mkdir(parents=True)
    with pytest.raises(ReaderError, match="no MMA val folder"):
        scan(tmp_path, "val")
    with pytest.raises(ReaderError, match="no MMA images found"):
        scan(tmp_path, "train")


def test_load_dataset_end_to_end(tmp_path, monkeypatch):
    from replicas_lab import prepared_labels

    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    t = make_mma(tmp_path / "mma")
    labels, data = prepared_labels(f"mma:{t.root}?split=test&size=32")
    assert {k.removeprefix("MMAFEDB/"): v for k, v in labels.items()} == t.extra["test"]
    assert data.meta["methods"] == {"whole": len(t.extra["test"])}


def test_cli_check_reports_counts(tmp_path, capsys):
    from fer_lab.cli import main

    t = make_mma(tmp_path / "mma")
    assert main(["data", "check", f"mma:{t.root}?split=train", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mma [train]" in out and "not inside a class folder" in out and "decoded 21 of 21" in out
