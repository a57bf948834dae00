from pathlib import Path

import pytest
from replicas import make_imagefolder, shade

from fer_lab.data.readers import READERS, ReaderError, read_image
from fer_lab.data.readers.imagefolder import scan


def keyed(m, root):
    return {str(Path(r.source).relative_to(root)): r for r in m.records}


def test_registered():
    assert READERS.get("imagefolder") is scan


@pytest.mark.parametrize("split", ["train", "val", "test", "all"])
def test_split_folders(tmp_path, split):
    t = make_imagefolder(tmp_path)
    m = scan(tmp_path, split)
    got = keyed(m, tmp_path)
    assert {k: r.label for k, r in got.items()} == t.of(split)
    assert all(read_image(r)[0, 0, 0] == shade(r.label) for r in m.records)
    assert all(r.split == t.splits[k] for k, r in got.items())
    if split in ("test", "all"):
        assert any("fear" in n and "holds no images" in n for n in m.notes)   # the empty class is reported
    for fragment, phrase in t.dropped.items():
        if split == "all" or fragment.startswith({"train": "train", "val": "valid", "test": "test"}[split]):
            assert any(fragment in d.source and phrase in d.reason for d in m.dropped), (fragment, m.dropped)


def test_flat_layout_needs_split_all(tmp_path):
    t = make_imagefolder(tmp_path, splits=())
    m = scan(tmp_path, "all")
    assert {k: r.label for k, r in keyed(m, tmp_path).items()} == t.faces
    with pytest.raises(ReaderError, match="flat class folders have no 'train' split; use split=all"):
        scan(tmp_path, "train")


def test_unknown_folder_is_an_error_until_mapped(tmp_path):
    make_imagefolder(tmp_path, splits=("train",), extra_folder="scream")
    with pytest.raises(ReaderError, match="'scream' map to no expression"):
        scan(tmp_path, "train")
    m = scan(tmp_path, "train", classes="scream:drop")
    assert any("scream" in d.source and "classes option" in d.reason for d in m.dropped)
    m = scan(tmp_path, "train", classes="scream:surprise,happy:sadness")
    got = keyed(m, tmp_path)
    assert got["train/scream/x.png"].label == 0
    assert got["train/happy/happy_0.png"].label == 4        # the map overrides the folder's own name
    with pytest.raises(ReaderError, match="'smirk' is not an expression"):
        scan(tmp_path, "train", classes="scream:smirk")
    with pytest.raises(ReaderError, match="is not folder:expression"):
        scan(tmp_path, "train", classes="scream")


def test_wrong_root(tmp_path):
    with pytest.raises(ReaderError, match="not a folder"):
        scan(tmp_path / "nope", "all")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReaderError, match="no class folders"):
        scan(tmp_path / "empty", "all")
