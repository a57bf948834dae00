"""DMSRL: deep margin-sensitive representation learning (semantic metric learning with margins + MI minimisation).

Li, Zhang, Chen, Lu, Zhang, "Deep Margin-Sensitive Representation Learning for Cross-Domain Facial Expression
Recognition", IEEE TMM 25:1359-1373, 2023 (DOI 10.1109/TMM.2022.3141604); code: YingjianLi/JDMAN (shared with
JDMAN, ACM MM 2021). Spec: the abstract and the released code (``my_loss.py``, ``train.py``, ``model/vgg2.py``).

Three modules, the paper's by default and the released code's as options:

1. **Multi-level features**: the global feature and local features, fused into one embedding
   ``f = phi([g, l_1, ..., l_R])`` (a linear layer, as the code's adaptation layers). Local features: the five
   landmark patches of the global-local extractor (``local="landmarks"``), or the released code's four overlapping
   crops of the last feature map (``local="overlap4"``, :func:`fer_lab.models.regions.fixed_regions`), or none
   (``local="none"``: the global-features-only ablation).

2. **Semantic metric learning with margins** (``MC_Loss_dis_1_center``): learnable class centres ``c^s_k`` and
   ``c^t_k`` per domain, on their own optimiser (SGD, lr 1.0)::

       L_intra = 1/2 mean_b ||z^s_b - c^s_{y_b}||^2 + 1/2 mean_b ||z^t_b - c^t_{yhat_b}||^2          (intra-class)
       D(c)    = sum_{i<j} ||c_i - c_j||^2 / (K (K - 1))                                     (centre spread)
       L_inter = max(0, M - D(c^s)) + max(0, M - D(c^t))                                  (margin hinge, M = 100)
       L_align = lambda_1 sum_k ||c^s_k - c^t_k||^2 / K                                   (centre alignment)
       L_margin = L_intra + L_inter + L_align

   ``yhat`` is the target pseudo label: the classifier's argmax (the code), or, with ``pseudo="threshold"``, only
   rows whose confidence reaches ``pseudo_threshold`` enter the target pull. ``D`` is the code's normalisation:
   half the mean squared distance over the K (K - 1) / 2 centre pairs.

3. **Mutual-information minimisation** (``mi="club"``, the paper): the embedding is split into a domain-invariant
   part ``z = E_inv(f)`` and a domain-specific part ``s = E_spec(f)``. A domain classifier on ``s`` makes the
   specific part carry the domain; the CLUB upper bound ``I(z; s)`` (:class:`fer_lab.mutual_info.CLUB`) is
   minimised so the invariant part keeps none of it; a discriminator behind gradient reversal confuses the domains
   on ``z`` (DANN). The classifier and the centres live on ``z``::

       L_MI = L_adv(D(GRL(z)), d) + L_dom(D_s(s), d) + gamma I_CLUB(z; s)

   The released code (``mi="discriminator"``) has no split and no estimator: its "MI" module is one domain
   discriminator (``AdversarialNetwork``: 512 hidden, dropout 0.5) behind gradient reversal on the embedding itself.
   ``mi="none"`` drops the module (ablation).

Total (``train.py``)::

    L = CE(C(z^s), y^s) + alpha w(p) L_margin + beta L_MI,    w(p) = 2 / (1 + exp(-10 p)) - 1,   alpha = beta = 0.01

plus the CLUB estimator's own fitting loss, which reaches only the estimator (its own Adam optimiser).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fer_lab.data.loading import Batch
from fer_lab.labels import EXPRESSIONS
from fer_lab.methods.base import METHODS, Hparams, Method, SourceInput, classification_loss, pooled
from fer_lab.models import DomainDiscriminator, WarmStartGradientReverse, domain_adversarial_loss
from fer_lab.models.regions import fixed_regions, region_boxes
from fer_lab.mutual_info import CLUB

LOCAL_MODES = ("landmarks", "overlap4", "none")
MI_MODES = ("club", "discriminator", "none")


@dataclass
class DMSRLHparams(Hparams):
    # multi-level features
    local: str = "landmarks"        # paper: landmark patches; "overlap4": released code's four crops; "none": global
    embed_dim: int = 256            # fused embedding (code: fc1 / fc2, 4096 on VGG16)
    # semantic metric learning with margins (my_loss.MC_Loss_dis_1_center, opts.py)
    margin_loss: bool = True        # ablation: False = no centre / margin term
    alpha: float = 0.01             # weight of L_margin (opts.py default)
    margin: float = 100.0           # M in the inter-class hinge (my_loss.py: self.M = 100)
    lambda1: float = 1.0            # source-target centre alignment (opts.py lam1)
    center_lr: float = 1.0          # the centres' own SGD (train.py: lr 1.0, momentum / weight decay / Nesterov as
    #                                 the network's); the trainer's schedule scales it like every optimiser
    ramp_alpha: float = 10.0        # w(p) = 2 / (1 + exp(-ramp_alpha p)) - 1 (train.py)
    pseudo: str = "argmax"          # target labels for the pull: "argmax" (code) or "threshold"
    pseudo_threshold: float = 0.9   # confidence for pseudo="threshold" (ASSUMPTION: no value in paper or code)
    # mutual-information minimisation
    mi: str = "club"                # "club" (paper: split + estimator + adversarial), "discriminator" (code), "none"
    beta: float = 0.01              # weight of L_MI (opts.py default; the code's adversarial weight)
    mi_weight: float = 1.0          # gamma on I_CLUB inside L_MI (ASSUMPTION: the paper's value was not available)
    part_dim: int = 128             # size of the invariant and of the specific part (ASSUMPTION)
    club_hidden: int = 64           # CLUB's mu / log-variance MLPs
    club_lr: float = 1e-3           # the estimator's Adam (CLUB's reference code: 1e-3 to 5e-3)
    disc_hidden: int = 512          # AdversarialNetwork(3072, 512): 512 hidden, ReLU, dropout 0.5
    disc_dropout: float = 0.5
    grl_alpha: float = 10.0         # gradient reversal coefficient 2 / (1 + exp(-10 p)) - 1 (resnet.calc_coeff)
    head_lr_mult: float = 1.0       # learning-rate multiplier of the modules DMSRL adds on top of the extractor
    #                                 (fusion, split, classifier, discriminators, region heads); 10 is the usual
    #                                 choice for new layers on a trained extractor (DANN / CDAN reference code)
    # lr stays the trainer's from-scratch default 0.1: the paper's 0.01 is for an ImageNet-pre-trained VGG16 (with
    # pre-trained weights use lr 0.01, as the base Hparams note says)

    def __post_init__(self) -> None:
        for key, allowed in (("local", LOCAL_MODES), ("mi", MI_MODES), ("pseudo", ("argmax", "threshold"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"fer_lab/methods/dmsrl.py: {key} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, key)!r}")
        if self.margin < 0 or self.alpha < 0 or self.beta < 0:
            raise ValueError("fer_lab/methods/dmsrl.py: margin, alpha and beta must be non-negative")


# ---------------------------------------------------------------------------------------------------------------------
# semantic metric learning with margins
# ---------------------------------------------------------------------------------------------------------------------
def ramp(progress: float, alpha: float = 10.0) -> float:
    """w(p) = 2 / (1 + exp(-alpha p)) - 1 (DMSRL ``train.py``), 0 at the start, about 1 at the end."""
    return 2.0 / (1.0 + math.exp(-alpha * max(float(progress), 0.0))) - 1.0


def center_spread(centers: Tensor) -> Tensor:
    """``D(c) = sum_{i<j} ||c_i - c_j||^2 / (K (K - 1))`` of ``centers [K, d]`` (the hinge's quantity)."""
    k = centers.shape[0]
    sq = (centers[:, None, :] - centers[None, :, :]).pow(2).sum(-1)        # [K, K], safe gradient at equal rows
    return sq.triu(1).sum() / (k * (k - 1))


def margin_center_loss(f_s: Tensor, y_s: Tensor, f_t: Tensor, y_t: Tensor, c_s: Tensor, c_t: Tensor,
                       margin: float = 100.0, lambda1: float = 1.0, mask_t: Tensor | None = None) -> dict[str, Tensor]:
    """The margin-sensitive centre loss (``MC_Loss_dis_1_center``) and its parts.

    Args:
        f_s, y_s: source features ``[B_s, d]`` and labels ``[B_s]``.
        f_t, y_t: target features ``[B_t, d]`` and pseudo labels ``[B_t]``.
        c_s, c_t: source and target class centres ``[K, d]``.
        mask_t: optional ``bool [B_t]``: target rows that enter the pull (others count zero; the mean stays over B_t).

    Returns:
        ``intra_s``, ``intra_t`` (1/2 mean squared distance to the own centre), ``spread_s``, ``spread_t``
        (:func:`center_spread`), ``hinge_s``, ``hinge_t`` (``max(0, M - spread)``), ``align``
        (``sum_k ||c^s_k - c^t_k||^2 / K``) and ``loss`` = intra + hinges + lambda_1 align.
    """
    if f_s.shape[1] != c_s.shape[1] or f_t.shape[1] != c_t.shape[1]:
        raise ValueError(f"fer_lab/methods/dmsrl.py: centre dimension {c_s.shape[1]} does not match the features' "
                         f"{f_s.shape[1]} / {f_t.shape[1]}")
    # L_intra: 1/2 ||f - c_y||^2 averaged over the batch, per domain
    intra_s = (f_s - c_s[y_s]).pow(2).sum(1).mean() / 2.0
    per_t = (f_t - c_t[y_t]).pow(2).sum(1) / 2.0
    if mask_t is not None:
        per_t = per_t * mask_t.to(per_t.dtype)
    intra_t = per_t.mean() if len(per_t) else f_t.new_zeros(())
    # L_inter: max(0, M - D(c)) per domain
    spread_s, spread_t = center_spread(c_s), center_spread(c_t)
    hinge_s, hinge_t = F.relu(margin - spread_s), F.relu(margin - spread_t)
    # L_align: sum_k ||c^s_k - c^t_k||^2 / K
    align = (c_s - c_t).pow(2).sum(1).mean()
    loss = intra_s + intra_t + hinge_s + hinge_t + lambda1 * align
    return {"intra_s": intra_s, "intra_t": intra_t, "spread_s": spread_s, "spread_t": spread_t,
            "hinge_s": hinge_s, "hinge_t": hinge_t, "align": align, "loss": loss}


class MarginCenters(nn.Module):
    """Learnable source and target class centres ``[K, d]`` (``torch.randn`` init, as the code) and their loss."""

    def __init__(self, num_classes: int, dim: int, margin: float = 100.0, lambda1: float = 1.0) -> None:
        super().__init__()
        self.source = nn.Parameter(torch.randn(num_classes, dim))
        self.target = nn.Parameter(torch.randn(num_classes, dim))
        self.margin, self.lambda1 = float(margin), float(lambda1)

    def forward(self, f_s: Tensor, y_s: Tensor, f_t: Tensor, y_t: Tensor,
                mask_t: Tensor | None = None) -> dict[str, Tensor]:
        return margin_center_loss(f_s, y_s, f_t, y_t, self.source, self.target, self.margin, self.lambda1, mask_t)


# ---------------------------------------------------------------------------------------------------------------------
# feature pieces
# ---------------------------------------------------------------------------------------------------------------------
class FeatureSplit(nn.Module):
    """Split an embedding into a domain-invariant and a domain-specific part, each a linear map (no activation, as
    the released code's adaptation layers: the centres are signed, ``randn``, and a ReLU part could not reach them):
    ``[B, in_dim] -> ([B, part_dim], [B, part_dim])``."""

    def __init__(self, in_dim: int, part_dim: int) -> None:
        super().__init__()
        self.invariant = nn.Sequential(nn.Linear(in_dim, part_dim))
        self.specific = nn.Sequential(nn.Linear(in_dim, part_dim))

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor]:
        return self.invariant(f), self.specific(f)


