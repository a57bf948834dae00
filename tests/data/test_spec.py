import pytest

from fer_lab.data.spec import DatasetSpec, SpecError, load_dataset, parse_spec, resolve_path


def test_parse_full_spec():
    s = parse_spec("synth:wild?n=4000&size=112&split=test&noisy=true&rate=0.5")
    assert s == DatasetSpec("synth", "wild", {"n": 4000, "size": 112, "split": "test", "noisy": True, "rate": 0.5})
    assert parse_spec(str(s)) == s


def test_parse_path_spec_keeps_colons_in_path():
    s = parse_spec("rafdb:/data/RAF-DB/basic?split=train")
    assert (s.name, s.arg, s.split) == ("rafdb", "/data/RAF-DB/basic", "train")


def test_for_split_does_not_override_a_pinned_split():
    assert parse_spec("synth:lab").for_split("test").split == "test"
    assert parse_spec("synth:lab?split=all").for_split("test").split == "all"


@pytest.mark.parametrize("bad, match", [
    ("lab", "no 'name:' prefix"),
    ("", "non-empty"),
    ("synth:lab?n", "not key=value"),
    ("synth:lab?n=1&n=2", "given twice"),
    ("synth:lab?split=dev", "split 'dev'"),
])
def test_malformed_specs(bad, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(bad)


def test_unknown_dataset_and_parameter():
    with pytest.raises(KeyError, match="unknown dataset 'nope'; known datasets: .*synth"):
        load_dataset("nope:x")
    with pytest.raises(ValueError, match="bogus_knob_xyz"):
        load_dataset("synth:lab?bogus_knob_xyz=1&n=8&size=32")


def test_relative_paths_resolve_under_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FER_LAB_DATA", str(tmp_path))
    assert resolve_path("RAF-DB") == tmp_path / "RAF-DB"
    assert resolve_path("/abs/x").as_posix() == "/abs/x"


def test_load_dataset_applies_defaults_only_where_unset():
    d = load_dataset("synth:lab?n=20", split="test", defaults={"n": 99, "size": 32})
    assert len(d) == 20 and d.images.shape[1:3] == (32, 32)


def test_split_specs_keeps_knob_ranges_inside_their_spec():
    from fer_lab.data.spec import split_specs

    assert split_specs("synth:lab?blur=0,1,synth:wild") == ("synth:lab?blur=0,1", "synth:wild")
    assert split_specs("synth:lab?lighting=0.1,0.6&noise=0,0.03") == ("synth:lab?lighting=0.1,0.6&noise=0,0.03",)
    assert split_specs("synth:lab,rafdb:/d/RAF-DB,") == ("synth:lab", "rafdb:/d/RAF-DB")
    assert split_specs(("a:1", "b:2")) == ("a:1", "b:2")
