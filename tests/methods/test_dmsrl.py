import math

import pytest
import torch

from fer_lab.methods import build_method
from fer_lab.methods.dmsrl import (DMSRLHparams, FeatureSplit, MarginHistory, center_feature_sets, center_spread,
                                   margin_center_loss, nearest_center_accuracy, ramp)
from fer_lab.models.regions import fixed_regions, region_boxes

from conftest import cut_and_resume, synth_pair


# ---------------------------------------------------------------------------------------------------------------------
# the margin-sensitive centre loss on constructed features
# ---------------------------------------------------------------------------------------------------------------------
def _centres(scale: float, k: int = 3, d: int = 4) -> torch.Tensor:
    """k centres on the axes, scale * e_i: every pairwise squared distance is 2 scale^2."""
    return scale * torch.eye(k, d)


def test_spread_is_the_code_normalisation():
    c = _centres(2.0)                                   # 3 pairs at squared distance 8
    assert center_spread(c).item() == pytest.approx(3 * 8 / (3 * 2))
    c = torch.tensor([[0.0, 0.0], [3.0, 4.0]])          # one pair, squared distance 25, K (K - 1) = 2
    assert center_spread(c).item() == pytest.approx(12.5)


def test_intra_zero_at_the_centres_and_half_squared_distance_off_them():
    c = _centres(10.0)
    y = torch.tensor([0, 1, 2, 1])
    out = margin_center_loss(c[y], y, c[y], y, c, c.clone(), margin=100.0)
    assert out["intra_s"].item() == 0.0 and out["intra_t"].item() == 0.0
    shifted = c[y] + torch.tensor([1.0, 0, 0, 0])       # every row one unit off its centre: 1/2 mean 1
    out = margin_center_loss(shifted, y, c[y], y, c, c, margin=100.0)
    assert out["intra_s"].item() == pytest.approx(0.5) and out["intra_t"].item() == 0.0


def test_hinge_inactive_beyond_the_margin_active_inside():
    y = torch.tensor([0, 1, 2])
    far = _centres(10.0)                                # spread 2 * 100 * 3 / 6 = 100 ... exactly M
    assert center_spread(far).item() == pytest.approx(100.0)
    far = _centres(11.0)                                # spread 121 > M = 100: hinge 0 and no gradient from it
    c = far.clone().requires_grad_(True)
    out = margin_center_loss(far[y], y, far[y], y, c, far, margin=100.0)
    assert out["hinge_s"].item() == 0.0
    out["hinge_s"].backward()
    assert torch.count_nonzero(c.grad) == 0
    near = _centres(5.0)                                # spread 25 < M: hinge M - 25, gradient pushes centres apart
    c = near.clone().requires_grad_(True)
    out = margin_center_loss(near[y], y, near[y], y, c, near, margin=100.0)
    assert out["hinge_s"].item() == pytest.approx(75.0) and out["hinge_t"].item() == pytest.approx(75.0)
    out["hinge_s"].backward()
    with torch.no_grad():
        assert center_spread(c - 0.1 * c.grad) > center_spread(c)


def test_alignment_zero_for_equal_centres_and_mean_squared_gap_otherwise():
    c = _centres(3.0)
    y = torch.tensor([0, 1])
    out = margin_center_loss(c[y], y, c[y], y, c, c.clone(), lambda1=1.0)
    assert out["align"].item() == 0.0
    moved = c.clone()
    moved[1] += torch.tensor([0.0, 0.0, 2.0, 0.0])       # one of 3 centres 2 units off: 4 / 3
    out = margin_center_loss(c[y], y, c[y], y, c, moved, margin=0.0, lambda1=0.5)
    assert out["align"].item() == pytest.approx(4 / 3)
    assert out["loss"].item() == pytest.approx(out["intra_t"].item() + 0.5 * 4 / 3)


def test_target_mask_drops_rows_from_the_pull():
    c = _centres(3.0)
    y = torch.tensor([0, 1])
    f_t = c[y] + 1.0                                    # each row 4 squared units off (d = 4)
    full = margin_center_loss(c[y], y, f_t, y, c, c)["intra_t"].item()
    half = margin_center_loss(c[y], y, f_t, y, c, c, mask_t=torch.tensor([True, False]))["intra_t"].item()
    assert full == pytest.approx(2.0) and half == pytest.approx(1.0)


def test_dimension_mismatch_is_named():
    with pytest.raises(ValueError, match="dmsrl.py: centre dimension 4"):
        margin_center_loss(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), torch.zeros(2, 5),
                           torch.zeros(2, dtype=torch.long), torch.zeros(3, 4), torch.zeros(3, 4))