# ---------------------------------------------------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------------------------------------------------
@METHODS.register("dmsrl")
class DMSRL(Method):
    """DMSRL (see the module docstring)."""

    Hparams = DMSRLHparams
    #: modules that start fresh when a run starts from a source-only stage 1 (``init_from``)
    fresh_on_init = ("fusion.", "split.", "club.", "spec_classifier.", "discriminator.", "grl.", "centers.",
                     "region_heads.", "classifier.")
    HEADS = ("fusion", "split", "spec_classifier", "discriminator", "region_heads", "classifier")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        hp: DMSRLHparams = self.hp
        del self.classifier                                   # the classifier sits on the class feature below
        d = self.extractor.feat_dim
        if hp.local == "overlap4":
            n_regions = len(region_boxes("overlap4", 7, 7))
            c_last = self.extractor.backbone.out_channels
            self.region_heads = nn.ModuleList(nn.Sequential(nn.Linear(c_last, d), nn.ReLU(inplace=True))
                                              for _ in range(n_regions))
            self.local_streams = tuple(f"region_{i}" for i in range(n_regions))
        else:
            self.local_streams = self.extractor.streams[1:-1] if hp.local == "landmarks" else ()
        fused_dim = d * (1 + len(self.local_streams))
        # phi: one linear layer, no activation (resnet.py ResNet_with_ADlayer: stacked Linear adaptation layers)
        self.fusion = nn.Sequential(nn.Linear(fused_dim, hp.embed_dim))
        class_dim = hp.embed_dim
        if hp.mi == "club":
            self.split = FeatureSplit(hp.embed_dim, hp.part_dim)
            self.club = CLUB(hp.part_dim, hp.part_dim, hp.club_hidden)
            self.spec_classifier = DomainDiscriminator(hp.part_dim, hidden=hp.disc_hidden, dropout=hp.disc_dropout)
            class_dim = hp.part_dim
        if hp.mi in ("club", "discriminator"):
            self.discriminator = DomainDiscriminator(class_dim, hidden=hp.disc_hidden, dropout=hp.disc_dropout)
            self.grl = WarmStartGradientReverse(alpha=hp.grl_alpha)
        self.class_dim = class_dim
        self.classifier = nn.Linear(class_dim, self.num_classes)
        self.centers = MarginCenters(self.num_classes, class_dim, hp.margin, hp.lambda1)
        self._center_optimizer: torch.optim.Optimizer | None = None
        self._mi_optimizer: torch.optim.Optimizer | None = None
        self.last_pseudo: dict[str, Tensor] = {}

    # -- optimisation ---------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        # the centres and the CLUB estimator have optimisers of their own
        own = [*self.centers.parameters(), *(self.club.parameters() if hasattr(self, "club") else ())]
        heads = [p for name in self.HEADS if hasattr(self, name) for p in getattr(self, name).parameters()]
        return self.regrouped([(heads, self.hp.head_lr_mult)], exclude=own)

    def initial_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        # from another method's run (e.g. a source-only stage 1): entries of another shape (its classifier on the
        # fused stream) are left out, so those modules start fresh (fresh_on_init)
        mine = self.state_dict()
        return {k: v for k, v in state.items() if k not in mine or mine[k].shape == v.shape}

    @property
    def center_optimizer(self) -> torch.optim.Optimizer:
        """The centres' own SGD (train.py ``optimizer4center``: lr 1.0, the network's momentum and decay)."""
        if self._center_optimizer is None:
            self._center_optimizer = torch.optim.SGD(
                [{"params": list(self.centers.parameters()), "lr": self.hp.center_lr, "lr_mult": 1.0}],
                lr=self.hp.center_lr, momentum=self.hp.momentum, weight_decay=self.hp.weight_decay, nesterov=True)
        return self._center_optimizer

    @property
    def mi_optimizer(self) -> torch.optim.Optimizer | None:
        """The CLUB estimator's Adam (it fits q(y|x) on detached parts), or None without the estimator."""
        if self._mi_optimizer is None and hasattr(self, "club"):
            self._mi_optimizer = torch.optim.Adam(
                [{"params": list(self.club.parameters()), "lr": self.hp.club_lr, "lr_mult": 1.0}], lr=self.hp.club_lr)
        return self._mi_optimizer

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"main": self.optimizer, "centers": self.center_optimizer}
        if self.mi_optimizer is not None:
            opts["mi"] = self.mi_optimizer
        return opts

    def step(self, loss: Tensor) -> None:
        opts = list(self.optimizers().values())
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()

    # -- features ---------------------------------------------------------------------------------------------
    def streams_of(self, images: Tensor, landmarks: Tensor) -> dict[str, Tensor]:
        """Global and local features and their concatenation ``fused``."""
        ext = self.extractor
        if self.hp.local == "landmarks":
            return ext(images, landmarks)
        _, last = ext.backbone(images)
        out = {"global": ext.global_head(last)}
        if self.hp.local == "overlap4":
            regions = fixed_regions(last, "overlap4")                          # [B, 4, C]
            for i, (name, head) in enumerate(zip(self.local_streams, self.region_heads)):
                out[name] = head(regions[:, i])
        out["fused"] = torch.cat([out["global"], *(out[s] for s in self.local_streams)], dim=1)
        return out

    def encode(self, images: Tensor, landmarks: Tensor) -> dict[str, Tensor]:
        """Every stream, the fused ``embedding``, and (``mi="club"``) its ``invariant`` and ``specific`` parts;
        ``class_feature`` is what the classifier and the centres see."""
        out = self.streams_of(images, landmarks)
        out["embedding"] = self.fusion(out["fused"])
        if self.hp.mi == "club":
            out["invariant"], out["specific"] = self.split(out["embedding"])
            out["class_feature"] = out["invariant"]
        else:
            out["class_feature"] = out["embedding"]
        return out

    @property
    def class_stream(self) -> str:
        """The stream of :meth:`embed` the classifier and the centres see (``invariant`` or ``embedding``)."""
        return "invariant" if self.hp.mi == "club" else "embedding"

    def features(self, batch: Batch) -> dict[str, Tensor]:
        return self.encode(batch["images"], batch["landmarks"])

    def embed(self, batch: Batch) -> dict[str, Tensor]:
        out = self.features(batch)
        out.pop("class_feature")
        return out

    def predict(self, batch: Batch) -> Tensor:
        return self.classifier(self.features(batch)["class_feature"])

    # -- training ---------------------------------------------------------------------------------------------
    def pseudo_labels(self, logits_t: Tensor) -> tuple[Tensor, Tensor]:
        """Target pseudo labels (argmax of softmax) and the rows that enter the pull."""
        conf, pseudo = logits_t.detach().softmax(1).max(1)
        if self.hp.pseudo == "threshold":
            return pseudo, conf >= self.hp.pseudo_threshold
        keep = torch.ones_like(pseudo, dtype=torch.bool)
        return pseudo, keep

    def recorder(self, steps: int) -> "MarginHistory":
        """Every run records its margins, MI estimate and pseudo-label precision about 30 times."""
        return MarginHistory(every=max(1, steps // 30))

    def update(self, source: SourceInput, target: Batch | None, progress: float) -> dict[str, float]:
        hp: DMSRLHparams = self.hp
        xs = pooled(source)
        n = len(xs["labels"])
        feats = self.encode(torch.cat([xs["images"], target["images"]]),
                            torch.cat([xs["landmarks"], target["landmarks"]]))
        z = feats["class_feature"]
        logits = self.classifier(z)
        # L_cls = CE(C(z^s), y^s)
        cls = classification_loss(logits[:n], xs["labels"])
        loss = cls
        logs: dict[str, float] = {}

        # L_margin = L_intra + L_inter + lambda_1 L_align, weighted alpha w(p)
        pseudo, keep = self.pseudo_labels(logits[n:])
        terms = self.centers(z[:n], xs["labels"], z[n:], pseudo, keep if hp.pseudo == "threshold" else None)
        w = ramp(progress, hp.ramp_alpha)
        if hp.margin_loss:
            loss = loss + hp.alpha * w * terms["loss"]

        # L_MI = L_adv(D(GRL(z)), d) + L_dom(D_s(s), d) + gamma I_CLUB(z; s), weighted beta
        if hp.mi != "none":
            r = self.grl(z, progress)
            adv, disc_acc = domain_adversarial_loss(self.discriminator, r[:n], r[n:])
            mi_loss = adv
            logs.update(adv=adv.item(), disc_acc=float(disc_acc), grl_coeff=self.grl.coeff(progress))
            if hp.mi == "club":
                s = feats["specific"]
                dom, dom_acc = domain_adversarial_loss(self.spec_classifier, s[:n], s[n:])
                mi = self.club(z, s)
                mi_loss = mi_loss + dom + hp.mi_weight * mi
                # the estimator's own fit (reaches CLUB's parameters only, on its own optimiser)
                club_fit = self.club.learning_loss(z, s)
                logs.update(spec_dom=dom.item(), spec_dom_acc=float(dom_acc), mi=mi.item(), club_fit=club_fit.item())
            loss = loss + hp.beta * mi_loss

        self.step(loss + club_fit if hp.mi == "club" else loss)
        self.last_pseudo = {"pseudo": pseudo, "mask": keep}
        truth = target.get("true_labels")
        if truth is not None:
            self.last_pseudo["true_labels"] = truth
            hit = (pseudo == truth) & keep
            logs["pl_acc"] = float(hit.sum() / keep.sum().clamp_min(1))
        logs.update({"loss": loss.item(), "cls": cls.item(), "margin": terms["loss"].item(), "ramp": w,
                     "intra_src": terms["intra_s"].item(), "intra_tgt": terms["intra_t"].item(),
                     "inter_src": terms["spread_s"].item(), "inter_tgt": terms["spread_t"].item(),
                     "center_gap": terms["align"].item(), "pl_keep": float(keep.float().mean())})
        return logs


# ---------------------------------------------------------------------------------------------------------------------
# diagnostics
# ---------------------------------------------------------------------------------------------------------------------
class MarginHistory:
    """Trainer callback: the margins and the MI estimate over training, and the target pseudo labels' precision
    per class (the target centres' classes; SynthFER knows the truth, the method never sees it).

    Every ``every`` steps it appends ``{"step", "inter_src", "inter_tgt", "intra_src", "intra_tgt", "center_gap",
    "mi", "center_gap_per_class": [K], "pl_precision": [K] (None where no row was assigned), "pl_count": [K]}`` to
    :attr:`records`; the scalars are means over the steps since the previous record, the per-class pseudo-label
    counts pooled over them.
    """

    KEYS = ("inter_src", "inter_tgt", "intra_src", "intra_tgt", "center_gap", "mi", "disc_acc", "spec_dom_acc")

    def __init__(self, every: int = 10, records: list[dict[str, Any]] | None = None) -> None:
        self.every = int(every)
        self.records: list[dict[str, Any]] = list(records or [])
        self._sums: dict[str, float] = {}
        self._n = 0
        self._assigned: Tensor | None = None
        self._hits: Tensor | None = None

    def on_step(self, trainer, step: int, logs: dict[str, float]) -> None:
        method = trainer.method
        for k in self.KEYS:
            if k in logs:
                self._sums[k] = self._sums.get(k, 0.0) + float(logs[k])
        self._n += 1
        last = getattr(method, "last_pseudo", {})
        if "true_labels" in last:
            k = method.num_classes
            pseudo, keep, truth = (last[x].cpu() for x in ("pseudo", "mask", "true_labels"))
            assigned = torch.bincount(pseudo[keep], minlength=k)
            hits = torch.bincount(pseudo[keep & (pseudo == truth)], minlength=k)
            self._assigned = assigned + (self._assigned if self._assigned is not None else 0)
            self._hits = hits + (self._hits if self._hits is not None else 0)
        if step % self.every:
            return
        with torch.no_grad():
            gap = (method.centers.source - method.centers.target).pow(2).sum(1).cpu().tolist()
        rec: dict[str, Any] = {"step": int(step), **{k: v / self._n for k, v in self._sums.items()},
                               "center_gap_per_class": gap}
        if self._assigned is not None:
            rec["pl_count"] = self._assigned.tolist()
            rec["pl_precision"] = [h / a if a else None for h, a in zip(self._hits.tolist(), self._assigned.tolist())]
        self.records.append(rec)
        self._sums, self._n, self._assigned, self._hits = {}, 0, None, None

    def frame(self):
        """Scalars per record: ``step`` and every logged quantity (one column each)."""
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in r.items() if not isinstance(v, list)} for r in self.records])

    def per_class_frame(self, key: str = "center_gap_per_class", class_names=EXPRESSIONS):
        """Long table ``step, class, value`` of a per-class record (``center_gap_per_class`` or ``pl_precision``)."""
        import pandas as pd

        return pd.DataFrame([{"step": r["step"], "class": class_names[c], "value": v}
                             for r in self.records if key in r for c, v in enumerate(r[key])])


