import numpy as np
import pytest
import torch

from fer_lab.methods import METHODS, build_method
from fer_lab.methods.base import Hparams
from fer_lab.methods.cdan import CDANHparams
from fer_lab.methods.dann import DANNHparams

from conftest import synth_pair

BASELINES = ["source_only", "dann", "cdan", "iwdan"]


@pytest.fixture(scope="module")
def tiny():
    src, tgt = synth_pair(n=64, seed=3, split="train")
    s = src.batch(torch.arange(32))
    t = tgt.batch(torch.arange(32))
    t["labels"] = torch.full_like(t["labels"], -1)
    return s, t


@pytest.mark.parametrize("name", BASELINES)
def test_update_decreases_loss(name, tiny):
    torch.manual_seed(0)
    method = build_method(name, {"lr": 0.02})
    s, t = tiny
    logs = [method.update(s, t if method.needs_target else None, i / 40) for i in range(40)]
    first = np.mean([l["loss"] for l in logs[:5]])
    last = np.mean([l["loss"] for l in logs[-5:]])
    assert last < 0.7 * first, (first, last)
    assert logs[-1]["cls"] < logs[0]["cls"]
    assert all(np.isfinite(list(l.values())).all() for l in logs)


@pytest.mark.parametrize("name", BASELINES)
def test_contract_shapes_and_multi_source(name, tiny):
    torch.manual_seed(0)
    method = build_method(name)
    s, t = tiny
    half = [{k: v[:16] for k, v in s.items()}, {k: v[16:] for k, v in s.items()}]
    logs = method.update(half, t, 0.5)  # a list of source batches is accepted
    assert "loss" in logs and all(isinstance(v, float) for v in logs.values())
    method.eval()
    with torch.no_grad():
        assert method.predict(s).shape == (32, 7)
        feats = method.embed(s)
    assert set(feats) == {"global", "left_eye", "right_eye", "nose", "mouth_left", "mouth_right", "fused"}
    assert feats["fused"].shape == (32, 6 * method.hp.feat_dim)


def test_adversarial_methods_touch_the_discriminator(tiny):
    torch.manual_seed(0)
    for name in ("dann", "cdan", "iwdan"):
        m = build_method(name)
        before = [p.detach().clone() for p in m.discriminator.parameters()]
        m.update(tiny[0], tiny[1], 0.5)
        assert any(not torch.equal(a, b) for a, b in zip(before, m.discriminator.parameters()))
        assert {"adv", "disc_acc", "grl_coeff"} <= set(m.update(tiny[0], tiny[1], 0.5))


def test_cdan_discriminator_sees_multilinear_map():
    m = build_method("cdan")
    assert m.discriminator[0].in_features == m.feature_dim * 7
    r = build_method("cdan", {"randomized": True, "randomized_dim": 256})
    assert r.discriminator[0].in_features == 256


def test_discriminator_variant_follows_hparams():
    default = build_method("dann")  # CDAN's AdversarialNetwork: dropout 0.5, no BatchNorm
    assert [type(m).__name__ for m in default.discriminator] == ["Linear", "ReLU", "Dropout"] * 2 + ["Linear"]
    tllib = build_method("cdan", {"disc_batch_norm": "true", "disc_dropout": "0", "disc_hidden": 64})
    assert [type(m).__name__ for m in tllib.discriminator] == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]
    assert tllib.discriminator[0].out_features == 64


def test_hparams_typed_unknown_and_cli_strings():
    hp = DANNHparams.from_dict({"adv_weight": "0.5", "nesterov": "false", "feat_dim": "32"})
    assert hp.adv_weight == 0.5 and hp.nesterov is False and hp.feat_dim == 32
    with pytest.raises(ValueError, match="unknown hyper-parameter.*advweight"):
        DANNHparams.from_dict({"advweight": 1})
    with pytest.raises(ValueError, match="feature 'eyes' is not a stream"):
        build_method("source_only", {"feature": "eyes"})


def test_hparam_sampling_is_seeded():
    a, b, c = CDANHparams.sample(1), CDANHparams.sample(1), CDANHparams.sample(2)
    assert a == b and a != c
    assert 10 ** -2.5 <= a.lr <= 10 ** -0.7
    assert Hparams.sample(1, lr=0.5).lr == 0.5


def test_registry_lists_baselines_and_rejects_unknown():
    assert set(BASELINES) <= set(METHODS)
    with pytest.raises(KeyError, match="unknown method 'danm'; known methods: .*cdan, dann"):
        build_method("danm")


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"gen_fer", "linear_probe"}))
def test_every_registered_method_keeps_the_contract(name, tiny):
    """One update returns finite float losses including "loss"; predict gives [B, 7]; embed names [B, d] features.
    (gen_fer and linear_probe need a frozen encoder: tests/methods/test_gen_fer.py.)"""
    torch.manual_seed(0)
    method = build_method(name)
    method.setup_data([64], 64, 32)
    s, t = tiny
    if getattr(method, "wants_strong_view", False):
        t = {**t, "strong": t["images"].flip(-1), "strong_landmarks": t["landmarks"]}
    logs = method.update(s, t if method.needs_target else None, 0.5)
    assert "loss" in logs and all(isinstance(v, float) and np.isfinite(v) for v in logs.values()), logs
    method.eval()
    with torch.no_grad():
        assert method.predict(s).shape == (32, 7)
        feats = method.embed(s)
    assert feats and all(f.shape[0] == 32 for f in feats.values())
