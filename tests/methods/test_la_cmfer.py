import math

import numpy as np
import pytest
import torch

from fer_lab.methods import build_method
from fer_lab.methods.la_cmfer import (ABLATIONS, LACMFERHparams, agreement_pseudo_labels, alignment_weights,
                                      branch_accuracies, cluster_alignment, intra_domain_loss,
                                      prediction_similarity)

from conftest import synth_pair


@pytest.fixture(scope="module")
def batches():
    src, tgt = synth_pair(n=48, seed=5, split="train")
    s = src.batch(torch.arange(24))
    t = tgt.batch(torch.arange(24))
    t["true_labels"], t["labels"] = t["labels"], torch.full_like(t["labels"], -1)
    sources = []
    for d in range(3):                                     # three labelled source domains of 8 faces each
        b = {k: v[8 * d:8 * d + 8].clone() for k, v in s.items()}
        b["domain"] = torch.full((8,), d, dtype=torch.int64)
        sources.append(b)
    return sources, t


# -- the losses on constructed inputs ---------------------------------------------------------------------------------
def test_cluster_term_is_lower_for_matched_than_swapped_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    ys = torch.arange(3).repeat_interleave(6)
    yt = torch.arange(3).repeat_interleave(5)
    xs = centres[ys] + 0.2 * torch.randn(18, 2, generator=g)
    xt = centres[yt] + 0.2 * torch.randn(15, 2, generator=g)
    everyone_s, everyone_t = torch.ones(18, dtype=torch.bool), torch.ones(15, dtype=torch.bool)
    matched = cluster_alignment(xs, ys, xt, yt, everyone_s, everyone_t, 3)
    swapped = cluster_alignment(xs, ys, xt, (yt + 1) % 3, everyone_s, everyone_t, 3)
    assert matched < 0 < swapped
    # only confident rows count: with no confident target row the term is 0
    assert cluster_alignment(xs, ys, xt, yt, everyone_s, torch.zeros(15, dtype=torch.bool), 3) == 0


def test_prediction_similarity_loss_zero_for_identical_one_hot_and_positive_otherwise():
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 3, 3, 1, 6]), 7).float()   # classes 2, 4, 5 absent
    assert intra_domain_loss(one_hot, one_hot) == 0
    other = torch.nn.functional.one_hot(torch.tensor([0, 3, 2, 1, 6]), 7).float()
    assert intra_domain_loss(one_hot, other) > 0
    soft = torch.softmax(torch.randn(5, 7, generator=torch.Generator().manual_seed(1)), 1)
    assert intra_domain_loss(soft, soft) > 0                # soft predictions put mass off the diagonal
    # by hand: two samples, a = b = [[1, 0], [0.5, 0.5]] -> C = [[1.25, 0.25], [0.25, 0.25]]
    a = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert torch.allclose(prediction_similarity(a, a), torch.tensor([[1.25, 0.25], [0.25, 0.25]]))
    rows = prediction_similarity(a, a, "rows")
    assert torch.allclose(rows.sum(1), torch.ones(2)) and torch.allclose(rows, prediction_similarity(a, a, "cols").T)
    want = 0.5 * (0.25 / 1.5 + 0.5) / 2 * 2                  # row and column halves are equal here
    assert intra_domain_loss(a, a).item() == pytest.approx(want)


def test_agreement_mask_on_constructed_probabilities():
    p_g = torch.tensor([[0.95, 0.05, 0.0], [0.6, 0.4, 0.0], [0.05, 0.95, 0.0], [0.5, 0.5, 0.0], [0.1, 0.0, 0.9]])
    p_l = torch.tensor([[0.6, 0.4, 0.0], [0.05, 0.95, 0.0], [0.92, 0.08, 0.0], [0.95, 0.05, 0.0], [0.0, 0.1, 0.9]])
    labels, mask = agreement_pseudo_labels(p_g, p_l, 0.9)
    # row 0: agree, global confident; row 1: disagree; row 2: disagree (both confident);
    # row 3: agree (argmax of a tie is class 0), local confident; row 4: agree but 0.9 is not above 0.9
    assert mask.tolist() == [True, False, False, True, False]
    assert labels.tolist() == [0, 0, 1, 0, 2]


