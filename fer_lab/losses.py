"""The MMD family, once: multi-kernel Gaussian MMD with optional per-sample weights, and class-conditional MMD.

Kernel (DAN, Long et al. ICML 2015; the ``guassian_kernel`` that MFSAN and LA-CMFER reuse)::

    k(x, y) = sum_{i=0}^{K-1} exp(-|x - y|^2 / gamma_i),   gamma_i = gamma_0 * mul^(i - K // 2)

with ``K = 5`` kernels, multiplier ``mul = 2`` and ``gamma_0`` the mean squared pairwise distance of the pooled
sample (off-diagonal pairs, no gradient through it). Explicit bandwidths ``gamma`` can be given instead, and the
kernels can be averaged instead of summed (``reduction="mean"``; the analysis figures do that).

Weighted MMD (LA-CMFER's sample-level alignment; plain MMD is the case of uniform weights ``1/n``)::

    MMD_w^2 = w_s^T K_ss w_s + w_t^T K_tt w_t - 2 w_s^T K_st w_t,     sum w_s = sum w_t = 1

This is the biased (V-statistic) estimate; ``unbiased=True`` (unweighted only) drops the diagonals of ``K_ss`` and
``K_tt`` (Gretton et al. 2012, Eq. 3).

Class-conditional MMD: :func:`class_conditional_mmd` gives the matrix ``M[c, c'] = MMD^2(S_c, T_c')`` between the
source samples of class ``c`` and the target samples of class ``c'`` from ONE kernel matrix (one-hot averaging
matrices, no loop over classes).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "class_conditional_mmd",
    "gaussian_kernel",
    "kernel_bandwidths",
    "kernel_matrices",
    "mmd",
    "pairwise_sq_dists",
]


def pairwise_sq_dists(x: Tensor, y: Tensor) -> Tensor:
    """``|x_i - y_j|^2`` for ``x [n, d]``, ``y [m, d]`` -> ``[n, m]`` (clamped at 0)."""
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return d.clamp_min(0.0)


def kernel_bandwidths(d2: Tensor, num_kernels: int = 5, multiplier: float = 2.0,
                      bandwidth: float | None = None) -> Tensor:
    """The ``num_kernels`` bandwidths ``gamma_0 * mul^(i - K // 2)`` around ``gamma_0``.

    ``gamma_0`` is ``bandwidth`` when given, else the mean of the off-diagonal entries of the pooled squared
    distance matrix ``d2 [N, N]`` (DAN's ``sum(L2) / (N^2 - N)``), detached. A zero mean (all points equal) is
    replaced by 1 so that the kernels stay finite.
    """
    if num_kernels < 1:
        raise ValueError(f"num_kernels must be >= 1, got {num_kernels}")
    if bandwidth is None:
        n = d2.shape[0]
        base = d2.detach().sum() / max(n * n - n, 1)
        base = torch.where(base > 0, base, torch.ones_like(base))
    else:
        base = torch.as_tensor(float(bandwidth), dtype=d2.dtype, device=d2.device)
    powers = torch.arange(num_kernels, dtype=d2.dtype, device=d2.device) - num_kernels // 2
    return base * float(multiplier) ** powers


def gaussian_kernel(d2: Tensor, bandwidths: Tensor | Sequence[float], reduction: str = "sum") -> Tensor:
    """``sum_i exp(-d2 / gamma_i)`` (or the mean over ``i`` with ``reduction="mean"``), same shape as ``d2``."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"fer_lab/losses.py: reduction must be 'sum' or 'mean', got {reduction!r}")
    gam = torch.as_tensor(bandwidths, dtype=d2.dtype, device=d2.device).reshape(-1)
    k = torch.zeros_like(d2)
    for g in gam:                                  # one [N, N] buffer, however many kernels
        k = k + torch.exp(-d2 / g)
    return k / len(gam) if reduction == "mean" else k


def kernel_matrices(x: Tensor, y: Tensor, kernel: str = "gaussian", num_kernels: int = 5, multiplier: float = 2.0,
                    bandwidth: float | None = None, bandwidths: Sequence[float] | Tensor | None = None,
                    reduction: str = "sum") -> tuple[Tensor, Tensor, Tensor]:
    """``(K_xx, K_yy, K_xy)`` of the multi-kernel Gaussian (bandwidths from the pooled sample ``[x; y]``, or the
    explicit ``bandwidths``) or of the linear kernel ``x . y`` (``kernel="linear"``)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"fer_lab/losses.py: expected features [n, d] and [m, d], got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    n = len(x)
    if kernel == "linear":
        return x @ x.T, y @ y.T, x @ y.T
    if kernel != "gaussian":
        raise ValueError(f"fer_lab/losses.py: unknown kernel {kernel!r}; use 'gaussian' or 'linear'")
    total = torch.cat([x, y])
    d2 = pairwise_sq_dists(total, total)
    gam = (torch.as_tensor(bandwidths, dtype=d2.dtype, device=d2.device) if bandwidths is not None
           else kernel_bandwidths(d2, num_kernels, multiplier, bandwidth))
    k = gaussian_kernel(d2, gam, reduction)
    return k[:n, :n], k[n:, n:], k[:n, n:]


def _normalised(w: Tensor | None, n: int, like: Tensor) -> Tensor:
    if w is None:
        return like.new_full((n,), 1.0 / max(n, 1))
    w = w.reshape(-1).to(like.dtype)
    if len(w) != n:
        raise ValueError(f"fer_lab/losses.py: {len(w)} weights for {n} samples")
    total = w.sum()
    return torch.where(total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(w))


def mmd(x: Tensor, y: Tensor, weights_x: Tensor | None = None, weights_y: Tensor | None = None, *,
        kernel: str = "gaussian", num_kernels: int = 5, multiplier: float = 2.0, bandwidth: float | None = None,
        bandwidths: Sequence[float] | Tensor | None = None, reduction: str = "sum",
        unbiased: bool = False) -> Tensor:
    """Squared MMD between ``x [n, d]`` and ``y [m, d]``, optionally with per-sample weights (a scalar tensor).

    Weights are normalised to sum to 1 on each side (uniform ``1/n`` when not given, which is the plain biased
    estimate); a side whose weights are all zero contributes nothing (its terms vanish). ``unbiased=True`` gives
    the unbiased estimate (no weights, at least 2 samples per side).
    """
    kxx, kyy, kxy = kernel_matrices(x, y, kernel, num_kernels, multiplier, bandwidth, bandwidths, reduction)
    n, m = len(x), len(y)
    if unbiased:
        if weights_x is not None or weights_y is not None:
            raise ValueError("fer_lab/losses.py: the unbiased MMD estimate takes no sample weights")
        if n < 2 or m < 2:
            raise ValueError(f"fer_lab/losses.py: the unbiased MMD needs at least 2 samples per side, got {n} and {m}")
        sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        return sxx + syy - 2.0 * kxy.mean()
    wx, wy = _normalised(weights_x, n, kxx), _normalised(weights_y, m, kyy)
    return wx @ kxx @ wx + wy @ kyy @ wy - 2.0 * wx @ kxy @ wy


def class_conditional_mmd(xs: Tensor, ys: Tensor, xt: Tensor, yt: Tensor, num_classes: int,
                          mask_s: Tensor | None = None, mask_t: Tensor | None = None, *, num_kernels: int = 5,
                          multiplier: float = 2.0, bandwidth: float | None = None,
                          bandwidths: Sequence[float] | Tensor | None = None,
                          reduction: str = "sum") -> tuple[Tensor, Tensor]:
    """Biased MMD^2 between every source class and every target class, from one kernel matrix.

    Args:
        xs, xt: features ``[n, d]``, ``[m, d]``.
        ys, yt: class of each row (labels or pseudo labels; negative = none).
        mask_s, mask_t: rows that take part (e.g. confident ones); default all rows with a class.
        bandwidths etc.: as :func:`kernel_matrices`; the bandwidth comes from the rows that take part.

    Returns:
        ``(M [C, C], valid [C, C])``: ``M[c, c'] = MMD^2(S_c, T_c')`` and whether both sets are non-empty
        (``M`` is 0 where not valid).
    """
    ms = (ys >= 0) if mask_s is None else (mask_s.bool() & (ys >= 0))
    mt = (yt >= 0) if mask_t is None else (mask_t.bool() & (yt >= 0))
    xs, ys, xt, yt = xs[ms], ys[ms], xt[mt], yt[mt]
    c = int(num_classes)
    if len(xs) == 0 or len(xt) == 0:
        zero = xs.new_zeros(c, c) if len(xs) else xt.new_zeros(c, c)
        return zero, torch.zeros(c, c, dtype=torch.bool, device=zero.device)
    kss, ktt, kst = kernel_matrices(xs, xt, "gaussian", num_kernels, multiplier, bandwidth, bandwidths, reduction)
    a_s = torch.nn.functional.one_hot(ys.long(), c).to(kss.dtype)                   # [n, C]
    a_t = torch.nn.functional.one_hot(yt.long(), c).to(kss.dtype)                   # [m, C]
    n_s, n_t = a_s.sum(0), a_t.sum(0)
    a_s, a_t = a_s / n_s.clamp_min(1.0), a_t / n_t.clamp_min(1.0)                    # column c averages class c
    ss = (a_s.T @ kss @ a_s).diagonal()                                              # [C]
    tt = (a_t.T @ ktt @ a_t).diagonal()                                              # [C]
    st = a_s.T @ kst @ a_t                                                           # [C, C]
    valid = (n_s > 0)[:, None] & (n_t > 0)[None, :]
    m = ss[:, None] + tt[None, :] - 2.0 * st
    return torch.where(valid, m, torch.zeros_like(m)), valid
