from pathlib import Path

import pytest
from replicas import FERPLUS_CASES, make_ferplus, shade

from fer_lab.data.readers import READERS, ReaderError, read_image
from fer_lab.data.readers.ferplus import VOTES, majority, scan


def keyed(m, root):
    out = {}
    for r in m.records:
        s = r.source.split(" (")[0]
        out[Path(s).name if ".csv:" in s else str(Path(s).relative_to(root))] = r
    return out


def assert_drops(m, truth, root):
    for fragment, phrase in truth.dropped.items():
        assert any(fragment in d.source and phrase in d.reason for d in m.dropped), (fragment, phrase, m.dropped)


def test_registered():
    assert READERS.get("ferplus") is scan


@pytest.mark.parametrize("votes, want", FERPLUS_CASES)
def test_majority_rule(votes, want):
    got = majority(votes)
    if isinstance(want, int):
        from fer_lab.labels import EXPRESSIONS
        assert got == EXPRESSIONS[want]
    else:
        assert got == {"unknown": "unknown", "contempt": "contempt", "not a face": "NF"}[want]


@pytest.mark.parametrize("pixels", ["fer2013", "icml"])
@pytest.mark.parametrize("split", ["train", "val", "test", "all"])
def test_votes_layout(tmp_path, pixels, split):
    t = make_ferplus(tmp_path, "votes", pixels)
    m = scan(tmp_path, split)
    got = keyed(m, tmp_path)
    assert {k: r.label for k, r in got.items()} == t.of(split)
    for r in m.records:
        assert read_image(r)[0, 0, 0] == shade(r.label)   # pixels come from the same FER2013 row
        assert len(r.extra["votes"]) == len(VOTES)
    if split == "train":
        reasons = " | ".join(d.reason for d in m.dropped)
        for phrase in ("contempt", "unknown", "not a face", "empty image name"):
            assert phrase in reasons
        assert m.drop_counts()["contempt: not one of the 7 classes"] == 1


@pytest.mark.parametrize("split", ["train", "val", "test", "all"])
def test_generated_folders_layout(tmp_path, split):
    t = make_ferplus(tmp_path, "folders")
    m = scan(tmp_path, split)
    assert {k: r.label for k, r in keyed(m, tmp_path).items()} == t.of(split)
    assert all(read_image(r)[3, 3, 0] == shade(r.label) for r in m.records)
    if split == "all":
        assert_drops(m, t, tmp_path)


def test_rows_must_match_the_fer2013_rows(tmp_path):
    make_ferplus(tmp_path, "votes")
    csv = tmp_path / "fer2013.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ReaderError, match=r"fer2013new.csv: 39 rows but .*fer2013.csv has 38"):
        scan(tmp_path, "train")
    lines[1] = lines[1].replace("Training", "PublicTest")
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReaderError, match="row 0 has Usage 'Training'.*'PublicTest'"):
        scan(tmp_path, "train")


def test_pixels_elsewhere_and_wrong_root(tmp_path):
    make_ferplus(tmp_path / "a", "votes")
    (tmp_path / "a" / "fer2013.csv").rename(tmp_path / "pixels.csv")
    with pytest.raises(ReaderError, match="FER2013 pixels not found"):
        scan(tmp_path / "a", "train")
    m = scan(tmp_path / "a", "train", fer2013=str(tmp_path / "pixels.csv"))
    assert len(m) == 8
    with pytest.raises(ReaderError, match="not a FERPlus layout"):
        scan(tmp_path, "train")