def test_alignment_weights_grow_with_the_distance_to_the_label():
    p = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.9, 0.1, 0.0]])
    y = torch.tensor([0, 0, 0, 1])
    counted = torch.tensor([True, True, True, False])
    w = alignment_weights(p, y, counted)
    raw = [(0.0 + 0.01 + 0) / 3, (0 + 0.09 + 0.04) / 3, ((0.2 - 0.7) ** 2 + 0.49 + 0.01) / 3, 0.0]
    assert torch.allclose(w, torch.tensor(raw) / sum(raw))
    assert w[0] < w[1] < w[2] and w[3] == 0 and math.isclose(w.sum().item(), 1.0, rel_tol=1e-6)
    assert (alignment_weights(p, y, torch.zeros(4, dtype=torch.bool)) == 0).all()


# -- the method -------------------------------------------------------------------------------------------------------
def test_update_multi_source_keeps_domain_ids_and_returns_finite_losses(batches):
    sources, t = batches
    torch.manual_seed(0)
    m = build_method("la_cmfer")
    logs = m.update(sources, t, 0.5)
    assert all(isinstance(v, float) and np.isfinite(v) for v in logs.values())
    assert {"loss", "cls", "align_global", "align_local", "mmd_global", "cluster_local", "intra", "pl",
            "pl_mask", "pl_hit"} <= set(logs)
    assert m.last["source_domain"].tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert m.last["source_index"].tolist() == torch.cat([s["index"] for s in sources]).tolist()
    shares = [logs[f"w_share_d{d}"] for d in range(3)]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5) or sum(shares) == 0
    assert m.last["w_s_global"].shape == (24,) and m.last["w_t_local"].shape == (24,)
    m.eval()
    with torch.no_grad():
        s = sources[0]
        assert m.predict(s).shape == (8, 7)
        feats = m.embed(s)
        d = m.predict_details(s)
    assert set(feats) == {"global", "local"} and feats["local"].shape == (8, 4 * m.hp.feat_dim)
    assert torch.allclose(d["average"], (d["global"] + d["local"]) / 2)
    assert torch.allclose(m.predict(s).softmax(1), d["average"], atol=1e-6)


def test_inference_and_regions_options(batches):
    sources, t = batches
    s = sources[1]
    torch.manual_seed(0)
    m = build_method("la_cmfer", {"inference": "local"})
    m.eval()
    with torch.no_grad():
        assert torch.equal(m.predict(s).argmax(1), m.predict_details(s)["local"].argmax(1))
    lm = build_method("la_cmfer", {"regions": "landmarks"})
    assert lm.local_branch is None and len(lm.extractor.local_heads) == 5
    lm.update(sources, t, 0.1)
    with torch.no_grad():
        assert lm.embed(s)["local"].shape == (8, 5 * lm.hp.feat_dim)
    q = build_method("la_cmfer")
    assert len(q.extractor.local_heads) == 0                # the quadrant branch replaces the landmark heads
    with pytest.raises(ValueError, match="la_cmfer.py: inference must be one of global, local, average"):
        LACMFERHparams(inference="vote")


def test_ablation_switches_turn_their_terms_off(batches):
    sources, t = batches
    off = build_method("la_cmfer", {**ABLATIONS["w/o cluster term"], **ABLATIONS["w/o intra-domain term"],
                                    **ABLATIONS["w/o pseudo labels"], "pseudo_threshold": 0.0})
    logs = off.update(sources, t, 0.5)
    assert logs["cluster_global"] == logs["cluster_local"] == logs["intra"] == logs["pl"] == 0
    assert logs["pl_mask"] > 0                              # the rule still runs (diagnostics), it is not trained on
    plain = build_method("la_cmfer", ABLATIONS["w/o sample weights"])
    plain.update(sources, t, 0.5)
    assert torch.allclose(plain.last["w_s_global"], torch.full((24,), 1 / 24))
    full = build_method("la_cmfer", {"pseudo_threshold": 0.0})
    logs = full.update(sources, t, 0.5)
    assert logs["pl"] > 0 and logs["intra"] > 0 and logs["pl_mask"] > 0


