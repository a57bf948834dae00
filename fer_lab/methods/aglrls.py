"""AGLRLS: adaptive global-local representation learning and selection.

Gao, Xie, Hu, Chen, Lin, "Adaptive Global-Local Representation Learning and Selection for Cross-Domain Facial
Expression Recognition", IEEE TMM 26:6676-6688, 2024 (arXiv 2401.11085); code: yao-papercodes/AGLRLS.

Seven feature streams i = 0..6 -- global f_0, the five landmark patches f_1..f_5, the fused concatenation f_6 --
each with its classifier G_i and its CDAN-E discriminator D_i (the paper's figure; the released code shares one
head and one discriminator across the five patches: ``shared_heads=True``).

Stage 1, source only (``progress < stage1_fraction``)::

    L_1 = sum_i a_i CE(G_i(f_i^s), y^s),   a = (5, 1, 1, 1, 1, 1, 5)                          (stage-1 SCL)

Stage 2, transfer::

    L_SCL = sum_i w_i CE(G_i(f_i^s), y^s),   w = (7, 1, 1, 1, 1, 1, 7)                         (SCL)
    L_SAL = sum_i L_CDAN-E(D_i, f_i (x) softmax(G_i f_i))                                     (SAL)
    L_PL  = sum_i w_i mean_b( 1[c_i,b >= tau_i(y_i,b)] CE(G_i(f_i(strong_b)), y_i,b) )         (FPLG + dynamic tau)
            with y_i,b = argmax p_i(weak_b), c_i,b = max p_i(weak_b),
            tau_i(k) = 0.95 ((sigma_i(k) + 1) / 2)^2 from the class-wise learning effect sigma_i   (fer_lab.pseudo)
    L_2   = L_SCL + 0.5 L_SAL + L_PL

Inference, global-local prediction consistency (GLPC, :func:`glpc`): the fused stream's prediction if it clears
its threshold, else the global stream's if it clears its own, else ``argmax_k sum_i p_i(k) 1[p_i(k) >= sigma_i(k)]``.

Ablations (hyper-parameters): ``local_streams=False`` (global stream only), ``threshold="fixed"`` (0.95 for every
class), ``pseudo_labels=False`` (no L_PL), ``inference="fused"`` (argmax of the fused stream instead of GLPC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fer_lab.data.loading import Batch
from fer_lab.labels import STREAMS
from fer_lab.methods.base import METHODS, Hparams, Method, SourceInput, pooled
from fer_lab.models import (DomainDiscriminator, WarmStartGradientReverse, cdan_multilinear, domain_adversarial_loss,
                            entropy_weight)
from fer_lab.pseudo import PseudoLabelHistory, PseudoLabelStore, dynamic_threshold

FUSED, GLOBAL = STREAMS.index("fused"), STREAMS.index("global")


@dataclass
class AGLRLSHparams(Hparams):
    # architecture
    lr: float = 0.02                     # the weighted stream sums total 15-19 CE terms (baselines: 0.1 on one)
    shared_heads: bool = False           # released code: 3 heads / 3 discriminators (global, shared local, fused)
    local_streams: bool = True           # ablation: False = global stream only
    disc_hidden: int = 512               # AGLRLS AdversarialNetwork: in -> 512 -> 512 -> 1, LeakyReLU 0.2
    disc_lr_mult: float = 10.0           # lr_ad = 10 x lr in the transfer stage
    grl_alpha: float = 10.0              # c(t) = 2 / (1 + exp(-alpha t)) - 1 over stage-2 progress t
    # schedule and loss weights
    stage1_fraction: float = 1 / 3       # 15 source epochs then 30 transfer epochs in the released scripts
    stage1_weights: tuple[float, ...] = (5, 1, 1, 1, 1, 1, 5)
    stage2_weights: tuple[float, ...] = (7, 1, 1, 1, 1, 1, 7)
    transfer_lr_mult: float = 0.1       # stage-2 learning rate relative to stage 1 (released code: 1e-5 vs 1e-4)
    adv_weight: float = 0.5
    pseudo_weight: float = 1.0
    # pseudo labels and inference
    pseudo_labels: bool = True           # ablation: False = no target pseudo-label loss
    threshold: str = "dynamic"           # "dynamic" (convex2 mapping of sigma) or "fixed" (p_cutoff)
    p_cutoff: float = 0.95
    inference: str = "glpc"              # "glpc" or "fused" (argmax of the fused stream)

    def __post_init__(self) -> None:
        for key in ("stage1_weights", "stage2_weights"):
            value = tuple(float(v) for v in getattr(self, key))
            if len(value) != len(STREAMS):
                raise ValueError(f"{key} needs {len(STREAMS)} weights ({', '.join(STREAMS)}), got {len(value)}")
            setattr(self, key, value)
        if self.threshold not in ("dynamic", "fixed"):
            raise ValueError(f"threshold must be 'dynamic' or 'fixed', got {self.threshold!r}")
        if self.inference not in ("glpc", "fused"):
            raise ValueError(f"inference must be 'glpc' or 'fused', got {self.inference!r}")
        if not 0.0 <= self.stage1_fraction <= 1.0:
            raise ValueError(f"stage1_fraction must be in [0, 1], got {self.stage1_fraction}")


# ---------------------------------------------------------------------------------------------------------------------
# inference: global-local prediction consistency
# ---------------------------------------------------------------------------------------------------------------------
#: GLPC decision rules, in the order they are tried
GLPC_RULES: tuple[str, ...] = ("fused", "global", "sum")


def glpc(probs: Tensor, sigma: Tensor, order: Sequence[int] = (FUSED, GLOBAL), p_cutoff: float = 0.95,
         mapping: str = "convex2") -> tuple[Tensor, Tensor, Tensor]:
    """Global-local prediction consistency (AGLRLS ``Utils.Compute_Alone_Accuracy``).

    Args:
        probs: ``[S, B, C]`` softmax of every stream.
        sigma: ``[S, C]`` class-wise learning effect saved at the end of training.
        order: streams tried first, in order (fused then global); rule ``r`` is ``order[r]``.
        p_cutoff, mapping: the threshold ``tau = p_cutoff * M(sigma)`` of :func:`fer_lab.pseudo.dynamic_threshold`.

    Returns:
        ``(prediction [B], rule [B], scores [B, C])``: ``rule`` is the index of the deciding rule (``len(order)`` for
        the fallback sum), ``scores`` the probabilities of the deciding stream or the normalised fallback sum, whose
        argmax is the prediction (ties and an all-zero sum go to the lowest class index, as ``np.argmax``).
    """
    s, b, c = probs.shape
    tau = dynamic_threshold(sigma, p_cutoff, mapping)                          # [S, C]
    conf, pred = probs.max(dim=-1)                                             # [S, B]
    passed = conf >= tau.gather(1, pred)                                       # [S, B]
    # fallback: s(k) = sum_i p_i(k) 1[p_i(k) >= sigma_i(k)]  (raw sigma, as the released code)
    kept = probs * (probs >= sigma[:, None, :]).to(probs.dtype)
    total = kept.sum(0)                                                        # [B, C]
    norm = total.sum(1, keepdim=True)
    scores = torch.where(norm > 0, total / norm.clamp_min(1e-12), torch.full_like(total, 1.0 / c))
    rule = torch.full((b,), len(order), dtype=torch.int64, device=probs.device)
    for r in reversed(range(len(order))):                                      # earlier rules overwrite later ones
        take = passed[order[r]]
        scores = torch.where(take[:, None], probs[order[r]], scores)
        rule = torch.where(take, torch.full_like(rule, r), rule)
    return scores.argmax(1), rule, scores


# ---------------------------------------------------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------------------------------------------------
@METHODS.register("aglrls")
class AGLRLS(Method):
    """AGLRLS (see the module docstring). ``update`` runs stage 1 then stage 2 by training progress."""

    @property
    def fresh_on_init(self) -> tuple[str, ...]:  # type: ignore[override]
        """From a source-only run (the benchmark's shared stage 1) the fused head starts from its classifier and the
        other heads and the discriminators start fresh (its own stage 1, ``stage1_fraction``, then trains them);
        from an AGLRLS run nothing may be missing."""
        return ("heads.", "discriminators.", "grl.") if getattr(self, "_init_from_source_only", False) else ()

    Hparams = AGLRLSHparams
    wants_strong_view: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        hp: AGLRLSHparams = self.hp
        del self.classifier                                   # one head per stream instead of the base classifier
        self.streams: tuple[str, ...] = STREAMS if hp.local_streams else ("global",)
        self.stream_index = [STREAMS.index(s) for s in self.streams]
        # released code: dan_idx = [0, 1, 1, 1, 1, 1, 2]; paper: one head / discriminator per stream
        slot = {s: (s if s in ("global", "fused") else "local") for s in self.streams} if hp.shared_heads \
            else {s: s for s in self.streams}
        self.slot = slot
        dims = {slot[s]: self.extractor.stream_dim(s) for s in self.streams}
        self.heads = nn.ModuleDict({k: nn.Linear(d, self.num_classes) for k, d in dims.items()})
        self.discriminators = nn.ModuleDict({
            k: DomainDiscriminator(d * self.num_classes, hidden=hp.disc_hidden, leaky_slope=0.2)
            for k, d in dims.items()})
        self.grl = WarmStartGradientReverse(alpha=hp.grl_alpha)
        mapping = "convex2" if hp.threshold == "dynamic" else "fixed"
        self.pseudo_store = PseudoLabelStore(len(self.streams), self.num_classes, p_cutoff=hp.p_cutoff, mapping=mapping)
        self.register_buffer("transfer_steps", torch.zeros((), dtype=torch.int64))
        self.steps_per_epoch = 0
        self.last_pseudo: dict[str, Tensor] = {}              # the last stage-2 batch's masks etc. (diagnostics)

    # -- set-up -----------------------------------------------------------------------------------------------
    def setup_data(self, source_sizes: Sequence[int], target_size: int | None, batch_size: int) -> None:
        if target_size:
            self.pseudo_store.resize(target_size)
            self.steps_per_epoch = max(1, target_size // batch_size)

    def lr_factor(self, progress: float) -> float:
        return 1.0 if progress < self.hp.stage1_fraction else self.hp.transfer_lr_mult

    def recorder(self, steps: int) -> PseudoLabelHistory:
        """Every run records its thresholds, coverage and precision about 20 times over its transfer stage."""
        transfer = steps - round(steps * self.hp.stage1_fraction)
        return PseudoLabelHistory(every=max(1, transfer // 20))

    def initial_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        # a new run (e.g. stage 2 from a stage-1 run) starts with its own, empty pseudo-label store
        per_run = ("pseudo_store.", "transfer_steps")
        own = {k: v for k, v in self.state_dict().items() if k.startswith(per_run)}
        state = {**{k: v for k, v in state.items() if not k.startswith(per_run)}, **own}
        self._init_from_source_only = not any(k.startswith("heads.") for k in state)
        if "fused" in self.slot and self._init_from_source_only:  # a source-only run
            for part in ("weight", "bias"):
                if f"classifier.{part}" in state:
                    state[f"heads.{self.slot['fused']}.{part}"] = state.pop(f"classifier.{part}")
        return state

    def param_groups(self) -> list[dict[str, Any]]:
        return self.regrouped([(list(self.discriminators.parameters()), self.hp.disc_lr_mult)])

    # -- forward pieces -----------------------------------------------------------------------------------------
    def logits(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """``G_i(f_i)`` for every active stream."""
        return {s: self.heads[self.slot[s]](feats[s]) for s in self.streams}

    def stream_probs(self, batch: Batch) -> Tensor:
        """``[S, B, C]`` softmax of every active stream."""
        logits = self.logits(self.features(batch))
        return torch.stack([logits[s].softmax(1) for s in self.streams])

    def _weights(self, which: tuple[float, ...]) -> list[float]:
        return [which[i] for i in self.stream_index]

    # -- training ---------------------------------------------------------------------------------------------
    def update(self, source: SourceInput, target: Batch | None, progress: float) -> dict[str, float]:
        if target is None or progress < self.hp.stage1_fraction:
            return self.update_source(pooled(source))
        t = (progress - self.hp.stage1_fraction) / max(1e-12, 1.0 - self.hp.stage1_fraction)
        return self.update_transfer(pooled(source), target, t)

    def update_source(self, xs: Batch) -> dict[str, float]:
        logits = self.logits(self.features(xs))
        # stage-1 SCL: sum_i a_i CE(G_i(f_i^s), y^s), a = (5,1,1,1,1,1,5)
        ce = {s: F.cross_entropy(logits[s], xs["labels"]) for s in self.streams}
        loss = sum(w * ce[s] for w, s in zip(self._weights(self.hp.stage1_weights), self.streams))
        self.step(loss)
        main = "fused" if "fused" in logits else "global"
        acc = (logits[main].argmax(1) == xs["labels"]).float().mean()
        return {"loss": loss.item(), "scl": loss.item(), "src_acc": acc.item(), "stage": 1.0}

    def update_transfer(self, xs: Batch, target: Batch, t: float) -> dict[str, float]:
        hp: AGLRLSHparams = self.hp
        if self.steps_per_epoch and int(self.transfer_steps) % self.steps_per_epoch == 0:
            self.pseudo_store.reset()                                       # per-epoch reset of the store and sigma
        n, m = len(xs["labels"]), len(target["images"])
        parts = [xs["images"], target["images"]]
        lms = [xs["landmarks"], target["landmarks"]]
        use_pl = hp.pseudo_labels and hp.pseudo_weight > 0
        if use_pl:                                                          # strong view in the same forward pass
            parts.append(target["strong"])
            lms.append(target["strong_landmarks"])
        feats = self.extractor(torch.cat(parts), torch.cat(lms))
        logits = self.logits(feats)
        w2 = self._weights(hp.stage2_weights)

        # SCL: sum_i w_i CE(G_i(f_i^s), y^s), w = (7,1,1,1,1,1,7)
        scl = sum(w * F.cross_entropy(logits[s][:n], xs["labels"]) for w, s in zip(w2, self.streams))

        # SAL: sum_i L_CDAN-E(D_i, f_i (x) g_i), entropy weights normalised per domain, source 1 / target 0
        probs = torch.stack([logits[s][:n + m].softmax(1).detach() for s in self.streams])   # [S, n + m, C]
        sal = feats["global"].new_zeros(())
        disc_acc = []
        for k, s in enumerate(self.streams):
            h = self.grl(cdan_multilinear(feats[s][:n + m], probs[k]), t)
            w = entropy_weight(probs[k])
            loss_s, acc = domain_adversarial_loss(self.discriminators[self.slot[s]], h[:n], h[n:], w[:n], w[n:])
            sal = sal + loss_s
            disc_acc.append(acc)

        # learning effect, dynamic thresholds and masks from the weak view (then the store update)
        weak = probs[:, n:]                                                                  # [S, B, C]
        out = self.pseudo_store.step(target["index"], weak)
        self.transfer_steps += 1

        # L_PL: sum_i w_i mean_b(mask_i,b CE(G_i(strong_b), yhat_i,b))
        pl = feats["global"].new_zeros(())
        if use_pl:
            for k, (w, s) in enumerate(zip(w2, self.streams)):
                ce = F.cross_entropy(logits[s][n + m:], out["pseudo"][k], reduction="none")
                pl = pl + w * (ce * out["mask"][k].to(ce.dtype)).mean()

        loss = scl + hp.adv_weight * sal + hp.pseudo_weight * pl
        self.step(loss)
        return self._transfer_logs(loss, scl, sal, pl, disc_acc, out, target, t)

    def _transfer_logs(self, loss: Tensor, scl: Tensor, sal: Tensor, pl: Tensor, disc_acc: list[Tensor],
                       out: dict[str, Tensor], target: Batch, t: float) -> dict[str, float]:
        truth = target.get("true_labels")
        self.last_pseudo = {k: v.detach() for k, v in out.items()}
        if truth is not None:
            self.last_pseudo["true_labels"] = truth
        logs = {"loss": loss.item(), "scl": scl.item(), "sal": sal.item(), "pl": pl.item(),
                "disc_acc": float(torch.stack(disc_acc).mean()), "grl_coeff": self.grl.coeff(t), "stage": 2.0}
        for k, s in enumerate(self.streams):
            if s in ("global", "fused"):
                logs[f"mask_{s}"] = out["mask"][k].float().mean().item()
                logs[f"tau_{s}"] = out["thresholds"][k].mean().item()
                if truth is not None:   # accepted and correct (precision = pl_hit / mask)
                    hit = out["mask"][k] & (out["pseudo"][k] == truth)
                    logs[f"pl_hit_{s}"] = hit.float().mean().item()
        return logs

    # -- inference --------------------------------------------------------------------------------------------
    def glpc_order(self) -> list[int]:
        return [self.streams.index(s) for s in ("fused", "global") if s in self.streams]

    def predict_details(self, batch: Batch) -> dict[str, Tensor]:
        """Every stream's probabilities and the GLPC decision: ``probs [S,B,C]``, ``prediction``, ``rule``
        (index into :data:`GLPC_RULES`; with ``local_streams=False`` only ``global`` and ``sum`` occur) and
        ``scores``."""
        probs = self.stream_probs(batch)
        pred, rule, scores = glpc(probs, self.pseudo_store.sigma, self.glpc_order(), self.hp.p_cutoff,
                                  self.pseudo_store.mapping)
        if len(self.streams) == 1:
            rule = torch.where(rule == 0, torch.ones_like(rule), torch.full_like(rule, 2))
        return {"probs": probs, "prediction": pred, "rule": rule, "scores": scores}

    def predict(self, batch: Batch) -> Tensor:
        """Log-scores whose argmax is the paper's prediction (GLPC, or the fused stream with ``inference="fused"``)."""
        if self.hp.inference == "fused" and "fused" in self.streams:
            return self.logits(self.features(batch))["fused"]
        return self.predict_details(batch)["scores"].clamp_min(1e-12).log()


@torch.no_grad()
def glpc_breakdown(method: AGLRLS, data, batch_size: int = 256, device: str | torch.device = "cpu"):
    """How often each GLPC rule decides on ``data`` and how accurate it is, beside the fused stream's argmax on the
    same faces. Returns a DataFrame indexed by rule (``fused``, ``global``, ``sum``) with ``faces``, ``share``,
    ``glpc acc`` and ``fused-argmax acc``, plus an ``all`` row."""
    import pandas as pd

    from fer_lab.data.loading import iterate, to_device
    from fer_lab.evaluate import eval_mode

    rules, preds, fused, labels = [], [], [], []
    with eval_mode(method):
        for batch in iterate(data, batch_size):
            d = method.predict_details(to_device(batch, device))
            rules.append(d["rule"].cpu())
            preds.append(d["prediction"].cpu())
            fused.append(d["probs"][-1].argmax(1).cpu())      # the fused stream (the only one without locals)
            labels.append(batch["labels"])
    rule, pred, fz, y = (torch.cat(x) for x in (rules, preds, fused, labels))
    keep = y >= 0
    rule, pred, fz, y = rule[keep], pred[keep], fz[keep], y[keep]
    rows = {}
    for r, name in enumerate(GLPC_RULES):
        sel = rule == r
        k = int(sel.sum())
        rows[name] = {"faces": k, "share": k / max(1, len(y)),
                      "glpc acc": float((pred[sel] == y[sel]).float().mean()) if k else float("nan"),
                      "fused-argmax acc": float((fz[sel] == y[sel]).float().mean()) if k else float("nan")}
    rows["all"] = {"faces": len(y), "share": 1.0, "glpc acc": float((pred == y).float().mean()),
                   "fused-argmax acc": float((fz == y).float().mean())}
    return pd.DataFrame(rows).T.rename_axis("rule")


#: Ablations as hyper-parameter overrides; each is a stage 2 from the same stage-1 run. (The fourth ablation,
#: argmax of the fused stream instead of GLPC, changes inference only: ``inference="fused"`` on a trained model.)
ABLATIONS: dict[str, dict[str, Any]] = {
    "w/o local streams": {"local_streams": False},
    "fixed threshold 0.95": {"threshold": "fixed"},
    "w/o pseudo labels": {"pseudo_labels": False},
}

#: The released code's variant: three heads / three discriminators (global, one shared by the patches, fused).
#: It needs its own stage 1, since its heads differ.
RELEASED_CODE: dict[str, Any] = {"shared_heads": True}
