from pathlib import Path

import pytest
from replicas import KAGGLE_TO_CANON, make_fer2013, shade

from fer_lab.data.readers import READERS, ReaderError, read_image
from fer_lab.data.readers.fer2013 import parse_pixels, scan


def keyed(m):
    return {Path(r.source).name: r for r in m.records}


def assert_drops(m, truth):
    for fragment, phrase in truth.dropped.items():
        assert any(fragment in d.source and phrase in d.reason for d in m.dropped), (fragment, phrase, m.dropped)


def test_registered():
    assert READERS.get("fer2013") is scan


@pytest.mark.parametrize("variant", ["fer2013", "icml"])
@pytest.mark.parametrize("split", ["train", "val", "test", "all"])
def test_usage_splits_and_labels(tmp_path, variant, split):
    t = make_fer2013(tmp_path, variant)
    m = scan(tmp_path, split)                 # the folder; the CSV itself works as well (below)
    assert {k: r.label for k, r in keyed(m).items()} == t.of(split)
    assert m.align == "whole"
    for r in m.records:
        px = read_image(r)
        assert px.shape == (48, 48, 3) and px[5, 5, 0] == shade(r.label)  # pixels travel with their own label
    if split in ("train", "all"):
        assert_drops(m, t)


def test_csv_path_and_fer2013_subfolder(tmp_path):
    t = make_fer2013(tmp_path / "fer2013")
    a = scan(tmp_path / "fer2013" / "fer2013.csv", "test")
    b = scan(tmp_path, "test")                # torchvision's root/fer2013/ layout
    assert {k: r.label for k, r in keyed(a).items()} == {k: r.label for k, r in keyed(b).items()} == t.of("test")


def test_label_map_matches_the_kaggle_description():
    from fer_lab.data.readers.fer2013 import LABELS
    from fer_lab.labels import EXPRESSIONS

    assert [EXPRESSIONS[LABELS(i)] for i in range(7)] == ["anger", "disgust", "fear", "happiness", "sadness",
                                                          "surprise", "neutral"]
    assert {i: LABELS(i) for i in range(7)} == KAGGLE_TO_CANON


def test_kaggle_train_test_csv(tmp_path):
    t = make_fer2013(tmp_path, "kaggle")
    m = scan(tmp_path, "train")
    assert {k: r.label for k, r in keyed(m).items()} == t.of("train")
    assert_drops(m, t)
    with pytest.raises(ReaderError, match="test.csv.*no 'emotion' column"):
        scan(tmp_path, "test")
    with pytest.raises(ReaderError, match="no 'val' split"):
        scan(tmp_path, "val")


def test_bad_inputs(tmp_path):
    with pytest.raises(ReaderError, match="no FER2013 CSV found"):
        scan(tmp_path, "train")
    (tmp_path / "fer2013.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ReaderError, match="fer2013.csv: no 'pixels' column"):
        scan(tmp_path, "train")
    (tmp_path / "fer2013.csv").write_text("")
    with pytest.raises(ReaderError, match="empty file"):
        scan(tmp_path, "train")
    (tmp_path / "fer2013.csv").write_text("emotion,pixels\n3,1 2 3\n")
    with pytest.raises(ReaderError, match="no 'Usage' column"):
        scan(tmp_path, "train")
    with pytest.raises(ReaderError, match="no split 'dev'"):
        scan(tmp_path, "dev")


@pytest.mark.parametrize("text, phrase", [("1 2 3", "3 pixel values"), (" ".join(["7"] * 2303 + ["x"]), "'x'"),
                                          (" ".join(["300"] * 2304), "0..255")])
def test_parse_pixels_names_the_problem(text, phrase):
    with pytest.raises(ValueError, match=phrase):
        parse_pixels(text)
    assert parse_pixels(" ".join(["9"] * 2304)).shape == (48, 48)
    assert parse_pixels(" ".join(map(str, range(48))) * 1 + " 0" * (2304 - 48))[0, 47] == 47
