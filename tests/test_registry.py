import pytest

from fer_lab.registry import Registry, RegistryError


def test_register_get_and_list():
    r = Registry("widget")

    @r.register("b")
    def b():
        return 2

    r.register("a", 1)
    assert r.get("b") is b and r.get("a") == 1
    assert r.names() == ["a", "b"] and "a" in r and len(r) == 2


def test_duplicate_rejected():
    r = Registry("widget")
    r.register("a", 1)
    with pytest.raises(RegistryError, match="widget 'a' is already registered"):
        r.register("a", 2)
    assert r.get("a") == 1


def test_unknown_names_known_ones():
    r = Registry("method")
    r.register("dann", 1)
    r.register("cdan", 2)
    with pytest.raises(RegistryError) as e:
        r.get("dan")
    assert str(e.value) == "unknown method 'dan'; known methods: cdan, dann"


def test_project_registries_are_populated():
    from fer_lab.data.spec import DATASETS, _ensure_builtin_datasets
    from fer_lab.methods import METHODS
    from fer_lab.models import BACKBONES

    _ensure_builtin_datasets()
    assert {"source_only", "dann", "cdan"} <= set(METHODS)
    assert {"smallcnn", "resnet18", "resnet50", "ir50"} <= set(BACKBONES)
    assert "synth" in DATASETS
