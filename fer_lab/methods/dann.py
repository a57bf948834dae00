"""DANN: domain-adversarial training through gradient reversal.

Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015 (and Ganin et al., JMLR 2016).

    min_{F,C} max_D   L_cls(C(F(x_s)), y_s) - lambda * L_dom(D(F(x)), d)                      (JMLR Eq. 9-10)

The min-max is one backward pass: a gradient reversal layer between F and D multiplies the discriminator's
gradient by -lambda_p, with lambda_p = 2 / (1 + exp(-10 p)) - 1 warming up over training progress p (Eq. 14).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fer_lab.data.loading import Batch
from fer_lab.methods.base import (METHODS, Hparams, Method, SourceInput, classification_loss, joint_forward,
                                  pooled)
from fer_lab.models import DomainDiscriminator, WarmStartGradientReverse, domain_adversarial_loss


@dataclass
class DANNHparams(Hparams):
    adv_weight: float = 1.0        # trade-off on the domain loss (the GRL coefficient does the warm-up)
    grl_alpha: float = 10.0        # lambda_p schedule steepness (JMLR Eq. 14)
    disc_hidden: int = 1024        # TLlib / CDAN discriminator width
    disc_layers: int = 2           # hidden layers (DANN paper's digit domain classifier: 1 of 100 units, no dropout)
    disc_lr_mult: float = 1.0
    disc_dropout: float = 0.5      # CDAN AdversarialNetwork: dropout 0.5, no BatchNorm
    disc_batch_norm: bool = False  # TLlib DomainDiscriminator: BatchNorm after each hidden layer (then dropout 0)


@METHODS.register("dann")
class DANN(Method):
    fresh_on_init = ("discriminator.", "grl.")      # stage 2 from a source-only stage 1: a new discriminator
    Hparams = DANNHparams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.discriminator = DomainDiscriminator(self.disc_input_dim(), hidden=self.hp.disc_hidden,
                                                 dropout=self.hp.disc_dropout, batch_norm=self.hp.disc_batch_norm,
                                                 layers=self.hp.disc_layers)
        self.grl = WarmStartGradientReverse(alpha=self.hp.grl_alpha)

    def disc_input_dim(self) -> int:
        return self.feature_dim

    def param_groups(self):
        return self.regrouped([(list(self.discriminator.parameters()), self.hp.disc_lr_mult)])

    def update(self, source: SourceInput, target: Batch | None, progress: float) -> dict[str, float]:
        xs = pooled(source)
        feats, n = joint_forward(self, xs, target)
        f = feats[self.hp.feature]
        logits = self.classifier(f)
        # L_cls = E_S [ CE(C(F(x_s)), y_s) ]
        cls = classification_loss(logits[:n], xs["labels"])
        adv, disc_acc = self.adversarial_loss(f, logits, n, progress)
        loss = cls + self.hp.adv_weight * adv
        self.step(loss)
        return {"loss": loss.item(), "cls": cls.item(), "adv": adv.item(), "disc_acc": float(disc_acc),
                "grl_coeff": self.grl.coeff(progress)}

    def adversarial_loss(self, f: Tensor, logits: Tensor, n: int, progress: float,
                         source_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The domain loss on features ``f`` (the first ``n`` rows are source); returns (loss, disc accuracy).
        ``source_weight`` ``[n]`` optionally weights the source rows (IWDAN's class-ratio weights)."""
        # L_dom = BCE(D(GRL_lambda_p(F(x))), d), source d=1, target d=0
        r = self.grl(f, progress)
        return domain_adversarial_loss(self.discriminator, r[:n], r[n:], source_weight, None)
