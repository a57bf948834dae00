"""pose_ada: shapes of the codes and the decoder, the reversed cross-adversarial gradients, reconstruction, the
pose bins and same-subject pairs, the switches, and a run through the trainer."""

import math

import pytest
import torch

from fer_lab.methods import build_method
from fer_lab.methods.pose_ada import PoseADA, same_subject_partners, yaw_bins
from fer_lab.models import grl_warmup


def batch(b=8, size=32, subjects=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.rand(b, 3, size, size, generator=g), "landmarks": torch.full((b, 5, 2), size / 2),
            "labels": torch.randint(0, 7, (b,), generator=g), "pose": (torch.rand(b, 3, generator=g) - 0.5) * 140,
            "subject": torch.zeros(b, dtype=torch.int64) if subjects is None else subjects,
            "domain": torch.zeros(b, dtype=torch.int64), "index": torch.arange(b)}


def make(**hp):
    torch.manual_seed(0)
    return build_method("pose_ada", {"feat_dim": 16, **hp})


def test_registered_and_shapes_as_documented():
    m = make(expr_dim=24, pose_dim=12, recon_size=16)
    assert make().expr_dim == 96                                    # 0: the fused feature's size (6 x 16)
    assert isinstance(m, PoseADA) and m.num_pose_bins == 5
    x = batch()
    emb = m.embed(x)
    assert emb["expr"].shape == (8, 24) and emb["pose"].shape == (8, 12) and emb["fused"].shape == (8, 96)
    assert m.predict(x).shape == (8, 7)
    assert m.reconstruct(x).shape == (8, 3, 16, 16)
    swap = m.reconstruct(x, pose_from=torch.arange(8).flip(0))
    assert swap.shape == (8, 3, 16, 16)
    e, p = m.codes(x)
    torch.testing.assert_close(swap, m.decoder(e, p.flip(0)))


def test_yaw_bins_on_constructed_poses():
    pose = torch.tensor([[-70.0, 0, 0], [0, 0, 0], [14.9, 5, 0], [15, 0, 0], [44, 0, 0], [-45, 0, 0],
                         [float("nan"), 0, 0], [90, 0, 0]])
    assert yaw_bins(pose, torch.tensor([15.0, 30, 45, 60])).tolist() == [4, 0, 0, 1, 2, 3, -1, 4]


def test_same_subject_partners():
    subject = torch.tensor([7, 3, 7, 7, 9, 3, 1])
    part = same_subject_partners(subject, torch.Generator().manual_seed(1))
    assert torch.equal(subject[part], subject)                    # same person
    assert sorted(part.tolist()) == list(range(7))                # a permutation: every face is used once
    alone = part == torch.arange(7)
    assert alone.tolist() == [False, False, False, False, True, False, True]   # only subjects 9 and 1 are alone


def test_cross_adversarial_gradients_reach_the_encoder_reversed():
    m = make()
    x = batch(seed=3)
    progress = 0.4
    coeff = grl_warmup(progress, 10.0)
    bins, labels = m.pose_labels(x), x["labels"]

    def grads(reverse: bool):
        m.zero_grad(set_to_none=True)
        e, p = m.codes(x)
        if reverse:
            pe, ep = m.cross_adversarial(e, bins, p, labels, progress)
        else:  # the same losses without the reversal layers
            pe = torch.nn.functional.cross_entropy(m.pose_from_expr(e), bins)
            ep = torch.nn.functional.cross_entropy(m.expr_from_pose(p), labels)
        (pe + ep).backward()
        return {k: v.grad.clone() for k, v in m.named_parameters() if v.grad is not None}

    rev, plain = grads(True), grads(False)
    for name in ("expr_head.0.weight", "pose_head.0.weight", "extractor.backbone.stage1.0.0.weight"):
        assert name in rev, sorted(rev)
        torch.testing.assert_close(rev[name], -coeff * plain[name], rtol=1e-4, atol=1e-7)
        assert plain[name].abs().sum() > 0
    for name in ("pose_from_expr.weight", "expr_from_pose.weight"):     # the predictors themselves descend
        torch.testing.assert_close(rev[name], plain[name])


