"""Source-only (ERM): train on the labelled source, apply to the target unchanged.

The lower bound every adaptation method is measured against. Trained on the target's own labelled train split
it is the "oracle" (target-supervised) upper reference.
"""

from __future__ import annotations

from fer_lab.data.loading import Batch
from fer_lab.methods.base import METHODS, Method, SourceInput, classification_loss, pooled


@METHODS.register("source_only")
class SourceOnly(Method):
    needs_target = False

    def update(self, source: SourceInput, target: Batch | None, progress: float) -> dict[str, float]:
        xs = pooled(source)
        logits = self.classifier(self.features(xs)[self.hp.feature])
        # L = E_(x,y)~S [ CE(C(F(x)), y) ]
        loss = classification_loss(logits, xs["labels"])
        self.step(loss)
        acc = (logits.argmax(1) == xs["labels"]).float().mean()
        return {"loss": loss.item(), "cls": loss.item(), "src_acc": acc.item()}