def test_alignment_warm_up_and_kernel_options(batches):
    sources, t = batches
    torch.manual_seed(0)
    m = build_method("la_cmfer", {"pseudo_labels": False})
    logs = m.update(sources, t, 0.0)                        # alpha_0 = 0: only the source CE acts
    assert logs["alpha"] == 0 and logs["loss"] == pytest.approx(logs["cls"], rel=1e-6)
    assert m.update(sources, t, 0.5)["alpha"] == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert build_method("la_cmfer", {"ramp": False}).update(sources, t, 0.0)["alpha"] == 1.0
    summed = build_method("la_cmfer", {"kernel_reduction": "sum", "sample_weights": False})
    mean = build_method("la_cmfer", {"sample_weights": False})
    mean.load_state_dict(summed.state_dict())
    a, b = summed.update(sources, t, 0.5), mean.update(sources, t, 0.5)
    assert a["mmd_global"] == pytest.approx(5 * b["mmd_global"], rel=1e-4)   # same weights: 5 kernels summed
    with pytest.raises(ValueError, match="kernel_reduction must be one of sum, mean"):
        LACMFERHparams(kernel_reduction="max")


def test_trainer_runs_multi_source_and_reports_every_branch(tmp_path):
    from fer_lab.train import load_split, train

    sources = ("synth:lab", "synth:lowres", "synth:profile")
    common = dict(source=sources, target="synth:wild", profile="tiny", steps=4, n_train=48, n_test=32,
                  batch_size=8, progress=False)
    run = train(method="la_cmfer", out_dir=str(tmp_path / "la"), **common)
    assert 0.0 <= run.final["target"]["acc"] <= 1.0
    rec = [r for r in run.history if "loss" in r][-1]
    assert {"w_share_d0", "w_share_d1", "w_share_d2"} <= set(rec)
    # from a source-only stage 1: the two classifiers and the local branch start fresh
    s1 = train(method="source_only", out_dir=str(tmp_path / "s1"), **{**common, "target": None, "steps": 2})
    run2 = train(method="la_cmfer", out_dir=str(tmp_path / "la2"), init_from=str(s1.out_dir), **common)
    assert run2.final["target"]["acc"] >= 0
    from fer_lab.train import load_run

    method, cfg = load_run(run.out_dir)
    accs = branch_accuracies(method, load_split(cfg, "synth:wild", "test", 3))
    assert set(accs) == {"global", "local", "average"} and all(0 <= v <= 1 for v in accs.values())


def test_analysis_views_on_a_small_model():
    from fer_lab.methods.la_cmfer import alignment_weight_frame, pseudo_label_rules, similarity_matrix

    src, tgt = synth_pair(n=40, seed=6, split="test")
    torch.manual_seed(0)
    m = build_method("la_cmfer")
    frame = alignment_weight_frame(m, [src], tgt, per_domain=16, seed=0)
    assert len(frame) == 32 and list(frame.side.unique()) == ["source", "target"]
    assert set(frame.dataset) == {"synth:lab", "synth:wild"}
    for side in ("source", "target"):
        w = frame[frame.side == side].weight
        assert (w >= 0).all() and (w.sum() == pytest.approx(1.0, abs=1e-5) or w.sum() == 0)
    rules = pseudo_label_rules(m, tgt, threshold=0.0)       # every face passes a zero threshold on its own view
    assert rules.loc["global alone", "coverage"] == 1.0 and rules.loc["local alone", "faces"] == len(tgt)
    assert rules.loc["agreement (paper)", "coverage"] <= 1.0
    sim = similarity_matrix(m, tgt)
    assert sim.shape == (7, 7) and np.allclose(sim.sum(1), 1.0, atol=1e-5)
