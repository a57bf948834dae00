"""CDAN-E: conditional adversarial domain adaptation with entropy conditioning.

Long, Cao, Wang, Jordan, "Conditional Adversarial Domain Adaptation", NeurIPS 2018.

The discriminator sees the multilinear map h = f (x) g of the feature f and the classifier's prediction
g = softmax(C(f)) (Eq. 4), so it aligns class-conditional distributions. CDAN-E weights each example by
w = 1 + exp(-H(g)) (Eq. 8), so confident (low-entropy) predictions count more:

    min_{F,C} L_cls - lambda * E[ w * BCE(D(h), d) ]                                          (Eq. 8-9)

The CD-FER benchmark's AGRA and AGLRLS use this loss (``methodOfDAN='CDAN-E'``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fer_lab.methods.base import METHODS
from fer_lab.methods.dann import DANN, DANNHparams
from fer_lab.models import RandomizedMultilinear, cdan_multilinear, domain_adversarial_loss, entropy_weight


@dataclass
class CDANHparams(DANNHparams):
    entropy_conditioning: bool = True   # CDAN-E (True) or plain CDAN (False)
    randomized: bool = False            # randomized multilinear map (CDAN Eq. 6) instead of the full outer product
    randomized_dim: int = 1024


@METHODS.register("cdan")
class CDAN(DANN):
    fresh_on_init = DANN.fresh_on_init + ("multilinear.",)
    Hparams = CDANHparams

    def disc_input_dim(self) -> int:
        # called by DANN.__init__ before the discriminator is built
        if self.hp.randomized:
            self.multilinear = RandomizedMultilinear(self.feature_dim, self.num_classes, self.hp.randomized_dim)
            return self.hp.randomized_dim
        return self.feature_dim * self.num_classes

    def conditioned(self, f: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        # h = f (x) g  (Eq. 4), or its randomized approximation (Eq. 6)
        return self.multilinear(f, probs) if self.hp.randomized else cdan_multilinear(f, probs)

    def adversarial_loss(self, f: torch.Tensor, logits: torch.Tensor, n: int, progress: float,
                         source_weight: torch.Tensor | None = None):
        probs = logits.softmax(1).detach()
        h = self.grl(self.conditioned(f, probs), progress)
        # w = 1 + exp(-H(g))  (Eq. 8); None = plain CDAN
        w = entropy_weight(probs) if self.hp.entropy_conditioning else None
        ws, wt = (None, None) if w is None else (w[:n], w[n:])
        if source_weight is not None:  # extra per-source-row weights (e.g. class ratios) multiply in
            ws = source_weight if ws is None else ws * source_weight
        # E[ w * BCE(D(h), d) ], weights normalised per domain  (Eq. 9)
        return domain_adversarial_loss(self.discriminator, h[:n], h[n:], ws, wt)
