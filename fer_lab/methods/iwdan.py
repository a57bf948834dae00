"""IWDAN: DANN with importance weights for label shift.

Combes, Zhao, Wang, Gordon, "Domain Adaptation with Conditional Distribution Matching and Generalized Label
Shift", NeurIPS 2020.

DANN matches the feature marginals p_S(z) and p_T(z). When the class priors differ, matching them forces target
faces of a frequent class onto the features of other classes: with a balanced source and RAF-DB's prior (39 %
happiness) even perfect alignment with a perfect classifier tops out at sum_y min(p_S(y), p_T(y)) = 67 %
(see ``fer_lab.label_shift``). IWDAN instead matches the *reweighted* source, sum_y w_y p_S(z | y), to the target,
with w_y = p_T(y) / p_S(y) estimated from the classifier's confusion on the source and its prediction marginal on
the target (:class:`fer_lab.label_shift.ImportanceWeights`)::

    L_cls = 1/n sum_i w_{y_i} CE(C(F(x_i)), y_i)                                        (IWDAN, Algorithm 1)
    L_dom = BCE(D(GRL(F(x))), d) with each source row weighted by w_{y_i}               (IWDAN, Algorithm 1)
    w     = argmin ||C w - mu||^2, re-solved once per target epoch                      (weight QP)

With w = 1 (equal priors, or before the first solve) this is exactly DANN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch.nn.functional as F

from fer_lab.data.loading import Batch
from fer_lab.label_shift import ImportanceWeights
from fer_lab.labels import EXPRESSIONS
from fer_lab.methods.base import METHODS, SourceInput, classification_loss, joint_forward, pooled
from fer_lab.methods.dann import DANN, DANNHparams


@dataclass
class IWDANHparams(DANNHparams):
    iw_every: int = 0                # steps between weight solves; 0 = one target epoch (the paper's schedule)
    iw_ma: float = 0.5               # moving average of the weights across solves
    iw_max: float = 10.0             # upper bound on each class weight (fer-lab's addition to the QP)
    weight_classifier: bool = True   # weight the source classification loss too (Algorithm 1)


@METHODS.register("iwdan")
class IWDAN(DANN):
    fresh_on_init = DANN.fresh_on_init + ("importance.",)
    Hparams = IWDANHparams
    summary = "IWDAN (Combes et al. 2020): DANN with class-ratio weights estimated for label shift."

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.importance = ImportanceWeights(self.num_classes, max_weight=self.hp.iw_max)
        self.refresh_every = self.hp.iw_every or 100  # until the trainer tells the target epoch (setup_data)

    def setup_data(self, source_sizes: Sequence[int], target_size: int | None, batch_size: int) -> None:
        if not self.hp.iw_every and target_size:
            self.refresh_every = max(1, target_size // batch_size)

    def update(self, source: SourceInput, target: Batch | None, progress: float) -> dict[str, float]:
        xs = pooled(source)
        feats, n = joint_forward(self, xs, target)
        f = feats[self.hp.feature]
        logits = self.classifier(f)
        y = xs["labels"]
        w = self.importance.sample_weights(y)  # w_{y_i}
        # L_cls = 1/n sum_i w_{y_i} CE(C(F(x_i)), y_i)
        if self.hp.weight_classifier:
            cls = (F.cross_entropy(logits[:n], y, ignore_index=-1, reduction="none") * w).mean()
        else:
            cls = classification_loss(logits[:n], y)
        # L_dom: BCE(D(GRL(F(x))), d), source rows weighted by w_{y_i}, target rows by 1
        adv, disc_acc = self.adversarial_loss(f, logits, n, progress, source_weight=w)
        loss = cls + self.hp.adv_weight * adv
        self.step(loss)
        # statistics of C = p_S(yhat, y) and mu = p_T(yhat); re-solve w once per target epoch
        probs = logits.detach().softmax(1)
        self.importance.observe(probs[:n], y, probs[n:])
        if int(self.importance.steps) % self.refresh_every == 0:
            self.importance.refresh(self.hp.iw_ma)
        logs = {"loss": loss.item(), "cls": cls.item(), "adv": adv.item(), "disc_acc": float(disc_acc),
                "grl_coeff": self.grl.coeff(progress)}
        logs.update({f"w_{name}": float(v) for name, v in zip(EXPRESSIONS, self.importance.weights)})
        return logs
