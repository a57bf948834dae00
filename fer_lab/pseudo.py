"""Pseudo-labelling with per-class dynamic thresholds from the class-wise learning effect (FlexMatch-style).

Used by AGLRLS (``fer_lab.methods.aglrls``) and reusable by any method that pseudo-labels target data with
several classifiers ("streams") at once. Notation for S streams, C classes and N target samples:

* every target sample keeps, per stream, the last label it was confidently predicted as (confidence
  ``max p >= p_cutoff``), or -1 while it never was: the **store** ``selected[S, N]``;
* the **class-wise learning effect** of stream s is ``sigma_s(k) = N_s(k) / max(max_k' N_s(k'), N_s(-1))``, where
  ``N_s(k)`` counts samples whose stored label is k and ``N_s(-1)`` those still unselected (FlexMatch's warm-up
  normalisation: while most samples are unselected every class's effect stays small). It is only recomputed
  while at least one sample is selected;
* the **dynamic threshold** is ``tau_s(k) = p_cutoff * M(sigma_s(k))``, with AGLRLS's mapping
  ``M(sigma) = ((sigma + 1) / 2) ** 2`` ("convex2" in the released code) so thresholds range over
  ``[p_cutoff / 4, p_cutoff]``; ``"fixed"`` (``M = 1``) gives the plain FixMatch threshold;
* a prediction ``y = argmax p`` is **accepted** when ``max p >= tau_s(y)``.

Order within one training step (as FlexMatch and the AGLRLS code): thresholds come from the store *before* the
batch, the mask is computed, then the batch's confident predictions enter the store. The store is emptied at
the start of every target epoch (AGLRLS resets it in every call of its training epoch).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

#: Threshold mappings ``M(sigma)``: AGLRLS uses ``convex2``; the others are FlexMatch's and FixMatch's.
MAPPINGS: dict[str, Callable[[Tensor], Tensor]] = {
    "convex2": lambda s: ((s + 1.0) / 2.0) ** 2,      # AGLRLS (Loss.ConsistencyLoss)
    "convex": lambda s: s / (2.0 - s),                # FlexMatch convex warping
    "linear": lambda s: s,                            # FlexMatch linear
    "fixed": lambda s: torch.ones_like(s),            # FixMatch: tau = p_cutoff for every class
}


def learning_effect(selected: Tensor, num_classes: int) -> Tensor:
    """Class-wise learning effect ``sigma [S, C]`` from a store ``selected [S, N]`` (or ``[N]`` -> ``[C]``).

    ``sigma_s(k) = N_s(k) / max(N_s(-1), N_s(0), ..., N_s(C-1))``. A stream with no selected sample gets zeros.
    """
    squeeze = selected.dim() == 1
    sel = selected.view(1, -1) if squeeze else selected
    s, _ = sel.shape
    counts = torch.zeros(s, num_classes + 1, dtype=torch.float32, device=sel.device)
    counts.scatter_add_(1, (sel + 1).long(), torch.ones_like(sel, dtype=torch.float32))  # column 0 = unselected
    denom = counts.max(dim=1, keepdim=True).values.clamp_min(1.0)
    sigma = counts[:, 1:] / denom
    sigma = torch.where(counts[:, 1:].sum(1, keepdim=True) > 0, sigma, torch.zeros_like(sigma))
    return sigma[0] if squeeze else sigma


def dynamic_threshold(sigma: Tensor, p_cutoff: float = 0.95, mapping: str = "convex2") -> Tensor:
    """Per-class thresholds ``tau = p_cutoff * M(sigma)`` (same shape as ``sigma``)."""
    if mapping not in MAPPINGS:
        raise ValueError(f"unknown threshold mapping {mapping!r}; known: {', '.join(MAPPINGS)}")
    return p_cutoff * MAPPINGS[mapping](sigma)


def confidence_mask(probs: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Accept each prediction whose confidence reaches its class's threshold.

    Args:
        probs: ``[..., B, C]`` probabilities (e.g. ``[S, B, C]``, one row block per stream).
        thresholds: ``[..., C]`` per-class thresholds (e.g. ``[S, C]``).

    Returns:
        ``(mask [..., B] bool, pseudo [..., B] int64, confidence [..., B])``.
    """
    conf, pseudo = probs.max(dim=-1)
    tau = thresholds.unsqueeze(-2).expand_as(probs).gather(-1, pseudo.unsqueeze(-1)).squeeze(-1)
    return conf >= tau, pseudo, conf


