import numpy as np
import pytest
import torch

from fer_lab.analysis.disentangle import (CodeSet, accuracy_by_yaw, code_set, image_grid, leakage_probe,
                                          leakage_table, pose_colored, swap_error, swap_pairs, yaw_bin_names,
                                          yaw_bins_np)


def test_yaw_bins_and_names():
    assert yaw_bins_np([-70, 0, 14.9, 15, -45, np.nan, 59.9]).tolist() == [4, 0, 0, 1, 3, -1, 3]
    assert yaw_bin_names((15, 30)) == ["|yaw| < 15", "15-30", ">= 30"]


def test_leakage_probe_reads_what_is_there_and_not_what_is_not():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 100)
    informative = np.eye(4)[y] * 3 + rng.normal(size=(400, 4))
    noise = rng.normal(size=(400, 4))
    hi, lo = leakage_probe(informative, y), leakage_probe(noise, y)
    assert hi["acc"] > 0.9 and lo["acc"] < 0.4 and hi["chance"] == pytest.approx(0.25) and hi["n"] == 400
    assert leakage_probe(informative, np.where(y == 0, -1, y))["n"] == 300   # unknown labels are left out
    with pytest.raises(ValueError, match="two classes"):
        leakage_probe(noise, np.zeros(400, int))


def test_leakage_table_layout():
    rng = np.random.default_rng(1)
    n = 200
    labels, yaw = rng.integers(0, 7, n), rng.uniform(-70, 70, n)
    cs = CodeSet(rng.normal(size=(n, 5)), rng.normal(size=(n, 3)), labels, labels, yaw, np.zeros(n, int), np.arange(n))
    plain = CodeSet(rng.normal(size=(n, 5)), None, labels, labels, yaw, np.zeros(n, int), np.arange(n))
    t = leakage_table({"a": cs, "b": plain})
    assert list(t.index) == ["a", "b"]
    assert {"pose from expression code", "expression from pose code", "pose chance"} <= set(t.columns)
    assert np.isnan(t.loc["b", "expression from pose code"])


def test_accuracy_by_yaw_on_constructed_predictions():
    yaw = np.array([0, 5, 20, 25, 50, 80, -80, -10])
    labels = np.array([1, 1, 2, 2, 3, 4, 4, -1])
    pred = np.array([1, 0, 2, 2, 0, 4, 0, 5])
    t = accuracy_by_yaw(pred, labels, yaw)
    assert t["n"].tolist() == [2, 2, 0, 1, 2]
    assert t["acc"].iloc[0] == 0.5 and t["acc"].iloc[1] == 1.0 and np.isnan(t["acc"].iloc[2])
    assert t["acc"].iloc[4] == 0.5


def test_swap_pairs_are_the_same_person_far_apart():
    subject = np.array([1, 1, 1, 2, 2, 3, 3, 1])
    yaw = np.array([-60, 0, 10, 5, 50, 0, 10, 60])
    pairs = swap_pairs(subject, yaw, n_pairs=10, min_gap=30)
    assert all(subject[i] == subject[j] and abs(yaw[i] - yaw[j]) >= 30 for i, j in pairs)
    assert {frozenset(p) for p in pairs.tolist()} == {frozenset((0, 7)), frozenset((3, 4))}
    assert len(swap_pairs(subject, yaw, n_pairs=1)) == 1


def test_pose_colored_swaps_domains_for_bins():
    from fer_lab.analysis.alignment import FeatureSet

    fs = FeatureSet({"expr": np.zeros((3, 2), np.float32)}, np.zeros(3, int), np.zeros(3, int),
                    np.zeros((3, 7), np.float32), np.zeros(3, int), np.arange(3), ["x"])
    out = pose_colored(fs, [0, 20, -70])
    assert out.domains.tolist() == [0, 1, 4] and out.domain_names[4] == ">= 60"
    with pytest.raises(ValueError, match="2 yaw values for 3 faces"):
        pose_colored(fs, [0, 1])


def test_code_set_and_swap_error_with_pose_ada():
    from fer_lab.data.loading import FaceTensors
    from fer_lab.data.synth import make_synthfer, render_at_pose
    from fer_lab.methods import build_method

    torch.manual_seed(0)
    arrays = make_synthfer("lab", n=16, size=32, split="test", cache=False, subject=1, yaw="0,60")
    data = FaceTensors(arrays, 32)
    m = build_method("pose_ada", {"feat_dim": 8, "recon_size": 16})
    cs = code_set(m, data)
    assert cs.expr.shape == (16, 48) and cs.pose.shape == (16, 32) and len(set(cs.subject.tolist())) == 1
    pairs = swap_pairs(cs.subject, cs.yaw, n_pairs=3, min_gap=20)
    truth, _ = render_at_pose("lab", pairs[:, 0], arrays.pose[pairs[:, 1]], n=16, size=32, split="test", subject=1,
                              yaw="0,60")
    out = swap_error(m, data, pairs, truth)
    assert out["images"]["swap"].shape == (len(pairs), 3, 16, 16)
    assert all(0 <= out[k] <= 1 for k in ("swap_l1", "recon_i_l1", "face_j_l1", "face_i_l1"))
    fig = image_grid({k: out["images"][k] for k in ("face_i", "swap", "truth")}, row_titles=["a", "b", "c"][:len(pairs)])
    assert fig.data[0].z.shape == (len(pairs) * 18 + 2, 3 * 18 + 2, 3)


def test_concat_code_sets_and_personalised_tables():
    from fer_lab.analysis.disentangle import concat_code_sets, personalised_tables

    a = CodeSet(np.ones((2, 3)), np.ones((2, 1)), np.array([0, 1]), np.array([0, 0]), np.array([0.0, 50.0]),
                np.array([5, 5]), np.arange(2))
    both = concat_code_sets([a, a])
    assert both.expr.shape == (4, 3) and both.indices.tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="pose code"):
        concat_code_sets([a, CodeSet(a.expr, None, a.labels, a.predictions, a.yaw, a.subject, a.indices)])

    class Const(torch.nn.Module):  # predicts class c for every face
        def __init__(self, c):
            super().__init__()
            self.c = c

        def predict(self, batch):
            return torch.nn.functional.one_hot(torch.full((len(batch["labels"]),), self.c), 7).float()

    from fer_lab.data.loading import FaceTensors
    from fer_lab.data.store import FaceArrays

    def person(labels, yaw):
        n = len(labels)
        return FaceTensors(FaceArrays(np.zeros((n, 16, 16, 3), np.uint8), np.array(labels), np.zeros((n, 5, 2), np.float32),
                                      np.stack([yaw, np.zeros(n), np.zeros(n)], 1).astype(np.float32),
                                      np.zeros(n, np.int64)), 16)

    tests = {0: person([3, 3, 1, 1], [0, 0, 50, 50]), 1: person([3, 1], [20, 20])}
    per, yaw = personalised_tables({"m": {0: Const(3), 1: Const(1)}}, tests)
    assert per.loc["m", "person 0"] == 0.5 and per.loc["m", "person 1"] == 0.5 and per.loc["m", "mean"] == 0.5
    assert yaw.loc["m", "|yaw| < 15"] == 1.0 and yaw.loc["m", "15-30"] == 0.5 and yaw.loc["m", "45-60"] == 0.0
    assert yaw.loc["faces"].tolist() == [2, 2, 0, 2, 0]
