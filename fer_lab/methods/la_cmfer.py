"""LA-CMFER: learning with alignments for cross-multidomain FER (several labelled sources, one target).

Yang, Wen, Zeng, Xu, Wu, Zhou, Wang, "Learning with Alignments: Tackling the Inter- and Intra-domain Shifts for
Cross-multidomain Facial Expression Recognition", ACM MM 2024, pp. 4236-4245 (arXiv 2407.05688); code:
YYX-future/LA-CMFER (``models/LA-CMFER.py``, ``loss/mmd_1.py``, ``loss/intra_1.py``, ``pseudo/pseudo.py``).

A shared trunk feeds two branches, each with its classifier: the **global** branch (the backbone's last map ->
:class:`~fer_lab.models.GlobalHead`, ``f_g``) and the **local** branch (the stage-2 map cut into the released code's
four fixed quadrants, :func:`fer_lab.models.regions.fixed_regions`, ``f_l``; or the five landmark patches with
``regions="landmarks"``). The sources are pooled into one labelled batch (their domain ids kept). Per step, with
``p = softmax`` of a branch's logits, ``y`` the source labels and ``y^ = argmax p`` on the target::

    L_cls   = CE_ls(G(f_g^s), y) + CE_ls(L(f_l^s), y)                   label-smoothing CE, eps = 0.1
    w_i     = mean_k (p_i(k) - 1[k = y_i] max_k p_i)^2                   sample weight: far from its (pseudo) label
              counted only if max p_i >= 0.4 and class y_i is in the other domain's batch; sum w = 1 per domain
    A_b     = sum_ij w_i^s w_j^s k(f_i^s, f_j^s) + sum_ij w_i^t w_j^t k(f_i^t, f_j^t)
              - 2 sum_ij w_i^s w_j^t k(f_i^s, f_j^t)                     sample-level inter-domain alignment
              (k: 5 Gaussian kernels, multiplier 2, bandwidth from the mean pairwise distance; fer_lab.losses)
            + 0.02 [ mean_c MMD^2(S_c, T_c) - mean_{c != c'} MMD^2(S_c, T_c') ]
                                                                           cluster-level alignment (max p >= 0.4)
    C       = P_g^T P_l (7 x 7),  L_intra = 1/2 offdiag(row-normalised C) / 7 + 1/2 offdiag(col-normalised C) / 7
                                                                           multi-view intra-domain alignment (target)
    L_tgt   = CE(G(f_g^t), y^g) + CE(L(f_l^t), y^g) over targets where argmax p_g = argmax p_l and
              max(max p_g, max p_l) > 0.9                                 agreement pseudo labels
    L       = L_cls + alpha_p [0.4 (A_g + A_l) + 0.5 L_intra] + 0.1 L_tgt,   alpha_p = 2 / (1 + exp(-10 p)) - 1

Inference: the global, local or averaged probabilities ``(p_g + p_l) / 2`` (the default); :meth:`predict_details`
gives all three.

The multi-kernel ``k`` is DAN's convex combination (the mean of the 5 kernels); the code sums them
(``kernel_reduction="sum"``, five times the alignment terms). The warm-up ``alpha_p`` comes from the code's
``train.py``, which computes it and passes it to the model (whose ``forward``, as released, does not accept it), and
from MFSAN, on which the code builds, which scales its MMD by it (``ramp=False`` turns it off).

Paper and released code differ; the paper is the default, the code an option: the code computes the sample weights
and the prediction-similarity matrix from raw logits (``weight_space="logits"``, ``intra_space="logits"``) and runs
source and target through the network in separate passes, so BatchNorm normalises each domain on its own
(``separate_bn=True``). The code adds the cluster term inside ``A_b`` (so it is scaled by 0.4 too), as here. The
code's ``get_cluster_loss`` recomputes the kernel bandwidth for every class pair; here one bandwidth comes from all
confident rows and one kernel matrix serves every pair (:func:`fer_lab.losses.class_conditional_mmd`). The local
branch here convolves the whole stage-2 map and then pools each quadrant (the code crops first, then convolves),
with one small projection per quadrant.

Ablations (hyper-parameters): ``sample_weights=False`` (plain MMD: uniform weights, the code's
``inter_baseline``), ``cluster=False``, ``intra=False``, ``pseudo_labels=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fer_lab import losses
from fer_lab.data.loading import Batch
from fer_lab.labels import LANDMARKS
from fer_lab.methods.base import METHODS, Hparams, Method, SourceInput, pooled
from fer_lab.models.regions import fixed_regions, region_boxes

__all__ = [
    "ABLATIONS",
    "BRANCHES",
    "INFERENCE",
    "LACMFER",
    "LACMFERHparams",
    "NO_ALIGNMENT",
    "RegionBranch",
    "RELEASED_CODE",
    "agreement_pseudo_labels",
    "alignment_weight_frame",
    "alignment_weights",
    "branch_accuracies",
    "branch_outputs",
    "faces_figure",
    "cluster_alignment",
    "intra_domain_loss",
    "prediction_similarity",
    "pseudo_label_rules",
    "similarity_matrix",
]

BRANCHES: tuple[str, ...] = ("global", "local")
INFERENCE: tuple[str, ...] = ("global", "local", "average")


@dataclass
class LACMFERHparams(Hparams):
    # optimisation. Paper (train.py): SGD Nesterov, momentum 0.9, weight decay 1e-4, lr 0.01 for branches and heads
    # and 0.001 for the ImageNet ResNet-18 trunk (backbone_lr_mult 0.1), inverse decay, batch 128, 20,000 steps.
    # fer-lab's smoke runs start from scratch: one rate for everything, two CE terms (baselines: 0.1 on one).
    lr: float = 0.05
    weight_decay: float = 1e-4
    # architecture
    regions: str = "quadrants"          # "quadrants" (released code) or "landmarks" (the five landmark patches)
    region_width: int = 0               # channels of the local branch's convolutions (0: 2 x the stage-2 channels)
    # loss weights (train.py defaults)
    label_smoothing: float = 0.1        # CrossEntropyLabelSmooth, epsilon 0.1
    align_weight: float = 0.4           # --hyper_align, on A_g + A_l
    cluster_weight: float = 0.02        # --hyper_inter, inside A_b
    intra_weight: float = 0.5           # --hyper_intra
    pseudo_weight: float = 0.1          # --hyper_tgt
    align_threshold: float = 0.4        # --threshold: confidence for the sample weights and the cluster term
    pseudo_threshold: float = 0.9       # --ps_threshold: agreement pseudo labels
    kernel_num: int = 5                 # guassian_kernel(kernel_num=5, kernel_mul=2.0)
    kernel_mul: float = 2.0
    kernel_reduction: str = "mean"      # the 5 kernels averaged (DAN's MK-MMD: a convex combination, beta_u = 1/5)
    #                                     or summed ("sum": the code's guassian_kernel; 5x the alignment terms, which
    #                                     kept fer-lab's from-scratch smoke runs at chance: the source CE never fell)
    ramp: bool = True                   # alignment and intra terms x alpha_p = 2 / (1 + exp(-10 p)) - 1: train.py
    #                                     computes alpha_p and passes it to the model (whose forward, as released,
    #                                     does not take it); MFSAN, which the code builds on, scales its MMD by it
    # paper vs released code
    weight_space: str = "probs"         # sample weights from "probs" (paper) or raw "logits" (code)
    intra_space: str = "probs"          # prediction similarity of "probs" (paper) or raw "logits" (code's mcc_loss)
    separate_bn: bool = False           # code: source and target in separate forward passes (per-domain BN batches)
    # ablations
    sample_weights: bool = True         # False: plain MMD with uniform weights (the code's inter_baseline)
    cluster: bool = True                # False: no cluster-level term
    intra: bool = True                  # False: no multi-view intra-domain term
    pseudo_labels: bool = True          # False: no target pseudo-label loss
    inference: str = "average"          # "global", "local" or "average" (p_g + p_l) / 2

    def __post_init__(self) -> None:
        for key, allowed in (("regions", ("quadrants", "landmarks")), ("weight_space", ("probs", "logits")),
                             ("kernel_reduction", ("sum", "mean")),
                             ("intra_space", ("probs", "logits")), ("inference", INFERENCE)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"fer_lab/methods/la_cmfer.py: {key} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, key)!r}")


# ---------------------------------------------------------------------------------------------------------------------
# the losses, on plain tensors
# ---------------------------------------------------------------------------------------------------------------------
def alignment_weights(scores: Tensor, labels: Tensor, counted: Tensor) -> Tensor:
    """Sample weights of the sample-level alignment, normalised to sum to 1 (all zero if nothing is counted).

    ``w_i = mean_k (q_i(k) - 1[k = y_i] max_k q_i)^2`` for counted rows, 0 otherwise, with ``q`` the probabilities
    (or logits) of the row and ``y_i`` its label or pseudo label: a confident, correct row weighs little, a row
    far from its label ("hard to align") much.
    """
    onehot = F.one_hot(labels.clamp_min(0).long(), scores.shape[1]).to(scores.dtype)
    w = ((scores - onehot * scores.max(1, keepdim=True).values) ** 2).mean(1) * counted.to(scores.dtype)
    total = w.sum()
    return w / total if total > 0 else torch.zeros_like(w)


def cluster_alignment(xs: Tensor, ys: Tensor, xt: Tensor, yt: Tensor, mask_s: Tensor, mask_t: Tensor,
                      num_classes: int, num_kernels: int = 5, multiplier: float = 2.0,
                      reduction: str = "sum") -> Tensor:
    """Class-wise source-target MMD minus cross-class MMD over the confident rows (LA-CMFER's class-attribute
    alignment): ``mean_c MMD^2(S_c, T_c) - mean_{c != c'} MMD^2(S_c, T_c')`` over pairs present on both sides;
    0 when either mean has no pair."""
    m, valid = losses.class_conditional_mmd(xs, ys, xt, yt, num_classes, mask_s, mask_t, num_kernels=num_kernels,
                                            multiplier=multiplier, reduction=reduction)
    eye = torch.eye(num_classes, dtype=torch.bool, device=m.device)
    same, cross = valid & eye, valid & ~eye
    if not same.any() or not cross.any():
        return m.new_zeros(())
    return m[same].mean() - m[cross].mean()


def prediction_similarity(a: Tensor, b: Tensor, normalise: str | None = None) -> Tensor:
    """The prediction-similarity matrix ``C = a^T b`` ``[C, C]`` of two views' predictions ``[B, C]``;
    ``normalise="rows"`` / ``"cols"`` divides by its row / column sums (a zero sum stays zero)."""
    cov = a.T @ b
    if normalise is None:
        return cov
    if normalise not in ("rows", "cols"):
        raise ValueError(f"normalise must be None, 'rows' or 'cols', got {normalise!r}")
    s = cov.sum(1, keepdim=True) if normalise == "rows" else cov.sum(0, keepdim=True)
    return cov / torch.where(s.abs() > 1e-12, s, torch.ones_like(s))


def intra_domain_loss(a: Tensor, b: Tensor) -> Tensor:
    """Multi-view intra-domain alignment (the code's ``mcc_loss``): the off-diagonal mass of the row- and the
    column-normalised prediction-similarity matrix, ``1/2 offdiag(C_row) / C + 1/2 offdiag(C_col) / C``.
    Zero when both views predict the same one-hot classes."""
    c = a.shape[1]
    rows, cols = prediction_similarity(a, b, "rows"), prediction_similarity(a, b, "cols")
    return 0.5 * (rows.sum() - rows.trace()) / c + 0.5 * (cols.sum() - cols.trace()) / c


def agreement_pseudo_labels(p_g: Tensor, p_l: Tensor, threshold: float = 0.9) -> tuple[Tensor, Tensor]:
    """Target pseudo labels ``argmax p_g`` where both branches agree and one of them is above ``threshold``
    (the code's ``select_pseudo_labels``). Returns ``(labels [B], mask [B] bool)``."""
    conf_g, y_g = p_g.max(1)
    conf_l, y_l = p_l.max(1)
    return y_g, (y_g == y_l) & ((conf_g > threshold) | (conf_l > threshold))


def _masked_ce(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    ce = F.cross_entropy(logits, labels, reduction="none")
    return (ce * mask.to(ce.dtype)).sum() / mask.sum().clamp_min(1)


# ---------------------------------------------------------------------------------------------------------------------
# the local branch
# ---------------------------------------------------------------------------------------------------------------------
class RegionBranch(nn.Module):
    """Local branch on fixed regions: two conv-BN-ReLU layers on the stage-2 map (the first with stride 2, as the
    code's two residual blocks 128 -> 256), :func:`~fer_lab.models.regions.fixed_regions` pooling per region, one
    linear-ReLU projection per region to ``feat_dim``, concatenated: ``[B, C, H, W] -> [B, R * feat_dim]``."""

    def __init__(self, in_channels: int, feat_dim: int, width: int, layout: str = "quadrants") -> None:
        super().__init__()
        self.layout = layout
        self.num_regions = len(region_boxes(layout, 8, 8))
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.weight = nn.Parameter(torch.empty(self.num_regions, width, feat_dim))
        self.bias = nn.Parameter(torch.zeros(self.num_regions, feat_dim))
        bound = 1.0 / width ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)

    def regions(self, mid: Tensor) -> Tensor:
        """Pooled region features before the projection: ``[B, R, width]``."""
        return fixed_regions(self.convs(mid), self.layout)

    def forward(self, mid: Tensor) -> Tensor:
        r = torch.einsum("brc,rcd->brd", self.regions(mid), self.weight) + self.bias
        return F.relu(r).flatten(1)


# ---------------------------------------------------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------------------------------------------------
@METHODS.register("la_cmfer")
class LACMFER(Method):
    """LA-CMFER (see the module docstring)."""

    Hparams = LACMFERHparams
    summary: ClassVar[str] = ("LA-CMFER (ACM MM 2024): global + local branches, weighted MMD, cluster and "
                              "multi-view alignment, agreement pseudo labels; several labelled sources")
    #: modules that start fresh when a run starts from a source-only stage 1 (``init_from``)
    fresh_on_init = ("local_branch.", "heads.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        hp: LACMFERHparams = self.hp
        del self.classifier                                   # one classifier per branch instead
        ext = self.extractor
        if hp.regions == "quadrants":
            ext.local_heads = nn.ModuleList()                 # the landmark heads are not used
            width = hp.region_width or min(max(2 * ext.backbone.mid_channels, 32), 256)
            self.local_branch = RegionBranch(ext.backbone.mid_channels, hp.feat_dim, width, "quadrants")
            local_dim = self.local_branch.num_regions * hp.feat_dim
        else:
            self.local_branch = None
            local_dim = len(LANDMARKS) * hp.feat_dim
        self.heads = nn.ModuleDict({"global": nn.Linear(ext.stream_dim("global"), self.num_classes),
                                    "local": nn.Linear(local_dim, self.num_classes)})
        self.last: dict[str, Tensor] = {}                     # the last step's weights, pseudo labels (diagnostics)

    # -- forward pieces -----------------------------------------------------------------------------------------
    def branch_features(self, images: Tensor, landmarks: Tensor) -> dict[str, Tensor]:
        """``{"global": f_g, "local": f_l}``."""
        ext = self.extractor
        mid, last = ext.backbone(images)
        if self.local_branch is not None:
            local = self.local_branch(mid)
        else:
            patches = ext.patches(mid, landmarks)
            local = torch.cat([head(patches[:, k]) for k, head in enumerate(ext.local_heads)], 1)
        return {"global": ext.global_head(last), "local": local}

    def forward_both(self, xs: Batch, target: Batch) -> dict[str, Tensor]:
        if self.hp.separate_bn:
            fs = self.branch_features(xs["images"], xs["landmarks"])
            ft = self.branch_features(target["images"], target["landmarks"])
            return {b: torch.cat([fs[b], ft[b]]) for b in BRANCHES}
        return self.branch_features(torch.cat([xs["images"], target["images"]]),
                                    torch.cat([xs["landmarks"], target["landmarks"]]))

    def features(self, batch: Batch) -> dict[str, Tensor]:
        return self.branch_features(batch["images"], batch["landmarks"])

    def embed(self, batch: Batch) -> dict[str, Tensor]:
        """``global`` and ``local`` branch features."""
        return self.features(batch)

    # -- training -----------------------------------------------------------------------------------------------
    def branch_alignment(self, f: Tensor, logits: Tensor, ys: Tensor, n: int) -> dict[str, Tensor]:
        """``A_b`` of one branch and its parts: ``mmd`` (weighted), ``cluster``, the weights ``w_s`` / ``w_t``
        and the target pseudo labels ``y_t`` with their confidence mask ``conf_t``."""
        hp: LACMFERHparams = self.hp
        c = self.num_classes
        with torch.no_grad():
            p = logits.detach().softmax(1)
            conf, pred = p.max(1)
            conf = conf >= hp.align_threshold
            yt = pred[n:]
            present_s = torch.zeros(c, dtype=torch.bool, device=f.device).index_fill_(0, ys, True)
            present_t = torch.zeros(c, dtype=torch.bool, device=f.device).index_fill_(0, yt, True)
            q = p if hp.weight_space == "probs" else logits.detach()
            if hp.sample_weights:
                w_s = alignment_weights(q[:n], ys, conf[:n] & present_t[ys])
                w_t = alignment_weights(q[n:], yt, conf[n:] & present_s[yt])
            else:
                w_s, w_t = torch.full_like(p[:n, 0], 1.0 / n), torch.full_like(p[n:, 0], 1.0 / (len(p) - n))
        zero = f.new_zeros(())
        if w_s.sum() > 0 and w_t.sum() > 0:
            # A_b = w_s^T K_ss w_s + w_t^T K_tt w_t - 2 w_s^T K_st w_t
            mmd = losses.mmd(f[:n], f[n:], w_s, w_t, num_kernels=hp.kernel_num, multiplier=hp.kernel_mul,
                             reduction=hp.kernel_reduction)
        else:
            mmd = zero
        cluster = zero
        if hp.cluster and hp.cluster_weight > 0:
            # mean_c MMD^2(S_c, T_c) - mean_{c != c'} MMD^2(S_c, T_c'), confident rows only
            cluster = cluster_alignment(f[:n], ys, f[n:], yt, conf[:n], conf[n:], c, hp.kernel_num, hp.kernel_mul,
                                        hp.kernel_reduction)
        total = mmd + hp.cluster_weight * cluster
        return {"total": total, "mmd": mmd, "cluster": cluster, "w_s": w_s, "w_t": w_t, "y_t": yt,
                "conf_t": conf[n:]}

    def update(self, source: SourceInput, target: Batch | None, progress: float) -> dict[str, float]:
        hp: LACMFERHparams = self.hp
        xs = pooled(source)                                   # sources pooled; xs["domain"] keeps each row's source
        ys, n = xs["labels"], len(xs["labels"])
        if target is None:
            feats = self.features(xs)
            logits = {b: self.heads[b](feats[b]) for b in BRANCHES}
        else:
            feats = self.forward_both(xs, target)
            logits = {b: self.heads[b](feats[b]) for b in BRANCHES}

        # L_cls = CE_ls(G(f_g^s), y) + CE_ls(L(f_l^s), y)
        cls = {b: F.cross_entropy(logits[b][:n], ys, label_smoothing=hp.label_smoothing) for b in BRANCHES}
        loss = cls["global"] + cls["local"]
        logs: dict[str, float] = {"cls_global": cls["global"].item(), "cls_local": cls["local"].item()}
        logs["src_acc"] = (logits["global"][:n].argmax(1) == ys).float().mean().item()
        if target is None:
            self.step(loss)
            return {"loss": loss.item(), "cls": (cls["global"] + cls["local"]).item(), **logs}

        # warm-up alpha_p = 2 / (1 + exp(-10 p)) - 1 on the alignment terms (ramp=True; see LACMFERHparams.ramp)
        alpha = 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0 if hp.ramp else 1.0
        logs["alpha"] = alpha
        # sample-level (weighted MMD) + cluster-level alignment per branch: 0.4 (A_g + A_l)
        align = {b: self.branch_alignment(feats[b], logits[b], ys, n) for b in BRANCHES}
        loss = loss + alpha * hp.align_weight * (align["global"]["total"] + align["local"]["total"])

        # multi-view intra-domain alignment on the target: 0.5 L_intra(P_g, P_l)
        lt = {b: logits[b][n:] for b in BRANCHES}
        intra = loss.new_zeros(())
        if hp.intra and hp.intra_weight > 0:
            views = ((lt["global"].softmax(1), lt["local"].softmax(1)) if hp.intra_space == "probs"
                     else (lt["global"], lt["local"]))
            intra = intra_domain_loss(*views)
            loss = loss + alpha * hp.intra_weight * intra

        # agreement pseudo labels: 0.1 [CE(G(f_g^t), y^) + CE(L(f_l^t), y^)] over the agreed, confident rows
        with torch.no_grad():
            pseudo, mask = agreement_pseudo_labels(lt["global"].softmax(1), lt["local"].softmax(1),
                                                   hp.pseudo_threshold)
        pl = loss.new_zeros(())
        if hp.pseudo_labels and hp.pseudo_weight > 0 and mask.any():
            pl = _masked_ce(lt["global"], pseudo, mask) + _masked_ce(lt["local"], pseudo, mask)
            loss = loss + hp.pseudo_weight * pl

        self.step(loss)
        return self._logs(loss, cls, align, intra, pl, pseudo, mask, xs, target, logs)

    def _logs(self, loss: Tensor, cls: dict[str, Tensor], align: dict[str, dict[str, Tensor]], intra: Tensor,
              pl: Tensor, pseudo: Tensor, mask: Tensor, xs: Batch, target: Batch,
              logs: dict[str, float]) -> dict[str, float]:
        logs = {"loss": loss.item(), "cls": (cls["global"] + cls["local"]).item(), **logs}
        for b in BRANCHES:
            a = align[b]
            logs.update({f"align_{b}": a["total"].item(), f"mmd_{b}": a["mmd"].item(),
                         f"cluster_{b}": a["cluster"].item(),
                         f"counted_src_{b}": (a["w_s"] > 0).float().mean().item(),
                         f"counted_tgt_{b}": (a["w_t"] > 0).float().mean().item()})
        logs.update({"intra": intra.item(), "pl": pl.item(), "pl_mask": mask.float().mean().item()})
        domains = xs["domain"]
        for d in torch.unique(domains).tolist():              # share of the global source weight per source domain
            logs[f"w_share_d{d}"] = align["global"]["w_s"][domains == d].sum().item()
        truth = target.get("true_labels")
        self.last = {"source_domain": domains, "source_index": xs["index"], "target_index": target["index"],
                     "pseudo": pseudo, "mask": mask,
                     **{f"{k}_{b}": align[b][k].detach() for b in BRANCHES for k in ("w_s", "w_t", "y_t")}}
        if truth is not None:                                 # diagnostics only, never trained on
            self.last["true_labels"] = truth
            logs["pl_hit"] = (mask & (pseudo == truth)).float().mean().item()   # precision = pl_hit / pl_mask
        return logs

    # -- inference --------------------------------------------------------------------------------------------
    def predict_details(self, batch: Batch) -> dict[str, Tensor]:
        """Probabilities ``[B, C]`` of the ``global`` and ``local`` branches and their ``average``."""
        feats = self.features(batch)
        p = {b: self.heads[b](feats[b]).softmax(1) for b in BRANCHES}
        return {**p, "average": 0.5 * (p["global"] + p["local"])}

    def predict(self, batch: Batch) -> Tensor:
        """Logits of the chosen inference (``hp.inference``); for ``average`` the log of the mean probability."""
        if self.hp.inference == "average":
            return self.predict_details(batch)["average"].clamp_min(1e-12).log()
        b = self.hp.inference
        return self.heads[b](self.features(batch)[b])


# ---------------------------------------------------------------------------------------------------------------------
# analysis views (notebook 02)
# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def branch_outputs(method: LACMFER, data, batch_size: int = 256, device: str | torch.device = "cpu") -> dict:
    """Probabilities of every inference (``global``, ``local``, ``average``; ``[N, C]``) and ``labels [N]`` over
    every row of ``data``, unaugmented."""
    from fer_lab.data.loading import iterate, to_device
    from fer_lab.evaluate import eval_mode

    out: dict[str, list[Tensor]] = {k: [] for k in INFERENCE}
    with eval_mode(method):
        for batch in iterate(data, batch_size):
            d = method.predict_details(to_device(batch, device))
            for k in INFERENCE:
                out[k].append(d[k].float().cpu())
    return {**{k: torch.cat(v) for k, v in out.items()}, "labels": data.labels.clone()}


def branch_accuracies(method: LACMFER, data, batch_size: int = 256, device: str | torch.device = "cpu") -> dict:
    """Accuracy of the global, local and averaged predictions on ``data`` (rows with a label)."""
    o = branch_outputs(method, data, batch_size, device)
    keep = o["labels"] >= 0
    return {k: float((o[k].argmax(1)[keep] == o["labels"][keep]).float().mean()) for k in INFERENCE}


def pseudo_label_rules(method: LACMFER, data, threshold: float | None = None, batch_size: int = 256,
                       device: str | torch.device = "cpu"):
    """Coverage and precision (against the true labels, which the method never sees) of the agreement rule
    (both branches agree, one above ``threshold``) and of each view alone (its confidence above ``threshold``).
    Returns a DataFrame indexed by rule with ``coverage``, ``precision`` and ``faces``."""
    import pandas as pd

    thr = method.hp.pseudo_threshold if threshold is None else float(threshold)
    o = branch_outputs(method, data, batch_size, device)
    y = o["labels"]
    labels, agree = agreement_pseudo_labels(o["global"], o["local"], thr)
    rules = {"agreement (paper)": (labels, agree)}
    for k in INFERENCE:
        conf, pred = o[k].max(1)
        rules[f"{k} alone"] = (pred, conf > thr)
    rows = {}
    for name, (pred, mask) in rules.items():
        known = mask & (y >= 0)
        rows[name] = {"coverage": float(mask.float().mean()),
                      "precision": float((pred[known] == y[known]).float().mean()) if known.any() else float("nan"),
                      "faces": int(mask.sum())}
    return pd.DataFrame(rows).T.rename_axis("rule")


def similarity_matrix(method: LACMFER, data, normalise: str | None = "rows", batch_size: int = 256,
                      device: str | torch.device = "cpu"):
    """The prediction-similarity matrix ``P_g^T P_l`` of the two branches' probabilities over ``data``
    (``[C, C]`` numpy; ``normalise="rows"`` / ``"cols"`` / ``None``), the quantity L_intra penalises off the
    diagonal."""
    o = branch_outputs(method, data, batch_size, device)
    return prediction_similarity(o["global"], o["local"], normalise).numpy()


@torch.no_grad()
def alignment_weight_frame(method: LACMFER, sources, target, per_domain: int = 64, branch: str = "global",
                           seed: int = 0, device: str | torch.device = "cpu"):
    """The sample-level alignment weights the trained model gives one batch shaped like a training batch:
    ``per_domain`` seeded rows of each source (a list of FaceTensors, one per domain) and of the target, in eval
    mode, unaugmented. Returns a DataFrame (one row per face): ``side`` (source / target), ``domain`` (id),
    ``dataset`` (domain name, e.g. ``synth:lab``), ``index``, ``label`` (true), ``assigned`` (source label or
    target pseudo label), ``confidence``, ``weight`` (sums to 1 per side; 0 = not counted)."""
    import numpy as np
    import pandas as pd

    from fer_lab.data.loading import concat_batches, to_device
    from fer_lab.evaluate import domain_name, eval_mode

    rng = np.random.default_rng(seed)

    def pick(data):
        rows = np.sort(rng.choice(len(data), size=min(per_domain, len(data)), replace=False))
        return data.batch(torch.from_numpy(rows))

    xs = to_device(concat_batches([pick(d) for d in sources]), device)
    xt = to_device(pick(target), device)
    n = len(xs["labels"])
    with eval_mode(method):
        f = {b: torch.cat([method.features(xs)[b], method.features(xt)[b]]) for b in BRANCHES}
        logits = method.heads[branch](f[branch])
        a = method.branch_alignment(f[branch], logits, xs["labels"], n)
    conf = logits.softmax(1).max(1).values.cpu()
    names = {d.domain: domain_name(d.name) for d in [*sources, target]}
    domain = torch.cat([xs["domain"], xt["domain"]]).cpu()
    return pd.DataFrame({
        "side": ["source"] * n + ["target"] * len(xt["labels"]),
        "domain": domain.numpy(), "dataset": [names.get(int(d), str(int(d))) for d in domain],
        "index": torch.cat([xs["index"], xt["index"]]).cpu().numpy(),
        "label": torch.cat([xs["labels"], xt["labels"]]).cpu().numpy(),
        "assigned": torch.cat([xs["labels"], a["y_t"]]).cpu().numpy(),
        "confidence": conf.numpy(), "weight": torch.cat([a["w_s"], a["w_t"]]).cpu().numpy()})


def faces_figure(frame, datasets, k: int = 8, title: str = ""):
    """A matplotlib strip of the first ``k`` faces of ``frame`` (rows of :func:`alignment_weight_frame`), each
    titled with its dataset, label and weight; ``datasets`` maps a domain id to its FaceTensors."""
    import matplotlib.pyplot as plt

    from fer_lab.labels import EXPRESSIONS

    rows = frame.head(k)
    fig, axes = plt.subplots(1, max(len(rows), 1), figsize=(1.6 * max(len(rows), 1), 2.0), squeeze=False)
    for ax in axes[0]:
        ax.set_axis_off()
    for ax, (_, r) in zip(axes[0], rows.iterrows()):
        img = datasets[int(r["domain"])].images[int(r["index"])].permute(1, 2, 0).numpy()
        ax.imshow(img, interpolation="nearest")
        lab = EXPRESSIONS[int(r["label"])] if r["label"] >= 0 else "?"
        ax.set_title(f"{r['dataset']}\n{lab}, w={r['weight']:.3f}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.3)
    return fig


#: Ablations as hyper-parameter overrides (the paper's ablation rows).
ABLATIONS: dict[str, dict[str, Any]] = {
    "w/o sample weights": {"sample_weights": False},
    "w/o cluster term": {"cluster": False},
    "w/o intra-domain term": {"intra": False},
    "w/o pseudo labels": {"pseudo_labels": False},
}

#: The released code's choices where it departs from the paper.
RELEASED_CODE: dict[str, Any] = {"weight_space": "logits", "intra_space": "logits", "separate_bn": True,
                                 "kernel_reduction": "sum"}

#: The two branches trained on the pooled sources alone (every alignment and target term off): the "before" model.
NO_ALIGNMENT: dict[str, Any] = {"sample_weights": False, "cluster": False, "intra": False, "pseudo_labels": False,
                                "align_weight": 0.0}
