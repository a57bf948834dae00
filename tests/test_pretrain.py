"""``fer-lab pretrain``: the recipe, its cache (keyed, atomic, shared by concurrent builders), determinism, the CLI."""

import dataclasses
import json
import threading

import pytest
import torch

from fer_lab import cli
from fer_lab.models.frozen import build_frozen_encoder
from fer_lab.pretrain import (PRETRAIN_PROFILES, WEIGHTS_FILE, PretrainConfig, load_encoder, pretrain, pretrain_dir,
                              resolve_pretrain, train_recipe)

# seconds, not a useful encoder: 2 domains, 64 faces each, 6 steps at 32 px
MINI = dataclasses.replace(PRETRAIN_PROFILES["tiny"], domains=("synth:lab", "synth:wild"), n_per_domain=64,
                           steps=6, batch_size=16)


def test_profiles_and_keys():
    assert resolve_pretrain("tiny") == ("tiny", PRETRAIN_PROFILES["tiny"])
    assert resolve_pretrain(MINI)[0] == "custom"
    assert resolve_pretrain(dataclasses.replace(MINI))[1].key() == MINI.key()          # a pure function of the fields
    assert dataclasses.replace(MINI, seed=1).key() != MINI.key()
    assert PretrainConfig.from_dict(MINI.to_dict()) == MINI
    with pytest.raises(ValueError, match="unknown pretrain profile 'huge'"):
        resolve_pretrain("huge")
    with pytest.raises(ValueError, match="unknown pretrain field"):
        PretrainConfig.from_dict({"epochs": 3})


def test_recipe_is_deterministic_and_never_reads_expressions(monkeypatch):
    import numpy as np

    import fer_lab.pretrain as recipe_module

    a, summary = train_recipe(MINI, progress=False)
    b, _ = train_recipe(MINI, progress=False)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert summary["identities"] > 2 and summary["images"] == 128 and summary["dim"] == a.out_channels
    c, _ = train_recipe(dataclasses.replace(MINI, seed=1), progress=False)
    assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    # scrambling every expression label changes nothing: the recipe never reads them
    real = recipe_module.load_dataset

    def scrambled(*args, **kwargs):
        arrays = real(*args, **kwargs)
        arrays.labels = np.random.default_rng(7).integers(0, 7, len(arrays.labels))
        return arrays

    monkeypatch.setattr(recipe_module, "load_dataset", scrambled)
    d, _ = train_recipe(MINI, progress=False)
    assert all(torch.equal(v, d.state_dict()[k]) for k, v in a.state_dict().items())


def test_cache_is_reused_and_written_atomically(tmp_path):
    first = pretrain(MINI, progress=False, root=tmp_path)
    assert first.built and first.path == pretrain_dir(MINI, tmp_path) and first.weights.name == WEIGHTS_FILE
    meta = json.loads((first.path / "meta.json").read_text())
    assert meta["key"] == MINI.key() and meta["config"] == MINI.to_dict()
    second = pretrain(MINI, progress=False, root=tmp_path)
    assert not second.built and second.path == first.path
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name, first.path.name + ".lock"]  # no temp left
    # a damaged entry (weights gone) is rebuilt, and so is any entry with force=True
    first.weights.unlink()
    assert pretrain(MINI, progress=False, root=tmp_path).built
    assert pretrain(MINI, progress=False, root=tmp_path, force=True).built
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name, first.path.name + ".lock"]


def test_concurrent_builders_train_once(tmp_path):
    results = []
    cfg = dataclasses.replace(MINI, seed=3)
    threads = [threading.Thread(target=lambda: results.append(pretrain(cfg, progress=False, root=tmp_path)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.built for r in results) == [False, True]
    assert results[0].path == results[1].path


def test_encoder_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path))
    enc = build_frozen_encoder("pretrain:tiny?progress=false")
    assert enc.name == "pretrain:tiny" and enc.input_size == 32 and enc.dim == enc.model.dim
    assert (tmp_path / "pretrain" / f"tiny-smallcnn-{PRETRAIN_PROFILES['tiny'].key()}" / WEIGHTS_FILE).is_file()
    again = load_encoder("tiny", progress=False)
    assert again.digest == enc.digest
    out = enc(torch.rand(2, 3, 64, 64))                   # any input size: resized to the recipe's
    assert out.shape == (2, enc.dim) and torch.isfinite(out).all()


def test_cli_pretrain_prints_where_and_how_long(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path))
    assert cli.main(["pretrain", "--profile", "tiny", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "trained in" in out and str(tmp_path / "pretrain") in out and WEIGHTS_FILE in out
    assert cli.main(["pretrain", "--profile", "tiny", "--no-progress"]) == 0
    assert "found in the cache" in capsys.readouterr().out
