import pytest
import torch

from fer_lab.label_shift import ImportanceWeights, solve_importance_weights

RAF_PRIOR = torch.tensor([1290, 281, 717, 4772, 1982, 705, 2524], dtype=torch.float64)
RAF_PRIOR = RAF_PRIOR / RAF_PRIOR.sum()
BALANCED = torch.full((7,), 1 / 7, dtype=torch.float64)


def confused_joint(prior: torch.Tensor, diagonal: float = 0.6) -> torch.Tensor:
    """C[i, j] = p(yhat=i | y=j) p(y=j) for a classifier right with probability ``diagonal``, errors spread."""
    k = torch.full((7, 7), (1 - diagonal) / 6, dtype=torch.float64) + torch.eye(7, dtype=torch.float64) * (
        diagonal - (1 - diagonal) / 6)
    return k * prior[None, :]


def test_perfect_classifier_gives_the_prior_ratio():
    w = solve_importance_weights(torch.diag(BALANCED), RAF_PRIOR)
    torch.testing.assert_close(w, (RAF_PRIOR / BALANCED).float(), atol=1e-5, rtol=0)
    assert w[3] == pytest.approx(2.722, abs=1e-3)  # happiness: 38.9 % of RAF-DB against 1/7


def test_confusion_is_undone_not_copied():
    # a 60 %-accurate classifier blurs the target's prediction marginal towards uniform; the QP inverts that
    joint = confused_joint(BALANCED)
    true = RAF_PRIOR / BALANCED
    mu = joint @ true
    w = solve_importance_weights(joint, mu)
    torch.testing.assert_close(w, true.float(), atol=1e-4, rtol=0)
    naive = mu / BALANCED  # the plain ratio of marginals underestimates the shift
    assert naive[3] < true[3] - 0.5  # 1.92 against 2.72 for happiness


def test_constraints_hold_for_inconsistent_statistics():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        joint = torch.rand(7, 7, generator=g, dtype=torch.float64)
        mu = torch.rand(7, generator=g, dtype=torch.float64) ** 4
        w = solve_importance_weights(joint, mu, max_weight=3.0)
        prior = joint.sum(0) / joint.sum()
        assert (w >= 0).all() and (w <= 3.0 + 1e-6).all()
        assert float(prior.float() @ w) == pytest.approx(1.0, abs=1e-5)


def test_unseen_source_class_and_bad_input():
    joint = torch.diag(BALANCED).clone()
    joint[:, 2] = 0  # no disgust in the source statistics
    w = solve_importance_weights(joint, BALANCED)
    assert w[2] == 1.0
    with pytest.raises(ValueError, match="max_weight must be at least 1"):
        solve_importance_weights(joint, BALANCED, max_weight=0.5)
    with pytest.raises(ValueError, match=r"expected joint \[C, C\]"):
        solve_importance_weights(joint[:3], BALANCED)
    with pytest.raises(ValueError, match="non-negative"):
        solve_importance_weights(-joint, BALANCED)


def _observe_shifted(iw: ImportanceWeights, steps: int = 3) -> None:
    eye = torch.eye(7)
    for _ in range(steps):  # balanced, perfectly classified source; target predicted with RAF-DB's prior
        iw.observe(eye, torch.arange(7), RAF_PRIOR.float()[None].repeat(4, 1))


def test_estimator_accumulates_smooths_and_resets():
    iw = ImportanceWeights(7)
    assert torch.equal(iw.sample_weights(torch.tensor([3, -1])), torch.tensor([1.0, 0.0]))
    _observe_shifted(iw)
    assert int(iw.steps) == 3
    half = iw.refresh(ma=0.5)
    torch.testing.assert_close(half, (0.5 + 0.5 * RAF_PRIOR / BALANCED).float(), atol=1e-4, rtol=0)
    assert iw.joint.sum() == 0 and iw.target_marginal.sum() == 0  # a new epoch of statistics
    assert torch.equal(iw.refresh(ma=0.5), half)  # nothing observed since: unchanged
    _observe_shifted(iw)
    full = iw.refresh(ma=0.0)
    torch.testing.assert_close(full, (RAF_PRIOR / BALANCED).float(), atol=1e-4, rtol=0)
    assert iw.sample_weights(torch.tensor([3]))[0] == full[3]
    # rows labelled -1 never enter the source statistics
    iw.observe(torch.eye(7)[:2], torch.tensor([0, -1]), torch.eye(7)[:1])
    assert iw.joint.sum() == 1.0


def test_estimator_state_round_trip():
    a = ImportanceWeights(7)
    _observe_shifted(a)
    a.refresh()
    _observe_shifted(a, steps=1)
    b = ImportanceWeights(7)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.refresh(), b.refresh())
    assert int(b.steps) == 4
