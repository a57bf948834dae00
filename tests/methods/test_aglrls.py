import pytest
import torch

from fer_lab.labels import STREAMS
from fer_lab.methods import build_method
from fer_lab.methods.aglrls import FUSED, GLOBAL, GLPC_RULES, AGLRLSHparams, glpc

from conftest import cut_and_resume, synth_pair


def _probs(rows):
    """[S, B, C] from per-stream lists of probability rows."""
    return torch.tensor(rows, dtype=torch.float32)


def _streams(fused, global_, local):
    out = [None] * len(STREAMS)
    out[FUSED], out[GLOBAL] = fused, global_
    for i in range(len(STREAMS)):
        if out[i] is None:
            out[i] = local
    return _probs(out)


def test_glpc_rule_order_fused_then_global_then_sum():
    sigma = torch.zeros(7, 3)                  # every threshold 0.95 / 4 = 0.2375 on the first two rules
    # the fused stream clears its threshold -> it decides (class 2) although the global stream says class 0
    probs = _streams(fused=[[0.1, 0.1, 0.8]], global_=[[0.9, 0.05, 0.05]], local=[[0.0, 1.0, 0.0]])
    pred, rule, _ = glpc(probs, sigma)
    assert pred.tolist() == [2] and GLPC_RULES[rule[0]] == "fused"

    sigma = torch.zeros(7, 3)
    sigma[FUSED] = 1.0                         # fused needs 0.95 now
    probs = _streams(fused=[[0.1, 0.1, 0.8]], global_=[[0.9, 0.05, 0.05]], local=[[0.0, 1.0, 0.0]])
    pred, rule, _ = glpc(probs, sigma)
    assert pred.tolist() == [0] and GLPC_RULES[rule[0]] == "global"

    sigma[GLOBAL] = 1.0                        # neither clears 0.95 -> thresholded sum over all streams
    pred, rule, scores = glpc(probs, sigma)
    # the sum keeps p_i(k) >= sigma_i(k): fused and global rows are all below sigma = 1; locals (sigma 0) keep class 1
    assert pred.tolist() == [1] and GLPC_RULES[rule[0]] == "sum"
    assert torch.allclose(scores.sum(1), torch.ones(1))


def test_glpc_fallback_with_nothing_kept_predicts_class_zero():
    probs = torch.full((7, 2, 4), 0.25)
    sigma = torch.full((7, 4), 0.9)            # thresholds 0.95 * 0.9025 and raw sigma 0.9 keep nothing
    pred, rule, scores = glpc(probs, sigma)
    assert pred.tolist() == [0, 0] and rule.tolist() == [2, 2]
    assert torch.allclose(scores, torch.full((2, 4), 0.25))


def test_glpc_per_class_threshold_of_the_predicted_class():
    sigma = torch.zeros(7, 3)
    sigma[FUSED, 2] = 1.0                      # only class 2 is hard for the fused stream
    probs = _streams(fused=[[0.1, 0.1, 0.8], [0.1, 0.8, 0.1]], global_=[[0.9, 0.05, 0.05]] * 2,
                     local=[[1 / 3] * 3] * 2)
    pred, rule, _ = glpc(probs, sigma)
    assert pred.tolist() == [0, 1] and rule.tolist() == [1, 0]


def test_heads_and_discriminators_paper_and_released_code():
    paper = build_method("aglrls")
    assert len(paper.heads) == 7 and len(paper.discriminators) == 7
    shared = build_method("aglrls", {"shared_heads": True})
    assert sorted(shared.heads) == ["fused", "global", "local"] and len(shared.discriminators) == 3
    d = paper.hp.feat_dim
    assert paper.discriminators["fused"][0].in_features == 6 * d * 7
    assert paper.discriminators["nose"][0].in_features == d * 7
    glob = build_method("aglrls", {"local_streams": False})
    assert glob.streams == ("global",) and list(glob.heads) == ["global"]


def test_hparams_validation():
    with pytest.raises(ValueError, match="stage2_weights needs 7 weights"):
        AGLRLSHparams(stage2_weights=(7, 1, 7))
    with pytest.raises(ValueError, match="threshold must be"):
        AGLRLSHparams(threshold="adaptive")
    hp = AGLRLSHparams.from_dict({"stage1_weights": [1, 1, 1, 1, 1, 1, 1]})
    assert hp.stage1_weights == (1.0,) * 7


@pytest.fixture(scope="module")
def tiny():
    from fer_lab.data.loading import Augment

    src, tgt = synth_pair(n=64, seed=3, split="train")
    s = src.batch(torch.arange(32))
    g = torch.Generator().manual_seed(0)
    t = tgt.batch(torch.arange(32), Augment.weak(), g, Augment.strong())
    t["true_labels"], t["labels"] = t["labels"], torch.full_like(t["labels"], -1)
    return s, t


