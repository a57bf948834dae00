"""Gradient reversal, warm-up schedule, CDAN conditioning, entropy weights, discriminator loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fer_lab.models import (
    DomainDiscriminator,
    GradientReversal,
    RandomizedMultilinear,
    WarmStartGradientReverse,
    cdan_multilinear,
    domain_adversarial_loss,
    entropy,
    entropy_weight,
    gradient_reversal,
    grl_warmup,
)


@pytest.mark.parametrize("coeff", [1.0, 0.3, 0.0])
def test_grl_identity_forward_reversed_backward(coeff):
    x = torch.randn(5, 4, requires_grad=True)
    g = torch.randn(5, 4)
    for layer in (GradientReversal(coeff), lambda t: gradient_reversal(t, coeff)):
        x.grad = None
        y = layer(x)
        assert torch.equal(y, x)
        y.backward(g)
        assert torch.allclose(x.grad, -coeff * g)


def test_warmup_schedule():
    ps = torch.linspace(0, 1, 101).tolist()
    vals = [grl_warmup(p) for p in ps]
    assert vals[0] == 0.0
    assert all(b > a for a, b in zip(vals, vals[1:]))
    assert vals[-1] == pytest.approx(1.0, abs=1e-3)
    assert grl_warmup(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    lo_hi = [grl_warmup(p, alpha=10, lo=0.1, hi=0.5) for p in (0.0, 1.0)]
    assert lo_hi[0] == pytest.approx(0.1) and lo_hi[1] == pytest.approx(0.5, abs=1e-3)
    assert grl_warmup(-1.0) == 0.0 and grl_warmup(5.0) <= 1.0


def test_warm_start_layer_explicit_progress():
    grl = WarmStartGradientReverse(alpha=10.0)
    x = torch.ones(3, requires_grad=True)
    grl(x, progress=0.5).sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), -grl_warmup(0.5)))
    assert grl.progress == 0.0  # passing progress does not change the layer
    x.grad = None
    grl.progress = 1.0
    grl(x).sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), -grl_warmup(1.0)))
    assert grl.coeff() == pytest.approx(grl_warmup(1.0))


def test_multilinear_equals_einsum():
    f = torch.randn(6, 5, requires_grad=True)
    p = torch.softmax(torch.randn(6, 7), 1).requires_grad_(True)
    out = cdan_multilinear(f, p)
    assert out.shape == (6, 35)
    assert torch.allclose(out, torch.einsum("bc,bd->bcd", p, f).reshape(6, -1))
    out.sum().backward()
    assert p.grad is None and f.grad is not None  # CDAN conditions on detached probabilities
    assert cdan_multilinear(f, p, detach_probs=False).requires_grad


def test_randomized_multilinear():
    m = RandomizedMultilinear(5, 7, out_dim=64, seed=3)
    f, p = torch.randn(4, 5), torch.softmax(torch.randn(4, 7), 1)
    out = m(f, p)
    assert out.shape == (4, 64)
    assert torch.allclose(out, (f @ m.Rf) * (p @ m.Rg) / 8.0)
    assert torch.equal(RandomizedMultilinear(5, 7, 64, seed=3)(f, p), out)  # fixed by the seed
    assert {"Rf", "Rg"} <= set(m.state_dict()) and not list(m.parameters())


def test_entropy_and_weight_range():
    probs = torch.cat([torch.eye(7), torch.full((1, 7), 1 / 7), torch.softmax(torch.randn(50, 7) * 3, 1)])
    h = entropy(probs)
    assert h.shape == (58,) and (h >= 0).all() and (h <= math.log(7) + 1e-6).all()
    assert h[:7].abs().max() < 1e-6 and h[7] == pytest.approx(math.log(7), abs=1e-5)
    w = entropy_weight(probs.requires_grad_(True))
    assert not w.requires_grad
    assert (w > 1).all() and (w <= 2).all()
    assert w[:7].eq(2).all() and w[7] == pytest.approx(1 + 1 / 7, abs=1e-5)


def test_discriminator_shapes():
    for bn in (False, True):
        d = DomainDiscriminator(12, hidden=32, batch_norm=bn, leaky_slope=0.2 if bn else 0.0)
        assert d(torch.randn(5, 12)).shape == (5, 1)


def test_loss_weights_normalisation():
    torch.manual_seed(0)
    disc = DomainDiscriminator(4, hidden=8, dropout=0.0).eval()
    fs, ft = torch.randn(6, 4), torch.randn(6, 4)
    plain, _ = domain_adversarial_loss(disc, fs, ft)
    ones, _ = domain_adversarial_loss(disc, fs, ft, torch.full((6,), 3.0), torch.ones(6))
    assert torch.allclose(plain, ones)
    ws, wt = torch.rand(6) + 0.5, torch.rand(6) + 0.5
    loss, _ = domain_adversarial_loss(disc, fs, ft, ws, wt)
    logits = disc(torch.cat([fs, ft])).view(-1)
    ls = torch.nn.functional.softplus(-logits[:6])  # BCE for label 1
    lt = torch.nn.functional.softplus(logits[6:])  # BCE for label 0
    official = 0.5 * ((ws * ls).sum() / ws.sum() + (wt * lt).sum() / wt.sum())  # CDAN loss.py, B_s == B_t
    assert torch.allclose(loss, official, atol=1e-6)


def test_discriminator_depth():
    """layers=1, 100 units, no dropout: the DANN paper's digit domain classifier, Linear-ReLU-Linear."""
    paper = DomainDiscriminator(48, hidden=100, dropout=0.0, layers=1)
    assert [type(m).__name__ for m in paper] == ["Linear", "ReLU", "Linear"]
    assert sum(p.numel() for p in paper.parameters()) == 48 * 100 + 100 + 100 + 1
    assert paper(torch.randn(5, 48)).shape == (5, 1)
    assert sum(isinstance(m, nn.Linear) for m in DomainDiscriminator(48, hidden=16, layers=3)) == 4
    with pytest.raises(ValueError, match="at least one hidden layer"):
        DomainDiscriminator(48, layers=0)


def test_discriminator_learns_separable_domains():
    torch.manual_seed(0)
    disc = DomainDiscriminator(8, hidden=64)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    shift = torch.zeros(8)
    shift[0] = 3.0
    losses, accs = [], []
    for _ in range(150):
        fs, ft = torch.randn(32, 8) + shift, torch.randn(32, 8) - shift
        loss, acc = domain_adversarial_loss(disc, fs, ft, entropy_weight(torch.rand(32, 7).softmax(1)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        accs.append(acc.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert sum(accs[-10:]) / 10 > 0.95 and 0.0 <= min(accs) <= max(accs) <= 1.0


def test_grl_makes_features_confuse_discriminator():
    """With reversal, the feature gradient points the opposite way to the discriminator's descent direction."""
    torch.manual_seed(0)
    disc = DomainDiscriminator(4, hidden=16, dropout=0.0)
    fs = torch.randn(8, 4, requires_grad=True)
    ft = torch.randn(8, 4)
    loss, _ = domain_adversarial_loss(disc, fs, ft)
    (g_plain,) = torch.autograd.grad(loss, fs)
    loss_r, _ = domain_adversarial_loss(disc, gradient_reversal(fs, 0.5), ft)
    (g_rev,) = torch.autograd.grad(loss_r, fs)
    assert torch.allclose(g_rev, -0.5 * g_plain)
