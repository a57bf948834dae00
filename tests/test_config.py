import pytest

from fer_lab.config import PROFILES, TrainConfig


def test_profile_fills_unset_values_and_keeps_explicit_ones():
    cfg = TrainConfig(profile="smoke", steps=7).resolved()
    assert cfg.steps == 7
    assert cfg.batch_size == PROFILES["smoke"]["batch_size"] and cfg.image_size == PROFILES["smoke"]["image_size"]


def test_auto_profile_on_cpu_is_smoke(monkeypatch):
    import torch

    monkeypatch.delenv("FER_LAB_PROFILE", raising=False)
    expected = "full" if torch.cuda.is_available() else "smoke"
    assert TrainConfig(profile="auto").resolved().profile == expected


def test_comma_separated_sources():
    cfg = TrainConfig(source="synth:lab,synth:lowres").resolved()
    assert cfg.source == ("synth:lab", "synth:lowres")


@pytest.mark.parametrize("bad, match", [
    (dict(profile="huge"), "unknown profile 'huge'"),
    (dict(steps=0), "steps must be positive"),
    (dict(image_size=60), "multiple of 16"),
    (dict(source=()), "at least one source"),
])
def test_bad_values_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad).resolved()


def test_auto_profile_follows_environment(monkeypatch):
    monkeypatch.setenv("FER_LAB_PROFILE", "tiny")
    assert TrainConfig(profile="auto").resolved().profile == "tiny"
    monkeypatch.setenv("FER_LAB_PROFILE", "bogus")
    with pytest.raises(ValueError, match="unknown profile 'bogus'"):
        TrainConfig(profile="auto").resolved()


def test_a_knob_range_in_a_source_spec_is_not_split():
    cfg = TrainConfig(source="synth:lab?blur=0,1,synth:lowres", target=None).resolved()
    assert cfg.source == ("synth:lab?blur=0,1", "synth:lowres")