@torch.no_grad()
def center_feature_sets(method: DMSRL, class_names=EXPRESSIONS):
    """The source and target centres as two :class:`fer_lab.analysis.alignment.FeatureSet` s (stream
    ``method.class_stream``, one row per class, label = class), to embed with the features in one UMAP."""
    import numpy as np

    from fer_lab.analysis.alignment import FeatureSet

    k = method.num_classes
    sets = {}
    for name, c in (("source centres", method.centers.source), ("target centres", method.centers.target)):
        probs = np.eye(k, dtype=np.float32)
        sets[name] = FeatureSet(features={method.class_stream: c.detach().float().cpu().numpy()},
                                labels=np.arange(k), predictions=np.arange(k), probs=probs,
                                domains=np.zeros(k, dtype=np.int64), indices=np.arange(k), domain_names=[name])
    return sets


@torch.no_grad()
def nearest_center_accuracy(method: DMSRL, data, which: str = "target", batch_size: int = 256,
                            device: str | torch.device = "cpu") -> dict[str, Any]:
    """Classify ``data`` by its nearest ``which`` centre in the class-feature space: overall accuracy, accuracy per
    true class, and agreement with the classifier's argmax (how well the centres carry the classes)."""
    from fer_lab.data.loading import iterate, to_device
    from fer_lab.evaluate import eval_mode

    centers = getattr(method.centers, which)
    near, arg, labels = [], [], []
    with eval_mode(method):
        for batch in iterate(data, batch_size):
            b = to_device(batch, device)
            z = method.features(b)["class_feature"]
            near.append(torch.cdist(z, centers).argmin(1).cpu())
            arg.append(method.classifier(z).argmax(1).cpu())
            labels.append(batch["labels"])
    near, arg, y = torch.cat(near), torch.cat(arg), torch.cat(labels)
    per_class = {EXPRESSIONS[c]: float((near[y == c] == c).float().mean()) for c in range(method.num_classes)
                 if (y == c).any()}
    return {"acc": float((near == y).float().mean()), "per_class": per_class,
            "agreement_with_classifier": float((near == arg).float().mean())}


#: Ablations as hyper-parameter overrides (the notebook trains each on the same budget).
ABLATIONS: dict[str, dict[str, Any]] = {
    "w/o margin term": {"margin_loss": False},
    "w/o MI module": {"mi": "none"},
    "global features only": {"local": "none"},
}

#: The released code's variants: its "MI" module is one domain discriminator; its local branch four crops.
RELEASED_CODE: dict[str, Any] = {"mi": "discriminator"}
RELEASED_CODE_CROPS: dict[str, Any] = {"mi": "discriminator", "local": "overlap4"}

#: DMSRL, the released code's variants and the ablations by name (bench rows: ``fer_lab.bench.format_row``).
VARIANTS: dict[str, dict[str, Any]] = {
    "DMSRL": {}, "released code (MI = discriminator)": RELEASED_CODE, "released code, four crops": RELEASED_CODE_CROPS,
    **{f"DMSRL, {k}": v for k, v in ABLATIONS.items()}}
