import pytest
import torch

from fer_lab.mutual_info import CLUB, estimate_mi, gaussian_mi


def _gaussian_parts(n: int, dims: int, rho: float, seed: int):
    """x, y: ``dims`` pairs of unit Gaussians with correlation ``rho`` per pair (independent across pairs)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dims, generator=g)
    y = rho * x + (1 - rho ** 2) ** 0.5 * torch.randn(n, dims, generator=g)
    return x, y


def test_estimate_near_zero_for_independent_parts():
    x, y = _gaussian_parts(2000, 4, 0.0, seed=1)
    assert abs(estimate_mi(x, y, steps=300, seed=0)) < 0.1


def test_estimate_clearly_positive_for_dependent_parts_and_bounds_the_truth():
    # With the exact conditional q = p(y|x) the bound is dims * rho^2 / (1 - rho^2) (positive pairs -1/2 and
    # negative pairs -(1 + rho^2) / (2 (1 - rho^2)) per dimension): 7.11 nats at rho 0.8, above the true 2.04.
    for rho, seed in ((0.8, 2), (0.4, 3)):
        est = estimate_mi(*_gaussian_parts(2000, 4, rho, seed=seed), steps=300, seed=0)
        club_exact = 4 * rho ** 2 / (1 - rho ** 2)
        assert est > gaussian_mi(rho, dims=4) and est == pytest.approx(club_exact, rel=0.25)


def test_closed_form_negative_term_equals_all_pairs():
    torch.manual_seed(0)
    club = CLUB(3, 2, hidden=8)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    mu, logvar = club.conditional(x)
    # brute force over every (i, j): log q(y_j | x_i) without the log-variance and constant terms
    pair = -((y[None, :, :] - mu[:, None, :]) ** 2 / logvar.exp()[:, None, :]).sum(-1)   # [i, j]
    expected = (pair.diagonal().mean() - pair.mean()) / 2
    assert torch.allclose(club(x, y), expected, atol=1e-5)


def test_gradients_bound_to_encoders_learning_loss_to_estimator():
    torch.manual_seed(0)
    club = CLUB(3, 3, hidden=8)
    x = torch.randn(6, 3, requires_grad=True)
    y = (x * 2).detach().requires_grad_(True)
    club(x, y).backward()
    assert x.grad is not None and y.grad is not None
    assert all(p.grad is None for p in club.parameters())
    x.grad = None
    club.learning_loss(x, y).backward()
    assert x.grad is None and all(p.grad is not None for p in club.parameters())


def test_shape_errors_name_the_file():
    club = CLUB(3, 2)
    with pytest.raises(ValueError, match="mutual_info.py: CLUB built for x of dim 3"):
        club(torch.randn(4, 5), torch.randn(4, 2))
    with pytest.raises(ValueError, match="same B"):
        club(torch.randn(4, 3), torch.randn(3, 2))
    with pytest.raises(ValueError, match="estimate_mi needs"):
        estimate_mi(torch.randn(3, 2), torch.randn(3, 2))


def test_estimate_is_deterministic_and_leaves_the_global_rng_alone():
    x, y = _gaussian_parts(400, 2, 0.5, seed=4)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = estimate_mi(x, y, steps=50, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    assert a == estimate_mi(x, y, steps=50, seed=7)


def test_constant_dimensions_are_left_out():
    x, y = _gaussian_parts(400, 2, 0.0, seed=5)
    dead = torch.cat([x, torch.zeros(400, 3)], 1)          # dead ReLU units: constant zero columns
    assert abs(estimate_mi(dead, y, steps=100, seed=0)) < 0.1
    assert estimate_mi(torch.zeros(400, 3), y, steps=10) == 0.0


def test_principal_components_keep_the_dependence():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1000, 2, generator=g)
    mix = torch.randn(2, 20, generator=g)
    y = x @ mix + 0.5 * torch.randn(1000, 20, generator=g)       # 20 dims, 2 of them informative
    assert estimate_mi(x, y, steps=200, max_dims=2) > 1.0
    assert abs(estimate_mi(x, torch.randn(1000, 20, generator=g), steps=200, max_dims=2)) < 0.1
