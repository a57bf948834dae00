"""Generalizable FER: channel groups, group-max logits, the drop mask and the diverse loss on constructed tensors;
the method's contract, its frozen encoder and its memo, its checkpoints. (How gen_fer compares with fine-tuned
source-only is a benchmark result: notebooks/05_generalizable_fer.ipynb and benchmarks/bench_encoders.py.)"""

import pytest
import torch

from fer_lab.config import TrainConfig
from fer_lab.methods import build_method
from fer_lab.methods.gen_fer import (GenFER, LinearProbe, channel_drop_mask, diverse_loss, group_max,
                                     group_slices)
from fer_lab.train import Trainer

TINY = {"encoder": "pretrain:tiny"}


# -- channel groups ------------------------------------------------------------------------------------------------
def test_groups_follow_the_released_code_layout():
    groups = group_slices(512)
    assert [(g.start, g.stop) for g in groups] == [(73 * k, 73 * (k + 1)) for k in range(7)]
    assert groups[-1].stop == 511                       # channel 511 lies outside every pooling window
    assert [(g.start, g.stop) for g in group_slices(14)] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14)]
    with pytest.raises(ValueError, match="cannot form 7 groups"):
        group_slices(6)


def test_group_max_logits_on_constructed_tensors():
    z = torch.arange(14.0).view(1, 14)
    assert group_max(z).tolist() == [[1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0]]
    z = torch.zeros(2, 512)
    z[0, 73 * 3 + 5] = 2.0                               # a channel of class 3's group
    z[0, 511] = 100.0                                    # outside every group: never a logit
    z[1, 73 * 6 + 72] = 1.0                              # the last channel of the last group counts
    logits = group_max(z)
    assert logits.shape == (2, 7)
    assert logits[0].tolist() == [0, 0, 0, 2.0, 0, 0, 0] and logits[0].argmax() == 3
    assert logits[1].argmax() == 6
    # the maximum, not the sum: a second, smaller channel in the group changes nothing
    z[0, 73 * 3 + 6] = 1.5
    assert group_max(z)[0, 3] == 2.0


def test_channel_drop_mask_drops_exactly_n_per_group():
    g = torch.Generator().manual_seed(0)
    m = channel_drop_mask(512, 7, 10, generator=g)
    assert m.shape == (1, 512) and set(m.unique().tolist()) == {0.0, 1.0}
    assert (m[0, :511].view(7, 73) == 0).sum(1).tolist() == [10] * 7
    assert m[0, 511] == 1.0
    per_sample = channel_drop_mask(512, 7, 10, batch=4, generator=g)
    assert per_sample.shape == (4, 512)
    assert ((per_sample[:, :511].view(4, 7, 73) == 0).sum(2) == 10).all()
    assert not torch.equal(per_sample[0], per_sample[1])  # one pattern per sample
    assert not torch.equal(channel_drop_mask(512, 7, 10, generator=g), m)  # redrawn at each call
    with pytest.raises(ValueError, match="n_drop"):
        channel_drop_mask(14, 7, 2)