class PseudoLabelStore(nn.Module):
    """Per-stream, per-sample pseudo-label store with class-wise learning effect and dynamic thresholds.

    ``selected`` and ``sigma`` are buffers, so they travel with checkpoints (AGLRLS's inference needs the last
    ``sigma``); a loaded state of another size resizes the store.

    Args:
        num_streams: S, the classifiers that pseudo-label (AGLRLS: 7).
        num_classes: C.
        num_samples: N, the target training set size (0 until :meth:`resize` is called).
        p_cutoff: confidence that enters the store and the top threshold (AGLRLS and FlexMatch: 0.95).
        mapping: see :data:`MAPPINGS`.
    """

    def __init__(self, num_streams: int, num_classes: int, num_samples: int = 0, p_cutoff: float = 0.95,
                 mapping: str = "convex2") -> None:
        super().__init__()
        if mapping not in MAPPINGS:
            raise ValueError(f"unknown threshold mapping {mapping!r}; known: {', '.join(MAPPINGS)}")
        self.num_classes, self.p_cutoff, self.mapping = num_classes, float(p_cutoff), mapping
        self.register_buffer("selected", torch.full((num_streams, num_samples), -1, dtype=torch.int64))
        self.register_buffer("sigma", torch.zeros(num_streams, num_classes))

    @property
    def num_samples(self) -> int:
        return self.selected.shape[1]

    def resize(self, num_samples: int) -> None:
        """Size the store for ``num_samples`` target samples (emptied)."""
        self.selected = torch.full((self.selected.shape[0], int(num_samples)), -1, dtype=torch.int64,
                                   device=self.selected.device)

    def reset(self) -> None:
        """Start a new epoch: every sample unselected, every learning effect zero (AGLRLS resets both)."""
        self.selected.fill_(-1)
        self.sigma.zero_()

    def thresholds(self) -> Tensor:
        """Current per-stream, per-class thresholds ``[S, C]``."""
        return dynamic_threshold(self.sigma, self.p_cutoff, self.mapping)

    def refresh(self) -> Tensor:
        """Recompute ``sigma`` from the store (kept unchanged while nothing is selected); returns it."""
        if (self.selected >= 0).any():
            self.sigma.copy_(learning_effect(self.selected, self.num_classes))
        return self.sigma

    @torch.no_grad()
    def step(self, index: Tensor, probs: Tensor) -> dict[str, Tensor]:
        """One training step on a target batch: thresholds from the store, masks, then store update.

        Args:
            index: ``[B]`` rows of the batch in the target dataset.
            probs: ``[S, B, C]`` weak-view probabilities of every stream.

        Returns:
            ``mask [S, B]`` (bool), ``pseudo [S, B]``, ``confidence [S, B]``, ``thresholds [S, C]`` (used for this
            batch) and ``selected [S, B]`` (bool, entered the store).
        """
        if probs.dim() != 3 or probs.shape[0] != self.selected.shape[0] or probs.shape[2] != self.num_classes:
            raise ValueError(f"probs must be [S={self.selected.shape[0]}, B, C={self.num_classes}], "
                             f"got {tuple(probs.shape)}")
        if self.num_samples == 0:
            raise RuntimeError("PseudoLabelStore has no samples: call resize(len(target)) first")
        if int(index.max()) >= self.num_samples:
            raise IndexError(f"sample index {int(index.max())} outside a store of {self.num_samples}")
        sigma = self.refresh()
        tau = dynamic_threshold(sigma, self.p_cutoff, self.mapping)
        mask, pseudo, conf = confidence_mask(probs, tau)
        chosen = conf >= self.p_cutoff
        rows = self.selected[:, index]
        self.selected[:, index] = torch.where(chosen, pseudo, rows)
        return {"mask": mask, "pseudo": pseudo, "confidence": conf, "thresholds": tau, "selected": chosen}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D401 - nn.Module hook
        key = prefix + "selected"
        if key in state_dict and state_dict[key].shape != self.selected.shape:
            self.selected = torch.empty_like(state_dict[key], device=self.selected.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class PseudoLabelHistory:
    """Trainer callback: per-class thresholds, learning effects, coverage and precision of the pseudo labels.

    Works with any method that exposes ``streams`` and ``last_pseudo`` (the dict :meth:`PseudoLabelStore.step`
    returned for the last target batch, plus ``true_labels``), as AGLRLS does. Every ``every`` steps it appends
    ``{"step", "thresholds": {stream: [C]}, "sigma": {stream: [C]}, "coverage": {stream: f},
    "precision": {stream: f or None}}`` to :attr:`records`, coverage and precision pooled over the steps since the
    previous record. ``records`` plugs into :func:`fer_lab.analysis.thresholds.threshold_curves_figure`.
    """

    def __init__(self, every: int = 10, records: list[dict] | None = None) -> None:
        self.every = int(every)
        self.records: list[dict] = list(records or [])
        self._seen = 0
        self._accepted: Tensor | None = None
        self._hits: Tensor | None = None

    def on_step(self, trainer, step: int, logs: dict[str, float]) -> None:
        method = trainer.method
        last = getattr(method, "last_pseudo", None)
        if not last or logs.get("stage", 2.0) != 2.0:
            return
        mask = last["mask"].cpu()
        truth = last.get("true_labels")
        hits = mask & (last["pseudo"].cpu() == truth.cpu()) if truth is not None else torch.zeros_like(mask)
        self._accepted = mask.sum(1) + (self._accepted if self._accepted is not None else 0)
        self._hits = hits.sum(1) + (self._hits if self._hits is not None else 0)
        self._seen += mask.shape[1]
        if step % self.every:
            return
        streams = list(method.streams)
        tau, sigma = last["thresholds"].cpu(), method.pseudo_store.sigma.cpu()
        acc = self._accepted.tolist()
        self.records.append({
            "step": int(step),
            "thresholds": {s: tau[k].tolist() for k, s in enumerate(streams)},
            "sigma": {s: sigma[k].tolist() for k, s in enumerate(streams)},
            "coverage": {s: acc[k] / self._seen for k, s in enumerate(streams)},
            "precision": {s: (int(self._hits[k]) / acc[k] if acc[k] and truth is not None else None)
                          for k, s in enumerate(streams)},
        })
        self._seen, self._accepted, self._hits = 0, None, None

    def frame(self):
        """Long table ``step, stream, coverage, precision``."""
        import pandas as pd

        return pd.DataFrame([{"step": r["step"], "stream": s, "coverage": r["coverage"][s],
                              "precision": r["precision"][s]} for r in self.records for s in r["coverage"]])