def test_reconstruction_loss_falls_on_a_tiny_problem():
    m = make(adv_expr_weight=0, adv_pose_weight=0, cross_pose_weight=0, cross_expr_weight=0, pose_weight=0,
             recon_size=16, lr=0.05)
    g = torch.Generator().manual_seed(0)
    src, tgt = batch(8, seed=1), batch(8, seed=2)
    for b in (src, tgt):  # smooth images: blobs a 16 px decoder can draw
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
        c = torch.rand(8, 3, 1, 1, generator=g)
        b["images"] = (c * torch.exp(-(xx ** 2 + yy ** 2) * 3)).expand(8, 3, 32, 32).contiguous()
    m.train()
    losses = [m.update(src, tgt, 0.0)["recon"] for _ in range(40)]
    assert losses[-1] < 0.6 * losses[0], losses[::8]


def test_update_contract_and_switches():
    m = make()
    logs = m.update([batch(4, seed=1), batch(4, seed=2)], batch(8, seed=3), 0.3)   # two sources, pooled
    expected = {"loss", "cls", "pose", "adv", "adv_expr", "adv_pose", "cross_pose", "cross_expr", "recon", "src_acc",
                "grl_coeff", "disc_acc_expr", "disc_acc_pose"}
    assert set(logs) == expected and all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    off = make(adv_expr_weight=0, adv_pose_weight=0, cross_pose_weight=0, cross_expr_weight=0, recon_weight=0,
               pose_weight=0)
    logs = off.update(batch(seed=1), batch(seed=2), 0.3)
    assert "disc_acc_expr" not in logs and "disc_acc_pose" not in logs
    assert logs["adv"] == logs["cross_pose"] == logs["cross_expr"] == logs["recon"] == logs["pose"] == 0.0
    assert logs["loss"] == pytest.approx(logs["cls"])
    # target poses: used by the pose terms only with target_pose=true
    tp = make(target_pose=True)
    src, tgt = batch(seed=1), batch(seed=2)
    tgt["pose"][:] = float("nan")
    assert math.isfinite(tp.update(src, tgt, 0.5)["pose"])


def test_bad_hparams_are_named():
    with pytest.raises(ValueError, match="yaw_bins"):
        make(yaw_bins="30,15")
    with pytest.raises(ValueError, match="recon_norm"):
        make(recon_norm="l3")
    with pytest.raises(ValueError, match="recon_on"):
        make(recon_on="none")
    with pytest.raises(ValueError, match="power of two"):
        make(recon_size=24)


def test_trains_through_the_trainer_and_reloads(tmp_path, monkeypatch):
    from fer_lab.train import load_run, train

    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    r = train(method="pose_ada", source=("synth:lab?yaw=0,60&n=64",), target="synth:wild?subject=1&n=32",
              profile="tiny", steps=3, eval_every=3, checkpoint_every=3, log_every=1, progress=False,
              out_dir=str(tmp_path / "run"), hparams={"feat_dim": 16})
    assert 0.0 <= r.target_acc() <= 1.0 and r.history[0]["recon"] > 0
    method, cfg = load_run(r.out_dir)
    assert isinstance(method, PoseADA) and cfg.target == "synth:wild?subject=1&n=32"


def test_from_a_source_only_stage1_it_predicts_as_that_model():
    torch.manual_seed(1)
    stage1 = build_method("source_only", {"feat_dim": 16})
    m = make()
    missing, unexpected = m.load_state_dict(m.initial_state(stage1.state_dict()), strict=False)
    assert not unexpected and all(k.startswith(PoseADA.fresh_on_init) for k in missing)
    assert not any(k.startswith("classifier.") for k in missing)           # the stage-1 classifier loads
    x = batch(seed=5)
    stage1.eval(), m.eval()
    torch.testing.assert_close(m.predict(x), stage1.predict(x))
    small = make(expr_dim=24)                                             # a fresh projection: its classifier is new
    missing, _ = small.load_state_dict(small.initial_state(stage1.state_dict()), strict=False)
    assert "classifier.weight" in missing


def test_param_groups_cover_every_parameter_once_with_the_new_modules_at_head_lr_mult():
    m = build_method("pose_ada", {"head_lr_mult": 10.0, "disc_lr_mult": 2.0, "lr": 0.01})
    groups = m.build_optimizer().param_groups
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in m.parameters() if p.requires_grad])
    new = {id(p) for name in m.new_modules for p in getattr(m, name).parameters()}
    disc = {id(p) for p in [*m.disc_expr.parameters(), *m.disc_pose.parameters()]}
    by_lr = {}
    for g in groups:
        by_lr.setdefault(round(g["lr"], 6), set()).update(id(p) for p in g["params"])
    assert by_lr[0.1] == new and by_lr[0.02] == disc
    assert {id(p) for p in m.classifier.parameters()} <= by_lr[0.01]      # loaded from stage 1: the trunk's rate