def test_ramp():
    assert ramp(0.0) == 0.0 and ramp(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert ramp(0.1) == pytest.approx(2 / (1 + math.exp(-1)) - 1)


# ---------------------------------------------------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    src, tgt = synth_pair(n=32, seed=5, split="train")
    s, t = src.batch(torch.arange(16)), tgt.batch(torch.arange(16))
    t["true_labels"], t["labels"] = t["labels"], torch.full_like(t["labels"], -1)
    return s, t


def test_hparams_validation():
    with pytest.raises(ValueError, match="dmsrl.py: mi must be one of club, discriminator, none"):
        DMSRLHparams(mi="mine")
    with pytest.raises(ValueError, match="local must be one of"):
        DMSRLHparams(local="quadrants")
    assert DMSRLHparams.from_dict({"alpha": "0.5"}).alpha == 0.5


def test_split_keeps_shapes():
    split = FeatureSplit(12, 5)
    z, s = split(torch.randn(7, 12))
    assert z.shape == s.shape == (7, 5) and (z < 0).any()        # signed, like the centres


@pytest.mark.parametrize("hp", [{}, {"mi": "discriminator"}, {"mi": "none"}, {"local": "overlap4"},
                                {"local": "none", "pseudo": "threshold", "pseudo_threshold": 0.0}],
                         ids=["paper", "code-mi", "no-mi", "overlap4", "global-threshold"])
def test_contract_shapes_and_logs(tiny, hp):
    torch.manual_seed(0)
    m = build_method("dmsrl", {"embed_dim": 32, "part_dim": 8, **hp})
    s, t = tiny
    logs = m.update(s, t, 0.5)
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    assert {"cls", "margin", "inter_src", "inter_tgt", "intra_src", "intra_tgt", "center_gap", "pl_acc"} <= set(logs)
    assert ("mi" in logs) == (m.hp.mi == "club") and ("adv" in logs) == (m.hp.mi != "none")
    m.eval()
    with torch.no_grad():
        assert m.predict(s).shape == (16, 7)
        emb = m.embed(s)
    n_local = {"landmarks": 5, "overlap4": 4, "none": 0}[m.hp.local]
    d = m.hp.feat_dim
    assert emb["fused"].shape == (16, d * (1 + n_local)) and emb["embedding"].shape == (16, 32)
    if m.hp.mi == "club":
        assert emb["invariant"].shape == emb["specific"].shape == (16, 8)
        assert m.centers.source.shape == (7, 8)
    else:
        assert "invariant" not in emb and m.centers.source.shape == (7, 32)
    if m.hp.local == "overlap4":
        assert {f"region_{i}" for i in range(4)} <= set(emb)


def test_centre_optimiser_moves_only_the_centres(tiny):
    torch.manual_seed(0)
    m = build_method("dmsrl", {"embed_dim": 16, "part_dim": 8})
    opts = m.optimizers()
    assert set(opts) == {"main", "centers", "mi"}
    ids = {k: {id(p) for g in o.param_groups for p in g["params"]} for k, o in opts.items()}
    assert ids["centers"] == {id(m.centers.source), id(m.centers.target)}
    assert not (ids["main"] & ids["centers"]) and not (ids["main"] & ids["mi"])
    assert ids["main"] | ids["centers"] | ids["mi"] == {id(p) for p in m.parameters()}
    assert opts["centers"].param_groups[0]["lr"] == 1.0          # train.py: SGD lr 1.0
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    s, t = tiny
    feats = m.features(s)
    out = m.centers(feats["class_feature"], s["labels"], feats["class_feature"], s["labels"])
    (m.classifier(feats["class_feature"]).sum() + out["loss"]).backward()
    opts["centers"].step()
    changed = {k for k, v in m.named_parameters() if not torch.equal(v, before[k])}
    assert changed == {"centers.source", "centers.target"}


def test_update_trains_centres_and_network_but_club_only_from_its_fit(tiny):
    torch.manual_seed(0)
    m = build_method("dmsrl", {"embed_dim": 16, "part_dim": 8})
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    s, t = tiny
    m.update(s, t, 0.5)
    changed = {k.split(".")[0] for k, v in m.named_parameters() if not torch.equal(v, before[k])}
    assert {"centers", "club", "split", "fusion", "classifier", "discriminator", "spec_classifier"} <= changed
    # the bound alone sends no gradient into the estimator (only its fitting loss does)
    m.zero_grad(set_to_none=True)
    feats = m.features(s)
    m.club(feats["invariant"], feats["specific"]).backward()
    assert all(p.grad is None for p in m.club.parameters())
    assert m.split.invariant[0].weight.grad is not None


def test_margin_history_and_centre_diagnostics(tmp_path):
    from fer_lab.config import TrainConfig
    from fer_lab.train import Trainer

    hist = MarginHistory(every=2)
    trainer = Trainer(TrainConfig(method="dmsrl", profile="tiny", steps=4, n_train=32, n_test=32, batch_size=8,
                                  progress=False, out_dir=str(tmp_path), hparams={"embed_dim": 16, "part_dim": 8}),
                      callbacks=[hist])
    trainer.fit()
    assert [r["step"] for r in hist.records] == [2, 4]
    # every DMSRL run records the same diagnostics itself (about 30 records a run: here one per step)
    from fer_lab.train import load_diagnostics

    assert [r["step"] for r in load_diagnostics(tmp_path)] == [1, 2, 3, 4]
    recorded = load_diagnostics(tmp_path)[3]          # step 4 (scalars pool over fewer steps than hist's)
    assert recorded["center_gap_per_class"] == pytest.approx(hist.records[1]["center_gap_per_class"], rel=1e-6)
    r = hist.records[-1]
    assert len(r["center_gap_per_class"]) == 7 and sum(r["pl_count"]) == 16 and "mi" in r
    assert set(hist.frame().columns) >= {"step", "inter_src", "inter_tgt", "center_gap", "mi"}
    assert len(hist.per_class_frame("pl_precision")) == 14
    m = trainer.method
    sets = center_feature_sets(m)
    assert sets["target centres"].stream("invariant").shape == (7, 8) and m.class_stream == "invariant"
    acc = nearest_center_accuracy(m, trainer.eval_sets["target"])
    assert 0.0 <= acc["acc"] <= 1.0 and 0.0 <= acc["agreement_with_classifier"] <= 1.0


def test_resume_equals_uninterrupted(tmp_path):
    """Centres, their optimiser and the CLUB estimator's Adam travel with the checkpoint."""
    from fer_lab.config import TrainConfig

    def cfg(out, **kw):
        return TrainConfig(method="dmsrl", profile="tiny", steps=6, n_train=32, n_test=32, batch_size=8,
                           checkpoint_every=3, eval_every=6, log_every=1, progress=False, out_dir=str(out),
                           hparams={"embed_dim": 16, "part_dim": 8}, **kw)

    full, resumed, a, b = cut_and_resume(cfg, tmp_path, stop_at=4)
    assert resumed.final == full.final
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert "centers.source" in a and "club.mu.0.weight" in a


# ---------------------------------------------------------------------------------------------------------------------
# the released code's four overlapping crops
# ---------------------------------------------------------------------------------------------------------------------
def test_overlap4_matches_the_released_crops_on_a_7x7_map():
    assert region_boxes("overlap4", 7, 7) == [(0, 5, 0, 5), (0, 5, 2, 7), (2, 7, 0, 5), (2, 7, 2, 7)]
    fmap = torch.arange(2 * 3 * 49, dtype=torch.float32).reshape(2, 3, 7, 7)
    out = fixed_regions(fmap, "overlap4")
    assert out.shape == (2, 4, 3)
    assert torch.equal(out[:, 3], fmap[:, :, 2:7, 2:7].mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="regions.py: unknown region layout 'nine'"):
        fixed_regions(fmap, "nine")


def test_starts_from_a_source_only_stage_one(tmp_path):
    """The benchmark's stage 2: the extractor comes from the source-only run, DMSRL's own modules start fresh."""
    from fer_lab.config import TrainConfig
    from fer_lab.train import Trainer

    base = dict(profile="tiny", steps=2, n_train=32, n_test=32, batch_size=8, progress=False)
    s1 = Trainer(TrainConfig(method="source_only", target=None, **base, out_dir=str(tmp_path / "s1"))).fit()
    t = Trainer(TrainConfig(method="dmsrl", **base, init_from=str(s1.out_dir), out_dir=str(tmp_path / "s2"),
                            hparams={"embed_dim": 16, "part_dim": 8, "head_lr_mult": 10.0}))
    t.setup()
    start = torch.load(s1.out_dir / "checkpoint.pt", weights_only=True)["method"]
    key = "extractor.global_head.0.weight"
    assert torch.equal(t.method.state_dict()[key], start[key])
    assert "classifier.weight" in t.init_fresh and "centers.source" in t.init_fresh
    groups = t.method.optimizers()["main"].param_groups
    assert groups[-1]["lr_mult"] == 10.0 and any(p is t.method.classifier.weight for p in groups[-1]["params"])
    assert t.fit().final["target"]["n"] == 32


def test_variants_make_bench_rows_that_parse_to_their_hparams():
    from fer_lab.bench import format_row, parse_row
    from fer_lab.methods.dmsrl import ABLATIONS, RELEASED_CODE_CROPS, VARIANTS

    rows = {k: parse_row(format_row("dmsrl", v)) for k, v in VARIANTS.items()}
    assert rows["DMSRL"].hparams == {} and rows["released code, four crops"].hparams == RELEASED_CODE_CROPS
    assert rows["DMSRL, w/o margin term"].hparams == ABLATIONS["w/o margin term"] == {"margin_loss": False}
    for r in rows.values():
        DMSRLHparams.from_dict(r.hparams)
