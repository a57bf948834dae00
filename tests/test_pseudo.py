import pytest
import torch

from fer_lab.pseudo import MAPPINGS, PseudoLabelStore, confidence_mask, dynamic_threshold, learning_effect


def test_learning_effect_counts_against_the_largest_bucket_including_unselected():
    # 10 samples: 6 unselected, class 0 twice, class 3 once, class 5 once
    sel = torch.tensor([-1, -1, 0, -1, 3, -1, 0, 5, -1, -1])
    sigma = learning_effect(sel, num_classes=7)
    assert torch.allclose(sigma, torch.tensor([2, 0, 0, 1, 0, 1, 0]) / 6.0)
    # once most are selected the largest class normalises: class 2 x4, class 1 x2, unselected x1
    sel = torch.tensor([2, 2, 2, 2, 1, 1, -1])
    assert torch.allclose(learning_effect(sel, 3), torch.tensor([0.0, 0.5, 1.0]))


def test_learning_effect_is_zero_when_nothing_is_selected_and_per_stream():
    sel = torch.tensor([[-1, -1, -1], [1, 1, -1]])
    sigma = learning_effect(sel, 3)
    assert sigma.shape == (2, 3)
    assert torch.equal(sigma[0], torch.zeros(3))
    assert torch.allclose(sigma[1], torch.tensor([0.0, 1.0, 0.0]))


def test_dynamic_threshold_formula_and_range():
    sigma = torch.tensor([0.0, 0.5, 1.0])
    tau = dynamic_threshold(sigma, 0.95)
    assert torch.allclose(tau, 0.95 * ((sigma + 1) / 2) ** 2)
    assert tau[0] == pytest.approx(0.95 / 4) and tau[2] == pytest.approx(0.95)
    assert torch.allclose(dynamic_threshold(sigma, 0.95, "fixed"), torch.full((3,), 0.95))
    with pytest.raises(ValueError, match="unknown threshold mapping 'cubic'"):
        dynamic_threshold(sigma, 0.95, "cubic")
    assert set(MAPPINGS) >= {"convex2", "fixed"}


def test_confidence_mask_uses_the_threshold_of_the_predicted_class():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    tau = torch.tensor([0.5, 0.9, 0.9])
    mask, pseudo, conf = confidence_mask(probs, tau)
    assert pseudo.tolist() == [0, 1, 2]
    assert mask.tolist() == [True, False, False]
    assert torch.allclose(conf, torch.tensor([0.6, 0.7, 0.8]))


def _onehotish(labels, conf, c=3):
    p = torch.full((len(labels), c), 0.0)
    for i, (y, q) in enumerate(zip(labels, conf)):
        p[i] = (1 - q) / (c - 1)
        p[i, y] = q
    return p


def test_store_empty_then_one_class_dominant():
    store = PseudoLabelStore(num_streams=1, num_classes=3, num_samples=6)
    # empty store: sigma = 0, so every class threshold is 0.95 / 4 and a 0.5-confident guess is accepted
    probs = _onehotish([0, 0, 0, 1], [0.99, 0.98, 0.97, 0.5])[None]
    out = store.step(torch.tensor([0, 1, 2, 3]), probs)
    assert torch.allclose(out["thresholds"], torch.full((1, 3), 0.95 / 4))
    assert out["mask"].tolist() == [[True, True, True, True]]
    # the confident ones (>= 0.95) entered the store, the 0.5 one did not
    assert store.selected.tolist() == [[0, 0, 0, -1, -1, -1]]
    # next step: class 0 dominates (3 stored vs 3 unselected -> sigma_0 = 1), so class 0 now needs 0.95
    out = store.step(torch.tensor([4, 5]), _onehotish([0, 1], [0.9, 0.9])[None])
    assert out["thresholds"][0, 0] == pytest.approx(0.95)
    assert out["thresholds"][0, 1] == pytest.approx(0.95 / 4)
    assert out["mask"].tolist() == [[False, True]]
    store.reset()
    assert (store.selected == -1).all() and (store.sigma == 0).all()


def test_store_errors_and_state_dict_round_trip():
    store = PseudoLabelStore(2, 3)
    with pytest.raises(RuntimeError, match="resize"):
        store.step(torch.tensor([0]), torch.rand(2, 1, 3).softmax(-1))
    store.resize(4)
    with pytest.raises(IndexError, match="outside a store of 4"):
        store.step(torch.tensor([7]), torch.rand(2, 1, 3).softmax(-1))
    with pytest.raises(ValueError, match=r"probs must be \[S=2"):
        store.step(torch.tensor([0]), torch.rand(1, 1, 3))
    store.step(torch.tensor([0, 1]), torch.tensor([[[0.98, 0.01, 0.01]] * 2] * 2))
    fresh = PseudoLabelStore(2, 3)          # a store of another size loads (and resizes to) the saved state
    fresh.load_state_dict(store.state_dict())
    assert torch.equal(fresh.selected, store.selected) and torch.equal(fresh.sigma, store.sigma)
