"""Adversarial domain-alignment pieces: gradient reversal, domain discriminator, CDAN conditioning, CDAN-E weights.

References:
    Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015 (DANN: gradient reversal
    and its coefficient schedule ``2 / (1 + exp(-10 p)) - 1``).
    Long et al., "Conditional Adversarial Domain Adaptation", NeurIPS 2018 (CDAN / CDAN-E: multilinear
    conditioning, its randomized version, entropy weights ``1 + exp(-H)``; code: thuml/CDAN ``network.py``,
    ``loss.py``).
    TLlib (thuml/Transfer-Learning-Library): ``GradientReverseLayer``, ``WarmStartGradientReverseLayer``,
    ``DomainDiscriminator``, ``MultiLinearMap``, ``RandomizedMultiLinearMap``.

Each piece is defined once here; methods (DANN, CDAN, AGLRLS, ...) compose them. The gradient reversal is applied
by the caller to the features before the discriminator, e.g.::

    grl = WarmStartGradientReverse(alpha=10.0)
    h = cdan_multilinear(torch.cat([f_s, f_t]), torch.cat([p_s, p_t]))
    h_s, h_t = grl(h, progress=step / total_steps).split([len(f_s), len(f_t)])
    loss, acc = domain_adversarial_loss(disc, h_s, h_t, entropy_weight(p_s), entropy_weight(p_t))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DomainDiscriminator",
    "GradientReversal",
    "GradientReversalFunction",
    "RandomizedMultilinear",
    "WarmStartGradientReverse",
    "cdan_multilinear",
    "domain_adversarial_loss",
    "entropy",
    "entropy_weight",
    "gradient_reversal",
    "grl_warmup",
]


# ---------------------------------------------------------------------------------------------------------------------
# gradient reversal
# ---------------------------------------------------------------------------------------------------------------------
class GradientReversalFunction(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``-coeff`` in the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, coeff: float) -> Tensor:  # type: ignore[override]
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        return grad_output.neg() * ctx.coeff, None


def gradient_reversal(x: Tensor, coeff: float = 1.0) -> Tensor:
    """Functional gradient reversal: ``y = x``, ``dL/dx = -coeff * dL/dy``."""
    return GradientReversalFunction.apply(x, coeff)


class GradientReversal(nn.Module):
    """Gradient reversal layer with a fixed coefficient (DANN; TLlib ``GradientReverseLayer``).

    Args:
        coeff: gradient multiplier (the reversed gradient is ``-coeff * grad``). It is a plain attribute and may be
            changed between steps.

    Shapes: any -> same.
    """

    def __init__(self, coeff: float = 1.0) -> None:
        super().__init__()
        self.coeff = float(coeff)

    def forward(self, x: Tensor) -> Tensor:
        return gradient_reversal(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"


def grl_warmup(progress: float, alpha: float = 10.0, lo: float = 0.0, hi: float = 1.0) -> float:
    """DANN's gradient-reversal coefficient schedule (TLlib ``WarmStartGradientReverseLayer``):

    ``lo + (hi - lo) * (2 / (1 + exp(-alpha * progress)) - 1)``.

    ``progress`` is the fraction of training done, in ``[0, 1]``; it rises from ``lo`` at 0 to about ``hi`` at 1
    (``hi - (hi - lo) * 9.1e-5`` for ``alpha = 10``). Negative progress is treated as 0; progress above 1 keeps
    approaching ``hi`` (AGLRLS uses ``progress = step / 10000`` with no upper bound).
    """
    p = max(float(progress), 0.0)
    return lo + (hi - lo) * (2.0 / (1.0 + math.exp(-alpha * p)) - 1.0)


class WarmStartGradientReverse(nn.Module):
    """Gradient reversal whose coefficient follows :func:`grl_warmup` of the training progress.

    The progress is explicit: pass it to :meth:`forward` (``grl(x, progress=0.3)``), or set the ``progress``
    attribute (e.g. from the training loop) and call ``grl(x)``. No global step counter is kept.

    Args:
        alpha, lo, hi: schedule parameters of :func:`grl_warmup`.
        progress: initial value of the ``progress`` attribute.
    """

    def __init__(self, alpha: float = 10.0, lo: float = 0.0, hi: float = 1.0, progress: float = 0.0) -> None:
        super().__init__()
        self.alpha, self.lo, self.hi = float(alpha), float(lo), float(hi)
        self.progress = float(progress)

    def coeff(self, progress: float | None = None) -> float:
        """The coefficient at ``progress`` (default: the ``progress`` attribute)."""
        p = self.progress if progress is None else progress
        return grl_warmup(p, self.alpha, self.lo, self.hi)

    def forward(self, x: Tensor, progress: float | None = None) -> Tensor:
        return gradient_reversal(x, self.coeff(progress))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, lo={self.lo}, hi={self.hi}, progress={self.progress}"


# ---------------------------------------------------------------------------------------------------------------------
# discriminator
# ---------------------------------------------------------------------------------------------------------------------
class DomainDiscriminator(nn.Sequential):
    """Domain discriminator MLP returning logits ``[B, 1]`` (source = 1, target = 0).

    ``layers`` (default two) hidden blocks ``Linear - [BatchNorm1d] - ReLU/LeakyReLU - Dropout`` and a final
    ``Linear(hidden, 1)``
    without sigmoid (use :func:`domain_adversarial_loss`, i.e. BCE with logits).

    Default: no BatchNorm, dropout 0.5 -- the CDAN ``AdversarialNetwork`` that the CD-FER benchmark and AGLRLS
    reuse (AGLRLS: LeakyReLU 0.2 -> ``leaky_slope=0.2``). It behaves the same whether source and target go through
    it together or separately and with any batch size. ``batch_norm=True`` gives TLlib's variant
    (``Linear - BN - ReLU``); then feed source and target in ONE call (as :func:`domain_adversarial_loss` does), or
    BN statistics become domain-specific, and set ``dropout=0`` to match TLlib exactly.

    Args:
        in_dim: input feature dimension.
        hidden: hidden width (CDAN: 1024; AGLRLS: 512).
        dropout: dropout probability after each hidden block.
        batch_norm: insert BatchNorm1d after each hidden Linear.
        leaky_slope: 0 for ReLU, otherwise the LeakyReLU negative slope.
        layers: number of hidden blocks (2: CDAN / TLlib; 1 with ``hidden=100``, no dropout: the DANN paper's
            domain classifier for digits).

    Shapes: ``[B, in_dim] -> [B, 1]``.
    """

    def __init__(self, in_dim: int, hidden: int = 1024, dropout: float = 0.5, batch_norm: bool = False,
                 leaky_slope: float = 0.0, layers: int = 2) -> None:
        if layers < 1:
            raise ValueError(f"a domain discriminator needs at least one hidden layer, got {layers}")
        blocks: list[nn.Module] = []
        d = in_dim
        for _ in range(layers):
            blocks.append(nn.Linear(d, hidden, bias=not batch_norm))
            if batch_norm:
                blocks.append(nn.BatchNorm1d(hidden))
            blocks.append(nn.LeakyReLU(leaky_slope, inplace=True) if leaky_slope else nn.ReLU(inplace=True))
            if dropout > 0:
                blocks.append(nn.Dropout(dropout))
            d = hidden
        blocks.append(nn.Linear(hidden, 1))
        super().__init__(*blocks)
        self.in_dim = int(in_dim)


# ---------------------------------------------------------------------------------------------------------------------
# CDAN conditioning
# ---------------------------------------------------------------------------------------------------------------------
def cdan_multilinear(features: Tensor, probs: Tensor, detach_probs: bool = True) -> Tensor:
    """CDAN multilinear map: the flattened outer product of class probabilities and features.

    ``out[b, c * d + k] = probs[b, c] * features[b, k]`` (class-major, as CDAN's ``torch.bmm(softmax.unsqueeze(2),
    feature.unsqueeze(1))`` and TLlib's ``MultiLinearMap``).

    Args:
        features: ``[B, d]``.
        probs: ``[B, C]`` class probabilities (softmax outputs).
        detach_probs: stop the gradient through ``probs``, as both the official CDAN code and TLlib do.

    Returns:
        ``[B, C * d]``.
    """
    if detach_probs:
        probs = probs.detach()
    return torch.bmm(probs.unsqueeze(2), features.unsqueeze(1)).flatten(1)


class RandomizedMultilinear(nn.Module):
    """CDAN's randomized multilinear map for large ``d * C``:
    ``(features @ R_f) * (probs @ R_g) / sqrt(out_dim)`` with fixed Gaussian ``R_f [d, out_dim]``,
    ``R_g [C, out_dim]`` (TLlib ``RandomizedMultiLinearMap``). The matrices are buffers: drawn once from ``seed``,
    saved in the state dict, moved with ``.to()``, never trained.

    Args:
        d: feature dimension.
        num_classes: number of classes ``C``.
        out_dim: output dimension (CDAN: 1024).
        seed: seed of the random matrices.
        detach_probs: stop the gradient through ``probs`` (as in CDAN).

    Shapes: ``features [B, d], probs [B, C] -> [B, out_dim]``.
    """

    def __init__(self, d: int, num_classes: int, out_dim: int = 1024, seed: int = 0, detach_probs: bool = True):
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("Rf", torch.randn(d, out_dim, generator=g))
        self.register_buffer("Rg", torch.randn(num_classes, out_dim, generator=g))
        self.out_dim = int(out_dim)
        self.detach_probs = bool(detach_probs)

    def forward(self, features: Tensor, probs: Tensor) -> Tensor:
        if self.detach_probs:
            probs = probs.detach()
        return (features @ self.Rf.to(features.dtype)) * (probs @ self.Rg.to(probs.dtype)) / math.sqrt(self.out_dim)

    def extra_repr(self) -> str:
        return f"d={self.Rf.shape[0]}, num_classes={self.Rg.shape[0]}, out_dim={self.out_dim}"


# ---------------------------------------------------------------------------------------------------------------------
# entropy weights
# ---------------------------------------------------------------------------------------------------------------------
def entropy(probs: Tensor, eps: float = 1e-12) -> Tensor:
    """Shannon entropy (nats) per row: ``-sum_c p_c log p_c``; ``[B, C] -> [B]``, in ``[0, log C]``.
    ``p log p`` is taken as 0 at ``p = 0`` (log argument clamped at ``eps``), so the value is never negative."""
    return -(probs * probs.clamp_min(eps).log()).sum(dim=1)


def entropy_weight(probs: Tensor) -> Tensor:
    """CDAN-E sample weight ``1 + exp(-H(p))``, detached; ``[B, C] -> [B]``, in ``[1 + 1/C, 2]`` (2 for one-hot)."""
    with torch.no_grad():
        return 1.0 + torch.exp(-entropy(probs))


# ---------------------------------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------------------------------
def domain_adversarial_loss(disc: nn.Module, f_s: Tensor, f_t: Tensor, weight_s: Tensor | None = None,
                            weight_t: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Domain classification loss of ``disc`` (BCE with logits; source label 1, target label 0).

    Source and target go through ``disc`` in one concatenated batch. The caller applies gradient reversal to the
    features beforehand (see the module docstring); this function only scores the discriminator.

    Weights (CDAN-E): each domain's weights are normalised to mean 1 within the domain (``w / w.sum() * B_d``) and
    the loss is the weighted mean over all ``B_s + B_t`` samples. With ``B_s == B_t`` this equals the official
    CDAN normalisation (``sum_s w l / sum_s w + sum_t w l / sum_t w``, halved), i.e. the mean of the two domains'
    weighted means. A missing weight tensor means uniform weights for that domain. Without weights it is plain BCE
    averaged over the concatenated batch.

    Args:
        disc: module mapping ``[N, d]`` to logits ``[N, 1]`` (or ``[N]``).
        f_s, f_t: source / target inputs of the discriminator, ``[B_s, d]`` and ``[B_t, d]``.
        weight_s, weight_t: optional non-negative per-sample weights ``[B_s]`` / ``[B_t]`` (treated as constants).

    Returns:
        ``(loss, accuracy)``: the scalar loss, and the discriminator's accuracy on this batch (detached 0-dim
        tensor in ``[0, 1]``, threshold at logit 0) for diagnostics.
    """
    bs, bt = f_s.shape[0], f_t.shape[0]
    logits = disc(torch.cat([f_s, f_t], dim=0)).reshape(-1)
    if logits.shape[0] != bs + bt:
        raise ValueError(f"discriminator must return one logit per sample, got {tuple(logits.shape)}")
    labels = torch.cat([logits.new_ones(bs), logits.new_zeros(bt)])
    if weight_s is None and weight_t is None:
        loss = F.binary_cross_entropy_with_logits(logits, labels)
    else:
        ws = _normalised(weight_s, bs, logits)
        wt = _normalised(weight_t, bt, logits)
        per_sample = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        loss = (per_sample * torch.cat([ws, wt])).sum() / (bs + bt)
    with torch.no_grad():
        acc = ((logits > 0).to(labels.dtype) == labels).to(logits.dtype).mean()
    return loss, acc


def _normalised(w: Tensor | None, n: int, like: Tensor) -> Tensor:
    if w is None:
        return like.new_ones(n)
    w = w.detach().reshape(-1).to(like.dtype)
    if w.shape[0] != n:
        raise ValueError(f"weight has {w.shape[0]} entries for {n} samples")
    return w / w.sum().clamp_min(torch.finfo(w.dtype).tiny) * n
