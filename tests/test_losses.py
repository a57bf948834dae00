import math

import pytest
import torch

from fer_lab.losses import (class_conditional_mmd, gaussian_kernel, kernel_bandwidths, kernel_matrices, mmd,
                            pairwise_sq_dists)


def _hand_mmd(xs, ys, wx=None, wy=None, kernels=5, mul=2.0):
    """Multi-kernel Gaussian MMD^2 written out with plain Python loops (DAN's bandwidth rule)."""
    pts = xs + ys
    n = len(pts)
    d2 = [[sum((a - b) ** 2 for a, b in zip(p, q)) for q in pts] for p in pts]
    base = sum(d2[i][j] for i in range(n) for j in range(n) if i != j) / (n * n - n)
    gammas = [base * mul ** (i - kernels // 2) for i in range(kernels)]

    def k(p, q):
        dd = sum((a - b) ** 2 for a, b in zip(p, q))
        return sum(math.exp(-dd / g) for g in gammas)

    wx = wx or [1.0] * len(xs)
    wy = wy or [1.0] * len(ys)
    wx = [w / sum(wx) for w in wx]
    wy = [w / sum(wy) for w in wy]
    sxx = sum(wx[i] * wx[j] * k(xs[i], xs[j]) for i in range(len(xs)) for j in range(len(xs)))
    syy = sum(wy[i] * wy[j] * k(ys[i], ys[j]) for i in range(len(ys)) for j in range(len(ys)))
    sxy = sum(wx[i] * wy[j] * k(xs[i], ys[j]) for i in range(len(xs)) for j in range(len(ys)))
    return sxx + syy - 2 * sxy


def test_pairwise_distances_and_bandwidths():
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    d2 = pairwise_sq_dists(x, x)
    assert d2.tolist() == [[0, 1, 9], [1, 0, 4], [9, 4, 0]]
    gam = kernel_bandwidths(d2)                                   # mean off-diagonal d2 = 28 / 6
    assert torch.allclose(gam, torch.tensor([14 / 3 / 4, 14 / 3 / 2, 14 / 3, 28 / 3, 56 / 3], dtype=torch.float64))
    assert torch.allclose(kernel_bandwidths(d2, 3, 3.0, bandwidth=1.0), torch.tensor([1 / 3, 1.0, 3.0],
                                                                                     dtype=torch.float64))
    k = gaussian_kernel(torch.tensor([0.0, 2.0]), [1.0, 2.0])
    assert torch.allclose(k, torch.tensor([2.0, math.exp(-2) + math.exp(-1)]))
    assert torch.allclose(gaussian_kernel(torch.tensor([2.0]), [1.0, 2.0], "mean"),
                          torch.tensor([(math.exp(-2) + math.exp(-1)) / 2]))


def test_mmd_matches_a_hand_computation():
    xs, ys = [[0.0, 1.0], [1.0, 0.5]], [[3.0, -1.0], [2.5, 0.0], [2.0, 2.0]]
    x, y = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    assert mmd(x, y).item() == pytest.approx(_hand_mmd(xs, ys), rel=1e-12)
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)
    v = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    assert mmd(x, y, w, v).item() == pytest.approx(_hand_mmd(xs, ys, [1, 3], [2, 0, 1]), rel=1e-12)


def test_uniform_weights_equal_plain_mmd():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 5, generator=g), torch.randn(9, 5, generator=g) + 0.7
    plain = mmd(x, y)
    assert torch.allclose(mmd(x, y, torch.full((12,), 3.0), torch.ones(9)), plain, atol=1e-6)
    # weights are normalised: scaling them changes nothing
    w = torch.rand(12, generator=g)
    assert torch.allclose(mmd(x, y, w), mmd(x, y, 10 * w), atol=1e-6)
    assert plain > 0 and mmd(x, x + 0.0) < 1e-6


def test_weights_move_the_estimate_and_an_empty_side_vanishes():
    x = torch.tensor([[0.0], [0.0], [5.0]])
    y = torch.tensor([[0.0], [0.1]])
    near = mmd(x, y, torch.tensor([1.0, 1.0, 0.0]))          # only the rows near the target count
    far = mmd(x, y, torch.tensor([0.0, 0.0, 1.0]))
    assert near < 0.05 < far
    # a side with all-zero weights: only the other side's self term is left
    kxx, kyy, kxy = kernel_matrices(x, y)
    zero = mmd(x, y, torch.zeros(3))
    assert torch.allclose(zero, kyy.mean())


def test_unbiased_and_linear_kernels():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    lin = mmd(x, y, kernel="linear")
    assert torch.allclose(lin, ((x.mean(0) - y.mean(0)) ** 2).sum())
    kxx, kyy, kxy = kernel_matrices(x, y, bandwidths=[2.0], reduction="mean")
    want = ((kxx.sum() - kxx.trace()) / 30 + (kyy.sum() - kyy.trace()) / 20 - 2 * kxy.mean())
    assert torch.allclose(mmd(x, y, bandwidths=[2.0], reduction="mean", unbiased=True), want)
    with pytest.raises(ValueError, match="takes no sample weights"):
        mmd(x, y, torch.ones(6), unbiased=True)
    with pytest.raises(ValueError, match="3 weights for 6 samples"):
        mmd(x, y, torch.ones(3))
    with pytest.raises(ValueError, match="unknown kernel 'poly'"):
        mmd(x, y, kernel="poly")
    with pytest.raises(ValueError, match="expected features"):
        mmd(x, y[:, :2])


def test_class_conditional_mmd_matches_per_pair_mmd():
    g = torch.Generator().manual_seed(2)
    xs, xt = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randn(8, 4, generator=g, dtype=torch.float64)
    ys = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])
    yt = torch.tensor([0, 1, 1, 0, 1, 1, 0, -1])              # no target row of class 2; the last row has none
    gam = [0.5, 1.0, 2.0]
    m, valid = class_conditional_mmd(xs, ys, xt, yt, 4, bandwidths=gam)
    assert m.shape == (4, 4) and valid.tolist() == [[True, True, False, False]] * 3 + [[False] * 4]
    for c in range(3):
        for d in range(2):
            want = mmd(xs[ys == c], xt[yt == d], bandwidths=gam)
            assert torch.allclose(m[c, d], want), (c, d)
    assert (m[~valid] == 0).all()
    # masks drop rows
    keep = torch.ones(10, dtype=torch.bool)
    keep[ys == 2] = False
    m2, valid2 = class_conditional_mmd(xs, ys, xt, yt, 4, mask_s=keep, bandwidths=gam)
    assert not valid2[2].any() and torch.allclose(m2[:2, :2], m[:2, :2])
    # nothing left on one side
    m3, valid3 = class_conditional_mmd(xs, ys, xt, torch.full((8,), -1), 4)
    assert not valid3.any() and (m3 == 0).all()


def test_matched_classes_are_closer_than_swapped_ones():
    g = torch.Generator().manual_seed(3)
    centres = torch.tensor([[0.0, 0.0], [6.0, 0.0]])
    ys, yt = torch.tensor([0] * 8 + [1] * 8), torch.tensor([0] * 6 + [1] * 6)
    xs = centres[ys] + 0.3 * torch.randn(16, 2, generator=g)
    xt = centres[yt] + 0.3 * torch.randn(12, 2, generator=g)
    m, valid = class_conditional_mmd(xs, ys, xt, yt, 2)
    assert valid.all() and m.diagonal().max() < m[0, 1] and m.diagonal().max() < m[1, 0]
