"""Label shift: the class-ratio weights ``w_y = p_T(y) / p_S(y)`` estimated from unlabelled target data.

Under label shift the class prior changes between domains (SynthFER ``wild`` and RAF-DB: 39 % happiness;
``lab``, JAFFE, KDEF: balanced). A source-trained classifier's confusion then links the two priors, which is how
the weights are found without target labels (black-box shift estimation, Lipton, Wang & Smola, ICML 2018)::

    mu = C w,   C[i, j] = p_S(yhat = i, y = j),   mu[i] = p_T(yhat = i)                      (BBSE identity)

Combes, Zhao, Wang & Gordon ("Domain Adaptation with Conditional Distribution Matching and Generalized Label
Shift", NeurIPS 2020) use the same system in feature space, solved as a quadratic programme with the weights kept
a valid density ratio, re-solved once per epoch from that epoch's statistics and smoothed by a moving average::

    w = argmin_w ||C w - mu||^2   s.t.  0 <= w_y <= w_max,  sum_y w_y p_S(y) = 1               (IWDAN's weight QP)
    w <- ma * w + (1 - ma) * w_new                                                      (default ma = 0.5)

``C`` and ``mu`` are accumulated from soft predictions (softmax rows), as the released code does; ``p_S(y)`` is
``C``'s column sum, so no separate source prior is kept. The upper bound ``w_max`` (an addition: the paper's QP
has none) keeps early, poorly calibrated solves from putting a whole batch's weight on one class.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor, nn

__all__ = ["ImportanceWeights", "solve_importance_weights"]


def solve_importance_weights(joint: Tensor, target_marginal: Tensor, max_weight: float = 10.0) -> Tensor:
    """The class-ratio weights ``w`` that best explain the target's prediction marginal (the QP above).

    Args:
        joint: ``[C, C]`` source joint of prediction (rows) and true label (columns), ``C[i, j] = p_S(yhat=i, y=j)``;
            any non-negative scale (it is normalised to sum 1).
        target_marginal: ``[C]`` target prediction marginal ``p_T(yhat)``; any non-negative scale.
        max_weight: upper bound on every ``w_y`` (at least 1, so that ``w = 1`` stays feasible).

    Returns:
        ``[C]`` float32 weights with ``0 <= w <= max_weight`` and ``sum_y w_y p_S(y) = 1``. A class absent from the
        source statistics has ``p_S(y) = 0``, so nothing constrains its weight; it is returned as 1.
    """
    if max_weight < 1:
        raise ValueError(f"max_weight must be at least 1 (w = 1 must be feasible), got {max_weight}")
    c = joint.detach().double().cpu().numpy()
    mu = target_marginal.detach().double().cpu().numpy()
    if c.ndim != 2 or c.shape[0] != c.shape[1] or mu.shape != (c.shape[0],):
        raise ValueError(f"expected joint [C, C] and target_marginal [C], got {c.shape} and {mu.shape}")
    if (c < 0).any() or (mu < 0).any() or c.sum() <= 0 or mu.sum() <= 0:
        raise ValueError("joint and target_marginal must be non-negative with a positive sum")
    c, mu = c / c.sum(), mu / mu.sum()
    prior = c.sum(0)
    seen = prior > 0
    a, p = c[:, seen], prior[seen]
    res = minimize(lambda w: float(np.sum((a @ w - mu) ** 2)), np.ones(int(seen.sum())),
                   jac=lambda w: 2.0 * a.T @ (a @ w - mu), method="SLSQP",
                   bounds=[(0.0, float(max_weight))] * int(seen.sum()),
                   constraints=[{"type": "eq", "fun": lambda w: float(p @ w - 1.0), "jac": lambda w: p}],
                   options={"ftol": 1e-12, "maxiter": 200})
    w = np.ones(c.shape[0])
    w[seen] = np.clip(res.x, 0.0, max_weight)
    w[seen] /= p @ w[seen]  # exact normalisation after the solver's tolerance
    return torch.from_numpy(w).float()


class ImportanceWeights(nn.Module):
    """Running estimate of ``w_y = p_T(y) / p_S(y)`` for a method: accumulate, re-solve, smooth.

    ``observe`` adds one step's soft predictions to the statistics of ``C`` and ``mu``; ``refresh`` solves the QP
    from them, blends the result into ``weights`` (``ma * old + (1 - ma) * new``) and starts new statistics.
    Everything is a buffer, so the estimate travels with checkpoints and a resumed run continues it exactly.

    Args:
        num_classes: ``C``.
        max_weight: bound on each weight (see :func:`solve_importance_weights`).

    >>> iw = ImportanceWeights(3)
    >>> iw.observe(torch.eye(3), torch.arange(3), torch.tensor([[1., 0, 0], [1, 0, 0], [0, 1, 0]]))
    >>> iw.refresh(ma=0.0).round(decimals=2).tolist()
    [2.0, 1.0, 0.0]
    """

    def __init__(self, num_classes: int, max_weight: float = 10.0) -> None:
        super().__init__()
        self.num_classes, self.max_weight = int(num_classes), float(max_weight)
        self.register_buffer("weights", torch.ones(num_classes))
        self.register_buffer("joint", torch.zeros(num_classes, num_classes, dtype=torch.float64))
        self.register_buffer("target_marginal", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def observe(self, source_probs: Tensor, source_labels: Tensor, target_probs: Tensor) -> None:
        """Add a step: source softmax rows ``[B_s, C]`` with their labels ``[B_s]`` (rows labelled -1 are left
        out), and target softmax rows ``[B_t, C]``."""
        keep = source_labels >= 0
        onehot = nn.functional.one_hot(source_labels[keep], self.num_classes).double()
        self.joint += source_probs[keep].double().T @ onehot          # sum of p(yhat | x) 1[y]
        self.target_marginal += target_probs.double().sum(0)          # sum of p(yhat | x_t)
        self.steps += 1

    @torch.no_grad()
    def refresh(self, ma: float = 0.5) -> Tensor:
        """Solve for new weights from the statistics since the last refresh, smooth them into ``weights`` and
        reset the statistics. Without statistics (nothing observed) the weights stay as they are."""
        if self.joint.sum() > 0 and self.target_marginal.sum() > 0:
            new = solve_importance_weights(self.joint, self.target_marginal, self.max_weight)
            self.weights.mul_(ma).add_((1.0 - ma) * new.to(self.weights.device))
        self.joint.zero_()
        self.target_marginal.zero_()
        return self.weights.clone()

    def sample_weights(self, labels: Tensor) -> Tensor:
        """``w_{y_i}`` for each labelled row (0 for rows labelled -1); ``[B]``, no gradient."""
        return torch.where(labels >= 0, self.weights[labels.clamp_min(0)], torch.zeros_like(self.weights[:1]))