def test_diverse_loss_at_its_extremes():
    g = 73
    assert diverse_loss(torch.zeros(4, 512)).item() == pytest.approx(1.0)      # nothing active: maximal
    z = torch.zeros(4, 512)
    z[:, [73 * k for k in range(7)]] = float(g)                                # every group's maximum = g
    assert diverse_loss(z).item() == pytest.approx(0.0, abs=1e-6)
    assert diverse_loss(torch.full((3, 512), 2.0)).item() == pytest.approx(1 - 2 / g)
    # its gradient reaches only the arg-max channel of each group
    z = torch.rand(2, 512, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    diverse_loss(z).backward()
    nonzero = (z.grad != 0).sum(1)
    assert nonzero.tolist() == [7, 7]
    argmax = z.detach()[:, :511].view(2, 7, 73).argmax(2) + torch.arange(7) * 73
    assert torch.equal(z.grad.nonzero()[:, 1].view(2, 7), argmax)


# -- the method ----------------------------------------------------------------------------------------------------
def _batch(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.rand(n, 3, size, size, generator=g), "landmarks": torch.full((n, 5, 2), size / 2),
            "labels": torch.arange(n) % 7}


def test_gen_fer_contract_and_inference_rules():
    torch.manual_seed(0)
    m = build_method("gen_fer", TINY).eval()
    assert isinstance(m, GenFER) and m.needs_target is False
    b = _batch()
    feats = m.embed(b)
    assert set(feats) == {"frozen", "mask", "masked"}
    e, mask, z = feats["frozen"], feats["mask"], feats["masked"]
    assert e.shape == (6, m.feature_dim) and ((mask > 0) & (mask < 1)).all()
    torch.testing.assert_close(z, e * mask)
    torch.testing.assert_close(m.predict(b), group_max(z))                    # paper: group-max, no FC
    fc = build_method("gen_fer", {**TINY, "head": "fc"}).eval()
    fc.load_state_dict(m.state_dict())
    torch.testing.assert_close(fc.predict(b), m.fc(z))                        # released code: FC(z)
    with pytest.raises(ValueError, match="head must be"):
        build_method("gen_fer", {**TINY, "head": "softmax"})


def test_mask_network_starts_from_the_pretrain_recipe():
    from fer_lab.pretrain import build_backbone_from_recipe

    m = build_method("gen_fer", TINY)
    ref = build_backbone_from_recipe("tiny", progress=False).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in m.mask_net.backbone.state_dict().items())
    assert all(p.requires_grad for p in m.mask_net.parameters())
    with pytest.raises(ValueError, match="mask_init=backbone"):
        build_method("gen_fer", TINY, backbone="resnet18")
    other = build_method("gen_fer", {**TINY, "mask_init": "backbone"}, backbone="smallcnn")
    assert not all(torch.equal(v, ref[k]) for k, v in other.mask_net.backbone.state_dict().items())


def test_frozen_encoder_gets_no_gradient_and_stays_bit_identical(tmp_path):
    cfg = TrainConfig(method="gen_fer", source=("synth:lab",), target=None, eval=("synth:wild",), profile="tiny",
                      steps=8, out_dir=str(tmp_path / "run"), progress=False, hparams=TINY)
    trainer = Trainer(cfg)
    trainer.setup()
    m = trainer.method
    frozen = {k: v.clone() for k, v in m.encoder.state_dict().items()}      # BatchNorm statistics included
    mask_before = {k: v.clone() for k, v in m.mask_net.state_dict().items()}
    result = trainer.fit()
    assert all(p.grad is None and not p.requires_grad for p in m.encoder.parameters())
    assert all(torch.equal(frozen[k], v) for k, v in m.encoder.state_dict().items())
    assert not m.encoder.training
    assert any(not torch.equal(mask_before[k], v) for k, v in m.mask_net.state_dict().items())  # it did train
    logs = [h for h in result.history if "loss" in h]
    assert logs and {"fc", "sep", "div", "mask_mean"} <= set(logs[-1])
    assert set(result.final) == {"synth:wild"}


def test_checkpoints_leave_out_the_frozen_weights_and_check_their_digest():
    m = build_method("gen_fer", TINY)
    sd = m.state_dict()
    assert not any(k.startswith("encoder.") for k in sd) and "encoder_digest" in sd
    fresh = build_method("gen_fer", TINY)
    fresh.load_state_dict(sd)
    assert all(torch.equal(v, sd[k]) for k, v in fresh.state_dict().items())
    bad = dict(sd, encoder_digest=torch.zeros_like(sd["encoder_digest"]))
    with pytest.raises(ValueError, match="another frozen encoder"):
        fresh.load_state_dict(bad)


def test_linear_probe_trains_only_its_classifier():
    torch.manual_seed(0)
    m = build_method("linear_probe", TINY)
    assert isinstance(m, LinearProbe) and m.needs_target is False
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.weight", "classifier.bias"]
    b = _batch()
    before = m.classifier.weight.clone()
    logs = m.update(b, None, 0.0)
    assert set(logs) >= {"loss", "src_acc"} and not torch.equal(before, m.classifier.weight)
    assert m.predict(b).shape == (6, 7)
    assert isinstance(m.optimizer, torch.optim.Adam)


