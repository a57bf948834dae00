"""Pose-aware adversarial domain adaptation for personalised FER.

Liang, Wang, Wang, "Pose-aware Adversarial Domain Adaptation for Personalized Facial Expression Recognition",
arXiv 2007.05932 (2020). No code was released and only the abstract is public, so everything below the abstract's
three strategies is a design of fer-lab's, stated as an assumption (A1-A11) and switchable by a hyper-parameter.

The abstract's three strategies, as implemented:

(i) **Adversarial domain adaptation, personalised.** A shared encoder ``E`` gives an expression code
    ``e = E_e(x)`` and a pose code ``p = E_p(x)``; an expression classifier ``C_e(e)`` and a pose classifier
    ``C_p(p)`` are trained on the labelled source; two domain discriminators ``D_e(e)`` and ``D_p(p)``, each behind
    a gradient reversal layer (Ganin & Lempitsky 2015), align both codes' distributions with the target's::

        L_exp  = CE(C_e(e_s), y_s)                                                    (i-a)
        L_pose = CE(C_p(p_s), b_s)          b = |yaw| bin of the source face           (i-b)
        L_dom  = BCE(D_e(R(e)), d) + BCE(D_p(R(p)), d)     R = gradient reversal       (i-c)

    "Personalised" is the protocol, not a layer: the target domain is ONE person (A1), so one adaptation run per
    target subject (``synth:wild?subject=K``; pooling several subjects, ``subject=0,1,2``, is the ablation).

(ii) **Cross-adversarial feature learning.** A pose predictor ``P_e`` on the expression code and an expression
    predictor ``Q_p`` on the pose code, each behind gradient reversal: the predictors learn to read the other
    factor, the encoder is pushed to remove it, so expression features become pose-indistinguishable and pose
    features expression-indistinguishable::

        L_cross = CE(P_e(R(e_s)), b_s) + CE(Q_p(R(p_s)), y_s)                          (ii)

(iii) **Reconstruction learning.** A decoder ``G`` rebuilds the face from both codes, on source and target::

        L_rec = || G(e, p) - x ||_1        (x brought to the decoder's resolution)     (iii)

    Swapping the pose code between two faces ``i, j`` of the same person, ``G(e_i, p_j)``, should show person
    ``i``'s expression at ``j``'s pose; on SynthFER that truth is rendered (``fer_lab.data.synth.render_at_pose``)
    and :func:`fer_lab.analysis.disentangle.swap_error` scores it. Here the swap is a check, not a training loss
    (A8).

Total: ``L = L_exp + w_pose L_pose + w_de L_dom(e) + w_dp L_dom(p) + w_pe L_cross(pose|e) + w_ep L_cross(exp|p)
+ w_rec L_rec``, one backward pass (the reversal layers make the min-max one step), one SGD optimiser.

Assumptions (none is from the paper; each names the hyper-parameter that switches it):

* A1 the target domain is a single subject (or a few); nothing in the method depends on it, the data spec chooses.
* A2 the encoder is fer-lab's shared global-local extractor (``feature``, 384-d ``fused`` by default) followed by
  two linear+ReLU heads: ``e`` and ``p`` of ``pose_dim`` (32) dimensions. ``e`` has the feature's size and its
  head starts as the identity (``expr_dim=0``; the features are non-negative, so ``ReLU(I f) = f``): started from
  a source-only model, the method predicts exactly as it does and adapts from there; ``expr_dim=64`` gives a
  fresh 64-d projection instead.
* A3 pose is supervised as **|yaw| bins** (classification; ``yaw_bins`` edges in degrees, default 15,30,45,60 ->
  5 bins), not regression: the trainer's flip augmentation mirrors the image but not the yaw label, and |yaw| is
  flip-invariant; bins also match the datasets' discrete camera angles (Multi-PIE's 15 degree steps).
  Faces without a pose (NaN) are ignored by the pose losses.
* A4 pose labels are used on the source only (the abstract: "in the source domain"); ``target_pose=true`` also
  trains ``C_p`` and ``P_e`` on the target's poses when the dataset ships them (Multi-PIE, BU-3DFE renders).
* A5 both domain discriminators are DANN's (``DomainDiscriminator``, two hidden layers, dropout), one per code,
  and all reversal layers share DANN's warm-up schedule ``2 / (1 + exp(-alpha p)) - 1``.
* A6 the cross-adversarial predictors are single linear layers trained on source labels, reversed with the same
  coefficient; their weights ``cross_pose_weight`` / ``cross_expr_weight`` switch each one off at 0.
* A7 the decoder (``fer_lab.models.decoder.CodeDecoder``, ``decoder_width`` channels) rebuilds a
  ``recon_size`` (32 px) image from ``[e, p]``; L1 by default (``recon_norm=l2`` for L2); on source and target
  rows (``recon_on``).
* A8 pose-code swaps are not a training loss (no pixel truth exists for real data); they are evaluated.
* A9 predictions are ``C_e(e)`` alone.
* A10 identity is not given its own code: the abstract names pose and expression features only, so identity
  must live in the codes the decoder reads (mostly the pose code, which the cross-adversary keeps free of
  expression).
* A11 the modules without a counterpart in a source-only model (pose code and classifier, cross predictors,
  decoder) train at ``head_lr_mult`` times the rate; ``fer-lab bench`` sets 10, as new layers on a trained
  extractor usually get (at the trunk's rate the pose classifier stayed at chance over a 100-step adaptation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fer_lab.data.loading import Batch
from fer_lab.methods.base import (METHODS, Hparams, Method, SourceInput, classification_loss, joint_forward,
                                  pooled)
from fer_lab.models import DomainDiscriminator, WarmStartGradientReverse, domain_adversarial_loss
from fer_lab.models.decoder import CodeDecoder, reconstruction_loss

__all__ = ["PoseADA", "PoseADAHparams", "same_subject_partners", "yaw_bins"]


@dataclass
class PoseADAHparams(Hparams):
    expr_dim: int = 0                # A2: 0 = the feature's size with an identity-initialised head, so that from a
    #                                  source-only stage 1 the expression path starts as that model (its
    #                                  classifier loads); > 0 = a fresh projection of that size
    pose_dim: int = 32               # A2: pose needs fewer dimensions than expression (a few bins)
    yaw_bins: str = "15,30,45,60"    # A3: |yaw| bin edges in degrees (5 bins; Multi-PIE's 15 degree steps)
    target_pose: bool = False        # A4: pose labels on the source only, as the abstract says
    pose_weight: float = 1.0         # (i-b) equal to the expression loss: both are supervised source tasks
    adv_expr_weight: float = 1.0     # (i-c) on e: DANN's trade-off 1 (the GRL ramp does the warm-up)
    adv_pose_weight: float = 1.0     # (i-c) on p: the same; 0 switches that discriminator off
    cross_pose_weight: float = 0.5   # (ii) pose predictor on e: half, because with two discriminators and two
    #                                  cross heads four reversed gradients reach the encoder, and at 1 each they
    #                                  would outweigh the one expression loss that keeps e useful
    cross_expr_weight: float = 0.5   # (ii) expression predictor on p: the same reasoning
    recon_weight: float = 1.0        # (iii) an L1 pixel error in [0, 1] is ~0.1-0.2 at the start, an order of
    #                                  magnitude below CE(7 classes) ~1.9, so 1 lets it shape the codes without
    #                                  dominating
    recon_norm: str = "l1"           # A7: l1 (default) or l2
    recon_size: int = 32             # A7: decoder output side (power of two); cheap at 64 px inputs
    recon_on: str = "both"           # A7: source, target or both rows are reconstructed
    decoder_width: int = 64          # A7: seed-map channels, halved per stage down to a quarter (64, 32, 16, 16):
    #                                  at 128 the decoder alone costs as much as the backbone at 64 px
    grl_alpha: float = 10.0          # A5: DANN's warm-up steepness (JMLR Eq. 14)
    disc_hidden: int = 256           # A5: smaller than DANN's 1024, the codes are 64 / 32-d
    disc_dropout: float = 0.5        # A5: the CDAN discriminator's dropout
    disc_lr_mult: float = 1.0
    head_lr_mult: float = 1.0        # the modules that start without a trained counterpart (pose code and classifier,
    #                                  the cross predictors, the decoder); ``fer-lab bench`` sets 10, the usual rate
    #                                  of new layers on a trained extractor (at the trunk's rate the pose classifier
    #                                  stayed at chance, CE ln 5, over a 100-step adaptation)


def yaw_bins(pose: Tensor, edges: Tensor) -> Tensor:
    """Bin of ``|yaw|`` (``pose[:, 0]``, degrees) for each row: bin ``k`` holds ``edges[k-1] <= |yaw| < edges[k]``
    (``len(edges) + 1`` bins); rows whose yaw is NaN get -1 (ignored by the losses)."""
    yaw = pose[:, 0].abs()
    b = torch.bucketize(yaw.nan_to_num(0.0), edges.to(yaw.dtype), right=True)
    return torch.where(torch.isnan(yaw), torch.full_like(b, -1), b)


def same_subject_partners(subject: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """For each row, another row of the same subject (``[B]`` int64 indices), chosen at random within the
    subject's rows (a random cyclic order, so every row is some row's partner); a subject with one row in the
    batch partners itself. Vectorised: one sort and one ``unique_consecutive``."""
    subject = subject.detach().cpu()
    n = len(subject)
    if n == 0:
        return subject.new_zeros(0, dtype=torch.int64)
    key = torch.rand(n, generator=generator).argsort()             # random order...
    order = key[torch.argsort(subject[key], stable=True)]          # ...grouped by subject
    _, counts = torch.unique_consecutive(subject[order], return_counts=True)
    start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    size = torch.repeat_interleave(counts, counts)
    pos = torch.arange(n)
    partner_pos = start + (pos - start + 1) % size
    out = torch.empty(n, dtype=torch.int64)
    out[order] = order[partner_pos]
    return out


@METHODS.register("pose_ada")
class PoseADA(Method):
    """Pose-aware adversarial DA (arXiv 2007.05932, designed from the abstract; see the module docstring)."""

    Hparams = PoseADAHparams
    #: from a source-only stage 1 (``fer-lab bench``): the extractor is loaded, every module of this method starts fresh
    fresh_on_init = ("expr_head.", "pose_head.", "classifier.", "pose_classifier.", "disc_expr.", "disc_pose.",
                     "pose_from_expr.", "expr_from_pose.", "decoder.", "grl.")
    summary = "Pose-aware adversarial DA for personalised FER (expression/pose codes, cross-adversary, decoder)"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        hp = self.hp
        edges = [float(e) for e in str(hp.yaw_bins).replace(";", ",").split(",") if e.strip()]
        if not edges or sorted(edges) != edges or edges[0] <= 0:
            raise ValueError(f"yaw_bins must be increasing positive |yaw| edges in degrees, got {hp.yaw_bins!r}")
        if hp.recon_norm not in ("l1", "l2"):
            raise ValueError(f"recon_norm must be 'l1' or 'l2', got {hp.recon_norm!r}")
        if hp.recon_on not in ("source", "target", "both"):
            raise ValueError(f"recon_on must be 'source', 'target' or 'both', got {hp.recon_on!r}")
        self.register_buffer("yaw_edges", torch.tensor(edges), persistent=False)
        self.num_pose_bins = len(edges) + 1
        # A2: the shared encoder = extractor + two code heads
        if hp.expr_dim < 0:
            raise ValueError(f"expr_dim must be 0 (the feature's size, identity start) or positive, got {hp.expr_dim}")
        self.expr_dim = int(hp.expr_dim) or self.feature_dim
        self.expr_head = nn.Sequential(nn.Linear(self.feature_dim, self.expr_dim), nn.ReLU())
        if not hp.expr_dim:
            with torch.no_grad():
                self.expr_head[0].weight.copy_(torch.eye(self.feature_dim))
                self.expr_head[0].bias.zero_()
        self.pose_head = nn.Sequential(nn.Linear(self.feature_dim, hp.pose_dim), nn.ReLU())
        self.classifier = nn.Linear(self.expr_dim, self.num_classes)            # C_e
        self.pose_classifier = nn.Linear(hp.pose_dim, self.num_pose_bins)       # C_p
        self.disc_expr = DomainDiscriminator(self.expr_dim, hidden=hp.disc_hidden, dropout=hp.disc_dropout)  # D_e
        self.disc_pose = DomainDiscriminator(hp.pose_dim, hidden=hp.disc_hidden, dropout=hp.disc_dropout)  # D_p
        self.pose_from_expr = nn.Linear(self.expr_dim, self.num_pose_bins)       # P_e (ii)
        self.expr_from_pose = nn.Linear(hp.pose_dim, self.num_classes)           # Q_p (ii)
        w = int(hp.decoder_width)
        self.decoder = CodeDecoder((self.expr_dim, hp.pose_dim), out_size=hp.recon_size,
                                   channels=(w, max(w // 2, 1), max(w // 4, 1)))            # G (iii)
        self.grl = WarmStartGradientReverse(alpha=hp.grl_alpha)

    #: the modules :attr:`PoseADAHparams.head_lr_mult` applies to
    new_modules = ("pose_head", "pose_classifier", "pose_from_expr", "expr_from_pose", "decoder")

    def param_groups(self):
        disc = [p for m in (self.disc_expr, self.disc_pose) for p in m.parameters()]
        new = [p for name in self.new_modules for p in getattr(self, name).parameters()]
        return self.regrouped([(disc, self.hp.disc_lr_mult), (new, self.hp.head_lr_mult)])

    def initial_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        # another method's run (a source-only stage 1) has a classifier on the fused stream: entries of another
        # shape are left out, so those modules start fresh (fresh_on_init)
        mine = self.state_dict()
        return {k: v for k, v in state.items() if k not in mine or mine[k].shape == v.shape}

    # -- codes ----------------------------------------------------------------------------------------------
    def codes_from(self, feats: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(e [B, expr_dim], p [B, pose_dim])`` from the extractor's streams."""
        f = feats[self.hp.feature]
        return self.expr_head(f), self.pose_head(f)

    def codes(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.codes_from(self.features(batch))

    def pose_labels(self, batch: Batch) -> Tensor:
        return yaw_bins(batch["pose"].float(), self.yaw_edges)

    def reconstruct(self, batch: Batch, pose_from: Tensor | None = None) -> Tensor:
        """``G(e_i, p_{pose_from[i]})`` ``[B, 3, recon_size, recon_size]``; ``pose_from=None`` rebuilds each face
        from its own codes. With :func:`same_subject_partners` this is the pose swap of strategy (iii)."""
        e, p = self.codes(batch)
        return self.decoder(e, p if pose_from is None else p[pose_from])

    def embed(self, batch: Batch) -> dict[str, Tensor]:
        feats = self.features(batch)
        e, p = self.codes_from(feats)
        return {**feats, "expr": e, "pose": p}

    def predict(self, batch: Batch) -> Tensor:
        return self.classifier(self.codes(batch)[0])  # A9

    def cross_adversarial(self, e: Tensor, pose_bins: Tensor, p: Tensor, labels: Tensor,
                          progress: float) -> tuple[Tensor, Tensor]:
        """Strategy (ii): ``(CE(P_e(R(e)), b), CE(Q_p(R(p)), y))`` for expression codes ``e`` with pose bins ``b``
        and pose codes ``p`` with expressions ``y``. The predictors descend their loss; through the reversal
        layer the encoder receives ``-coeff`` times that gradient, i.e. it ascends it. A term whose weight is 0
        is a constant 0."""
        zero = e.new_zeros(())
        # (ii) L_cross = CE(P_e(R(e)), b) + CE(Q_p(R(p)), y)
        cross_pe = _ce(self.pose_from_expr(self.grl(e, progress)), pose_bins) if self.hp.cross_pose_weight else zero
        cross_ep = (_ce(self.expr_from_pose(self.grl(p, progress)), labels) if self.hp.cross_expr_weight else zero)
        return cross_pe, cross_ep

    # -- one step -------------------------------------------------------------------------------------------
    def update(self, source: SourceInput, target: Batch | None, progress: float) -> dict[str, float]:
        hp = self.hp
        xs = pooled(source)
        feats, n = joint_forward(self, xs, target)
        e, p = self.codes_from(feats)
        logits = self.classifier(e)
        b_s = self.pose_labels(xs)
        b_pose = torch.cat([b_s, self.pose_labels(target)]) if hp.target_pose else b_s
        rows = len(b_pose)
        zero = e.new_zeros(())
        logs: dict[str, float] = {}
        # (i-a) L_exp = CE(C_e(e_s), y_s)
        cls = classification_loss(logits[:n], xs["labels"])
        # (i-b) L_pose = CE(C_p(p_s), b_s)   (A3: |yaw| bins; A4: source rows unless target_pose)
        pose = _ce(self.pose_classifier(p[:rows]), b_pose) if hp.pose_weight else zero
        coeff = self.grl.coeff(progress)
        # (i-c) L_dom = BCE(D_e(R(e)), d) + BCE(D_p(R(p)), d)
        adv_e = adv_p = zero
        if hp.adv_expr_weight:
            r = self.grl(e, progress)
            adv_e, acc_e = domain_adversarial_loss(self.disc_expr, r[:n], r[n:])
            logs["disc_acc_expr"] = float(acc_e)
        if hp.adv_pose_weight:
            r = self.grl(p, progress)
            adv_p, acc_p = domain_adversarial_loss(self.disc_pose, r[:n], r[n:])
            logs["disc_acc_pose"] = float(acc_p)
        cross_pe, cross_ep = self.cross_adversarial(e[:rows], b_pose, p[:n], xs["labels"], progress)
        # (iii) L_rec = || G(e, p) - x ||_1
        rec = zero
        if hp.recon_weight:
            images = torch.cat([xs["images"], target["images"]])
            sl = {"both": slice(None), "source": slice(0, n), "target": slice(n, None)}[hp.recon_on]
            rec = reconstruction_loss(self.decoder(e[sl], p[sl]), images[sl], hp.recon_norm)
        loss = (cls + hp.pose_weight * pose + hp.adv_expr_weight * adv_e + hp.adv_pose_weight * adv_p
                + hp.cross_pose_weight * cross_pe + hp.cross_expr_weight * cross_ep + hp.recon_weight * rec)
        self.step(loss)
        with torch.no_grad():
            src_acc = (logits[:n].argmax(1) == xs["labels"]).float().mean()
        terms = {"loss": loss, "cls": cls, "pose": pose, "adv": adv_e + adv_p, "adv_expr": adv_e, "adv_pose": adv_p,
                 "cross_pose": cross_pe, "cross_expr": cross_ep, "recon": rec, "src_acc": src_acc}
        return {**{k: float(v.detach()) for k, v in terms.items()}, "grl_coeff": coeff,
                **logs}


def _ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over rows with a label (>= 0); 0 (with a graph) when no row has one."""
    if not bool((labels >= 0).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=-1)
