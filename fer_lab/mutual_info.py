"""Mutual information between two feature parts: the CLUB upper bound (a variational estimator).

Cheng, Hao, Dai, Liu, Gan, Carin, "CLUB: A Contrastive Log-ratio Upper Bound of Mutual Information", ICML 2020.

A small network models the conditional ``q(y | x) = N(mu(x), diag sigma^2(x))``. With it,

    I_CLUB(x; y) = E_p(x,y)[log q(y|x)] - E_p(x) E_p(y)[log q(y|x)]                              (CLUB Eq. 4)

which is an upper bound of ``I(x; y)`` when ``q`` is the true conditional ``p(y|x)`` and, by the paper's Theorem 3.2,
whenever ``q`` is close enough to it (a KL condition); it is zero for independent parts and grows with the
dependence (for unit Gaussians with correlation ``rho`` per dimension and the exact ``q`` it is
``rho^2 / (1 - rho^2)`` per dimension, against the true ``-log(1 - rho^2) / 2``: loose, but monotone).
``q`` is fitted by maximising ``E log q(y|x)`` on the paired samples (:meth:`CLUB.learning_loss`), and the
encoders that produce ``x`` and ``y`` minimise the bound (:meth:`CLUB.forward`). With the Gaussian ``q`` the
``log sigma`` and constant terms cancel between the two expectations, and the mean over all ``B x B`` negative pairs
has a closed form in ``O(B d)``:
``mean_j (y_j - mu_i)^2 = mu_i^2 - 2 mu_i mean(y) + mean(y^2)`` per dimension.

Why CLUB and not a MINE-style critic: the quantity is *minimised* here (DMSRL drives the mutual information between
the domain-invariant and the domain-specific part of a feature down), and CLUB bounds it from above, so pushing the
estimate down pushes the true value down; MINE and InfoNCE bound it from below, so minimising them can lower the
bound while the information stays. CLUB also needs no moving-average bias correction, has low variance at the
batch sizes a CPU run affords (16-64), and its own training is a plain regression (stable, a few hundred steps).

Usage inside a training step (one backward pass serves both objectives)::

    club = CLUB(x_dim, y_dim)
    loss = task_loss + weight * club(x, y) + club.learning_loss(x, y)

``club(x, y)`` uses the estimator's parameters *detached*, so its gradient reaches only the encoders of ``x`` and
``y``; ``learning_loss`` detaches ``x`` and ``y``, so its gradient reaches only the estimator. Offline,
:func:`estimate_mi` fits a fresh estimator to a sample and reports the bound on held-out pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["CLUB", "estimate_mi", "gaussian_mi"]


def _check_pair(x: Tensor, y: Tensor, x_dim: int, y_dim: int) -> None:
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"fer_lab/mutual_info.py: expected x [B, d_x] and y [B, d_y] with the same B, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[1] != x_dim or y.shape[1] != y_dim:
        raise ValueError(f"fer_lab/mutual_info.py: CLUB built for x of dim {x_dim} and y of dim {y_dim}, got "
                         f"{x.shape[1]} and {y.shape[1]}")
    if x.shape[0] < 2:
        raise ValueError("fer_lab/mutual_info.py: CLUB needs at least 2 paired samples for its negative pairs")


class CLUB(nn.Module):
    """Contrastive log-ratio upper bound of ``I(x; y)`` with a Gaussian variational ``q(y | x)``.

    Args:
        x_dim, y_dim: dimensions of the two parts.
        hidden: width of the two-layer networks for ``mu(x)`` and ``log sigma^2(x)`` (CLUB's reference code:
            ``hidden_size`` MLPs with ReLU, ``tanh`` on the log-variance).

    Shapes: ``forward(x [B, x_dim], y [B, y_dim]) -> []`` (the bound, in nats, summed over the dimensions of ``y``).
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.x_dim, self.y_dim = int(x_dim), int(y_dim)
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim))
        self.logvar = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim), nn.Tanh())

    def conditional(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu(x), log sigma^2(x))``, each ``[B, y_dim]``."""
        return self.mu(x), self.logvar(x)

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """``mean_i log q(y_i | x_i)`` up to the constant ``-d/2 log 2 pi``: the estimator's fitting objective."""
        _check_pair(x, y, self.x_dim, self.y_dim)
        mu, logvar = self.conditional(x)
        return (-(y - mu) ** 2 / logvar.exp() - logvar).sum(1).mean() / 2.0

    def learning_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Negative log-likelihood of the pairs with ``x`` and ``y`` detached: trains the estimator only."""
        return -self.log_likelihood(x.detach(), y.detach())

    def bound(self, x: Tensor, y: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """``I_CLUB`` from given ``mu(x), log sigma^2(x)``: positive pairs minus the mean over all ``B^2`` pairs."""
        inv_var = (-logvar).exp()
        positive = -((y - mu) ** 2 * inv_var).sum(1)                                    # [B]
        y_mean, y_sq = y.mean(0, keepdim=True), (y ** 2).mean(0, keepdim=True)
        negative = -((mu ** 2 - 2 * mu * y_mean + y_sq) * inv_var).sum(1)               # [B]: mean over j
        return (positive - negative).mean() / 2.0

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The bound with the estimator's parameters detached (gradients reach ``x`` and ``y`` only)."""
        _check_pair(x, y, self.x_dim, self.y_dim)
        mu, logvar = (functional_call(net, {k: v.detach() for k, v in net.named_parameters()}, (x,))
                      for net in (self.mu, self.logvar))
        return self.bound(x, y, mu, logvar)