# -- the domain-generalisation protocol ----------------------------------------------------------------------------
def test_dg_summary_and_tables():
    from fer_lab.evaluate import dg_rows, dg_summary, dg_table_rows

    rep = lambda a: {"acc": a, "mean_class_acc": a / 2}  # noqa: E731
    final = {"synth:lab?n=50": rep(0.9), "target": rep(0.4), "synth:wild": rep(0.4), "synth:lowres": rep(0.2)}
    s = dg_summary(final, ["synth:lab"], {"target": "synth:wild?n=50"})
    assert s["seen"] == ["synth:lab"] and s["unseen"] == ["synth:wild", "synth:lowres"]   # the target kept once
    assert s["mean_unseen"] == pytest.approx(0.3)
    rows = dg_rows(final, ["synth:lab"], {"target": "synth:wild"})
    assert [r["domain"] for r in rows] == ["synth:lab", "synth:wild", "synth:lowres", "mean over unseen"]
    assert rows[0]["role"] == "source (seen)" and rows[-1]["mean class"] == pytest.approx(0.15)
    wide = dg_table_rows({"gen_fer": final}, ["synth:lab"], {"target": "synth:wild"})
    assert list(wide[0]) == ["method", "synth:lab (source)", "synth:wild", "synth:lowres", "mean unseen"]


def test_cli_train_reports_the_dg_table(tmp_path, capsys):
    from fer_lab import cli

    code = cli.main(["train", "--method", "gen_fer", "--source", "synth:lab", "--eval", "synth:wild,synth:lowres",
                     "--profile", "tiny", "--steps", "4", "--n-test", "64", "--hp", "encoder=pretrain:tiny",
                     "--no-progress", "--out-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0
    assert "domain generalisation: no target data" in out and "mean over unseen" in out
    results = __import__("json").loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["final"]) == {"synth:lab", "synth:wild", "synth:lowres"}   # source column + unseen, wild once
    assert results["config"]["target"] is None


# -- the default encoder and the feature memo ------------------------------------------------------------------------
def test_default_encoder_is_dlibs_face_resnet_with_a_memo():
    from fer_lab.methods.gen_fer import GenFERHparams

    assert GenFERHparams().encoder == "dlib:face_resnet?feature=pooled"
    m = build_method("gen_fer", {"mask_init": "backbone"}, backbone="smallcnn")   # no pretrain recipe needed
    assert m.feature_dim == 256 and m.group_size == 36 and m.n_drop == round(10 / 73 * 36)
    assert isinstance(m.mask_net.proj, torch.nn.Linear)                       # smallcnn's 128 channels -> 256
    b = _batch(size=64)
    hits = m.encoder.memo.hits
    logs = m.update(b, None, 0.0)
    m.update(b, None, 0.1)                                                      # the same faces: served by the memo
    assert m.encoder.memo.hits >= hits + 6 and all(v == v for v in logs.values())
    off = build_method("linear_probe", {"encoder": "pretrain:tiny", "memo_features": False})
    assert off.encoder.memo is None


def test_gen_fer_on_a_local_clip_tower(tmp_path, monkeypatch):
    """The paper's set-up with a tiny CLIP saved here: CLIP features masked by a network from the pretrain recipe."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    monkeypatch.setenv("FER_LAB_PROFILE", "tiny")          # mask_init=pretrain with a CLIP encoder: the auto recipe
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
        projection_dim=28)).save_pretrained(tmp_path / "clip")
    m = build_method("gen_fer", {"encoder": f"clip:{tmp_path / 'clip'}"})
    assert m.feature_dim == 28 and m.group_size == 4 and isinstance(m.mask_net.proj, torch.nn.Linear)
    logs = m.update(_batch(), None, 0.0)
    assert all(v == v for v in logs.values())            # finite losses
    assert m.predict(_batch()).shape == (6, 7)


def test_gen_fer_resumes_to_the_same_result(tmp_path):
    """Checkpoints without the frozen weights still resume exactly (the drop masks' RNG travels with them)."""

    class Stop:
        def on_step(self, trainer, step, logs):
            if step == 5:
                raise KeyboardInterrupt

    def cfg(name, **kw):
        return TrainConfig(method="gen_fer", source=("synth:lab",), target=None, eval=("synth:wild",), profile="tiny",
                           steps=8, checkpoint_every=4, n_train=64, n_test=32, out_dir=str(tmp_path / name),
                           progress=False, hparams=TINY, **kw)

    full = Trainer(cfg("full")).fit().final
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg("killed"), callbacks=[Stop()]).fit()
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["step"] == 4
    assert Trainer(cfg("killed", resume=True)).fit().final == full