def test_stage_one_then_two_and_diagnostics(tiny):
    torch.manual_seed(0)
    m = build_method("aglrls", {"stage1_fraction": 0.5})
    m.setup_data([64], 64, 32)
    s, t = tiny
    logs1 = m.update(s, t, 0.1)
    assert logs1["stage"] == 1.0 and "sal" not in logs1
    assert all(p.grad is None for p in m.discriminators.parameters())   # stage 1 never touches D
    logs2 = m.update(s, t, 0.6)
    assert logs2["stage"] == 2.0 and {"scl", "sal", "pl", "mask_fused", "tau_fused", "pl_hit_fused"} <= set(logs2)
    assert any(p.grad is not None for p in m.discriminators.parameters())
    d = m.last_pseudo
    assert d["mask"].shape == (7, 32) and d["thresholds"].shape == (7, 7) and d["confidence"].shape == (7, 32)
    m.eval()
    with torch.no_grad():
        assert m.predict(s).shape == (32, 7)
        det = m.predict_details(s)
    assert det["probs"].shape == (7, 32, 7) and set(det["rule"].unique().tolist()) <= {0, 1, 2}
    assert torch.equal(det["prediction"], m.predict(s).argmax(1))


def test_store_resets_every_target_epoch(tiny):
    torch.manual_seed(0)
    m = build_method("aglrls", {"stage1_fraction": 0.0})
    m.setup_data([64], 64, 32)                  # 64 target samples, batch 32: 2 steps per target epoch
    s, t = tiny                                 # the batch holds rows 0..31
    m.update(s, t, 0.0)                         # first transfer step: store reset, then filled from the batch
    m.pseudo_store.selected[:, 40:45] = 3       # rows outside the batch, as if stored earlier this epoch
    m.update(s, t, 0.1)                         # second step, same epoch: kept
    assert (m.pseudo_store.selected[:, 40:45] == 3).all()
    m.update(s, t, 0.2)                         # third step opens epoch 2: reset before the batch
    assert (m.pseudo_store.selected[:, 32:] == -1).all()
    assert int(m.transfer_steps) == 3


def test_ablation_without_pseudo_labels_skips_the_strong_view(tiny):
    torch.manual_seed(0)
    m = build_method("aglrls", {"stage1_fraction": 0.0, "pseudo_labels": False})
    m.setup_data([64], 64, 32)
    s, t = tiny
    t = {k: v for k, v in t.items() if not k.startswith("strong")}
    logs = m.update(s, t, 0.5)                  # would fail with a KeyError if the strong view were used
    assert logs["pl"] == 0.0
    assert m.pseudo_store.sigma.shape == (7, 7)  # the learning effect is still kept for GLPC


def test_inference_fused_is_the_fused_head(tiny):
    torch.manual_seed(0)
    m = build_method("aglrls", {"inference": "fused"}).eval()
    s, _ = tiny
    with torch.no_grad():
        assert torch.equal(m.predict(s), m.logits(m.features(s))["fused"])


def test_stage_two_from_a_stage_one_run_and_ablation_init(tmp_path):
    from fer_lab.config import TrainConfig
    from fer_lab.train import Trainer

    base = dict(method="aglrls", profile="tiny", steps=4, n_train=64, n_test=32, batch_size=16, progress=False)
    s1 = Trainer(TrainConfig(**base, hparams={"stage1_fraction": 1.0}, out_dir=str(tmp_path / "s1"))).fit()
    for hp in ({}, {"local_streams": False}):   # the global-only ablation starts from the 7-head stage 1
        t = Trainer(TrainConfig(**base, hparams={"stage1_fraction": 0.0, **hp}, init_from=str(s1.out_dir),
                                out_dir=str(tmp_path / f"s2{len(hp)}")))
        t.setup()
        start = torch.load(s1.out_dir / "checkpoint.pt", weights_only=True)["method"]
        assert torch.equal(t.method.heads["global"].weight, start["heads.global.weight"])
        assert int(t.method.transfer_steps) == 0 and t.method.pseudo_store.num_samples == 64
        assert t.fit().final["target"]["n"] == 32
    shared = TrainConfig(**base, hparams={"stage1_fraction": 0.0, "shared_heads": True}, init_from=str(s1.out_dir),
                         out_dir=str(tmp_path / "shared"))
    with pytest.raises(ValueError, match="lacks 8 weight.*heads.local.weight, heads.local.bias, discriminators.local"):
        Trainer(shared).setup()


def test_resume_mid_stage_two_equals_uninterrupted(tmp_path):
    """The pseudo-label store, its epoch counter and sigma travel with the checkpoint: a run interrupted in stage 2
    and resumed ends with the weights, store and GLPC sigma of an uninterrupted one."""
    from fer_lab.config import TrainConfig

    def cfg(out, **kw):
        return TrainConfig(method="aglrls", profile="tiny", steps=12, n_train=64, n_test=32, batch_size=16,
                           checkpoint_every=4, eval_every=12, log_every=2, progress=False, out_dir=str(out),
                           hparams={"stage1_fraction": 0.25, "p_cutoff": 0.3}, **kw)

    # cut after the step-8 checkpoint, mid stage 2 (epoch 2 of the target)
    full, resumed, a, b = cut_and_resume(cfg, tmp_path, stop_at=10)
    assert resumed.final == full.final
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (a["pseudo_store.selected"] >= 0).any()     # the store was used (p_cutoff lowered for a tiny run)
    assert int(a["transfer_steps"]) == 9