def estimate_mi(x: Tensor, y: Tensor, steps: int = 300, hidden: int = 64, lr: float = 3e-3, holdout: float = 0.5,
                batch_size: int = 256, seed: int = 0, max_dims: int | None = None) -> float:
    """Fit a fresh :class:`CLUB` on part of the pairs ``(x, y)`` and return its bound on the rest (nats).

    Both parts are standardised per dimension first (MI is invariant to that); constant dimensions (e.g. dead ReLU
    units) carry no information and are left out (no dimension left: 0). Deterministic for a seed; does not touch
    the global RNG.

    Args:
        x, y: ``[N, d_x]`` and ``[N, d_y]`` paired samples (N >= 4).
        steps: Adam steps on minibatches of the fitting half.
        holdout: share of the pairs kept out of fitting, on which the bound is evaluated.
        max_dims: keep only each part's top principal components (a few hundred samples cannot fit a conditional
            Gaussian over 128 dimensions; a function of each part carries no more information than the part).
    """
    x, y = torch.as_tensor(x).detach().float().cpu(), torch.as_tensor(y).detach().float().cpu()
    if x.dim() != 2 or y.dim() != 2 or len(x) != len(y) or len(x) < 4:
        raise ValueError(f"fer_lab/mutual_info.py: estimate_mi needs x [N, d_x], y [N, d_y] with the same N >= 4, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(x), generator=g)
    n_eval = min(len(x) - 2, max(2, int(round(holdout * len(x)))))
    fit, ev = order[n_eval:], order[:n_eval]
    x, y = _standardised(x, max_dims), _standardised(y, max_dims)
    if x.shape[1] == 0 or y.shape[1] == 0:
        return 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        club = CLUB(x.shape[1], y.shape[1], hidden)
    opt = torch.optim.Adam(club.parameters(), lr=lr)
    for _ in range(int(steps)):
        rows = fit[torch.randint(len(fit), (min(batch_size, len(fit)),), generator=g)]
        loss = club.learning_loss(x[rows], y[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(club(x[ev], y[ev]))


def _standardised(x: Tensor, max_dims: int | None = None, eps: float = 1e-6) -> Tensor:
    std = x.std(0)
    keep = std > eps * max(1.0, float(x.abs().max()))
    x = (x[:, keep] - x[:, keep].mean(0)) / std[keep]
    if max_dims is not None and x.shape[1] > max_dims:
        _, _, v = torch.linalg.svd(x.double(), full_matrices=False)
        x = (x.double() @ v[:max_dims].T).float()
        x = x / x.std(0).clamp_min(eps)
    return x


def gaussian_mi(rho: float, dims: int = 1) -> float:
    """Exact ``I(x; y)`` in nats for ``dims`` independent pairs of unit Gaussians with correlation ``rho``:
    ``-dims/2 log(1 - rho^2)`` (a reference value for tests and notebooks)."""
    import math

    return -0.5 * dims * math.log(1.0 - rho ** 2)
