"""Generalizable FER: sigmoid masks on frozen general features, channel-separated logits (no target data).

Zhang, Zheng, Liang, Hu, Deng, "Generalizable Facial Expression Recognition", ECCV 2024 (arXiv 2408.10614);
released code zyh-uaiaaaa/Generalizable-FER, ``code/ours_CAFE.py``. Train on one domain, test zero-shot on unseen
ones. A frozen general-purpose encoder E (CLIP ViT-B/32 in the paper) gives ``e = E(x)``; a trainable mask network
M (a face-identity ResNet-18 in the paper) gives a sigmoid mask over e's channels::

    z = e ⊙ σ(M(x))                                                  (masked feature, D channels)
    G_k = channels [k g, (k + 1) g),  g = floor(D / K)               (one channel group per class)
    s_k(z) = max_{c ∈ G_k} z_c                                       (group-max logit of class k)
    L_sep = CE(s(z ⊙ r), y)      r: drop mask zeroing ⌊p g⌉ random channels of each group
    L_div = 1 - mean_{b,k} s_k(z_b) / g                              (channel-diverse loss)
    L = λ_fc CE(W z, y) + 1.5 L_sep + 5 L_div                          (weights of ours_CAFE.py)

Inference (``head``): ``"groupmax"`` (default) predicts ``argmax_k s_k(z)``, the paper's rule ("avoids the FC
layer"); ``"fc"`` predicts ``argmax W z``, what the released code and its evaluation notebooks actually do. The
training loss is the released code's in both cases (``fc_weight=0`` trains without the FC layer at all).

Paper-vs-code details kept from the code (see the reference spec, section 5a-5e):

* the group-max pools windows of ``g = floor(D / K)`` channels, so the ``D - K g`` last channels belong to no group
  (channel 511 of 512 in the code); the drop mask redraws one pattern per call, shared by the whole batch
  (``drop_per_sample=True`` draws one per sample);
* with a 1x1 feature the code's "diversity" term (from the mutual-channel loss, which has a spatial softmax) reduces
  to the mean group maximum divided by the group size (73 in the code), as written above;
* Adam, lr 2e-4, weight decay 1e-4; the code decays the learning rate by 0.9 per epoch over 60 epochs (use
  ``--lr-schedule exp`` for that curve over a run's progress).

fer-lab defaults: the frozen encoder is ``dlib:face_resnet?feature=pooled``, the 256-d pooled features of dlib's
face-recognition ResNet (trained on about 3 million real faces; ``face_recognition_models`` package, ported in
:mod:`fer_lab.models.pretrained`), the best of the real encoders that ship offline in
``benchmarks/bench_encoders.py`` (a linear probe trained on SynthFER lab: 43.9 % mean over the unseen domains,
against 24.3 % for ImageNet EfficientNet-Lite0 and 19.4 % for ``pretrain:smoke``). It is a face-identity network,
not a general-purpose one like the paper's CLIP: give ``encoder="clip:/path/ViT-B-32.pt"`` for the paper's set-up,
``"backbone:efficientnet_lite0"`` for an ImageNet encoder or ``"pretrain:auto"`` for fer-lab's SynthFER encoder.
The mask network is the ``fer-lab pretrain`` recipe's backbone, initialised from its weights
(``mask_init="pretrain"``), as the paper initialises its mask network from a face identity model. The trainer's weak
augmentation replaces the code's flip / RandomErasing / Gaussian noise. Frozen features are memoised per distinct
image (``memo_features``), so with ``--no-augment`` the encoder runs once per face.

Also here: ``linear_probe``, a linear classifier on the same frozen features (the usual yardstick of how much
expression information a frozen encoder carries).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from fer_lab.data.loading import Batch
from fer_lab.labels import NUM_CLASSES
from fer_lab.methods.base import METHODS, Hparams, Method, SourceInput, _log_uniform, classification_loss, pooled
from fer_lab.models.backbones import Backbone, build_backbone
from fer_lab.models.frozen import FrozenEncoder, build_frozen_encoder

__all__ = [
    "FrozenFeatureMethod",
    "GenFER",
    "GenFERHparams",
    "LinearProbe",
    "LinearProbeHparams",
    "MaskNetwork",
    "channel_drop_mask",
    "diverse_loss",
    "group_max",
    "group_slices",
]


# ---------------------------------------------------------------------------------------------------------------------
# channel groups
# ---------------------------------------------------------------------------------------------------------------------
def group_slices(dim: int, num_classes: int = NUM_CLASSES) -> list[slice]:
    """Channels of each class's group: ``[k g, (k + 1) g)`` with ``g = dim // num_classes``; the last
    ``dim - num_classes g`` channels are in no group (as the code's max-pool windows)."""
    g = dim // num_classes
    if g < 1:
        raise ValueError(f"{dim} feature channels cannot form {num_classes} groups")
    return [slice(k * g, (k + 1) * g) for k in range(num_classes)]


def group_max(z: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """``[B, D] -> [B, K]``: the maximum of each class's channel group (the channel-separated logits)."""
    b, d = z.shape
    g = d // num_classes
    if g < 1:
        raise ValueError(f"{d} feature channels cannot form {num_classes} groups")
    return z[:, : num_classes * g].reshape(b, num_classes, g).amax(dim=2)


def channel_drop_mask(dim: int, num_classes: int, n_drop: int, batch: int | None = None,
                      generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """A 0/1 mask that zeroes exactly ``n_drop`` random channels inside each class group (the code's ``Mask``).

    Returns ``[1, dim]`` (one pattern for the batch, as the code) or ``[batch, dim]`` (one per sample). Channels
    outside every group are kept (they never reach a group-max logit anyway).
    """
    g = dim // num_classes
    if not 0 <= n_drop < g:
        raise ValueError(f"n_drop must be in [0, {g}) for groups of {g} channels, got {n_drop}")
    rows = 1 if batch is None else batch
    keys = torch.rand(rows, num_classes, g, generator=generator)
    dropped = keys.argsort(dim=2)[..., :n_drop]                       # n_drop distinct positions per group
    keep = torch.ones(rows, num_classes, g)
    keep.scatter_(2, dropped, 0.0)
    mask = torch.ones(rows, dim)
    mask[:, : num_classes * g] = keep.reshape(rows, -1)
    return mask.to(device)


def diverse_loss(z: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """The channel-diverse loss ``1 - mean_{b,k} max_{c ∈ G_k} z_{b,c} / g`` (``g`` channels per group).

    It is 1 when every group maximum is 0 and falls as each group's strongest channel grows; its gradient reaches
    only the arg-max channel of each group, so different samples of a class can rely on different channels.
    """
    g = z.shape[1] // num_classes
    return 1.0 - group_max(z, num_classes).mean() / g


# ---------------------------------------------------------------------------------------------------------------------
# the mask network
# ---------------------------------------------------------------------------------------------------------------------
class MaskNetwork(nn.Module):
    """``x -> M(x) ∈ R^D``: a backbone, global average pooling, and a linear map to ``D`` only when the backbone's
    width differs from ``D`` (the paper's ResNet-18 is 512 wide, as CLIP's feature)."""

    def __init__(self, backbone: Backbone, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        c = backbone.out_channels
        self.proj: nn.Module = nn.Identity() if c == dim else nn.Linear(c, dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(self.backbone(images)[1].mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------------------------------------
# methods on frozen features
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class FrozenFeatureHparams(Hparams):
    lr: float = 2e-4                    # Adam (ours_CAFE.py)
    weight_decay: float = 1e-4          # ours_CAFE.py
    encoder: str = "dlib:face_resnet?feature=pooled"  # frozen encoder spec (fer_lab.models.frozen): dlib's
    #                                     face-recognition ResNet, 256-d pooled (the best real encoder measured by
    #                                     benchmarks/bench_encoders.py); "clip:PATH" for the paper's CLIP,
    #                                     "backbone:efficientnet_lite0" (ImageNet), "pretrain:auto" (fer-lab's)
    memo_features: bool = True          # encode each distinct face once (FrozenEncoder.use_memo; with --no-augment
    #                                     every training face after the first epoch is a hit)

    SEARCH: ClassVar[dict[str, Callable[[np.random.Generator], Any]]] = {
        "lr": _log_uniform(-4.5, -2.5),
        "weight_decay": _log_uniform(-6, -3),
    }


class FrozenFeatureMethod(Method):
    """Base of methods on a frozen encoder: builds it from ``hparams.encoder``, keeps it out of checkpoints (they
    carry its :attr:`~fer_lab.models.frozen.FrozenEncoder.digest` instead, checked on load) and uses Adam."""

    needs_target = False
    Hparams: ClassVar[type[Hparams]] = FrozenFeatureHparams

    def __init__(self, hparams: Hparams | dict | None = None, backbone: str = "smallcnn",
                 weights: str | None = None, num_classes: int = NUM_CLASSES) -> None:
        nn.Module.__init__(self)  # no global-local extractor: the features come from the frozen encoder
        if not isinstance(hparams, self.Hparams):
            values = hparams if isinstance(hparams, dict) else dataclasses.asdict(hparams) if hparams else None
            hparams = self.Hparams.from_dict(values)
        self.hp = hparams
        self.num_classes = num_classes
        self.backbone_name, self.backbone_weights = backbone, weights
        self.encoder: FrozenEncoder = build_frozen_encoder(hparams.encoder)
        if hparams.memo_features:
            self.encoder.use_memo()
        self.feature_dim = self.encoder.dim
        self.register_buffer("encoder_digest", torch.tensor(list(bytes.fromhex(self.encoder.digest)),
                                                            dtype=torch.uint8))
        self._optimizer: torch.optim.Optimizer | None = None

    # -- optimisation -------------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr_mult": 1.0}]

    def build_optimizer(self, groups: list[dict[str, Any]] | None = None) -> torch.optim.Optimizer:
        groups = groups if groups is not None else self.param_groups()
        for g in groups:
            g["lr"] = self.hp.lr * g["lr_mult"]
        return torch.optim.Adam(groups, lr=self.hp.lr, weight_decay=self.hp.weight_decay)

    # -- checkpoints without the frozen weights ----------------------------------------------------------------------
    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        sd = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for k in [k for k in sd if k.startswith(prefix + "encoder.")]:
            del sd[k]
        return sd

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        saved = state_dict.get("encoder_digest")
        if saved is not None and not torch.equal(saved.cpu(), self.encoder_digest.cpu()):
            raise ValueError(f"checkpoint was trained on another frozen encoder (digest {bytes(saved.tolist()).hex()}, "
                             f"this one {self.encoder.digest}: {self.encoder.name}); rebuild the encoder it used")
        full = dict(state_dict)
        full.update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items()})
        return super().load_state_dict(full, strict=strict, assign=assign)

    def features(self, batch: Batch) -> dict[str, Tensor]:
        return {"frozen": self.encoder(batch["images"])}

    def embed(self, batch: Batch) -> dict[str, Tensor]:
        return self.features(batch)


@dataclass
class LinearProbeHparams(FrozenFeatureHparams):
    lr: float = 1e-3                    # a linear layer on fixed features: a larger step than the masks'
    weight_decay: float = 0.0


@METHODS.register("linear_probe")
class LinearProbe(FrozenFeatureMethod):
    """Linear probe: ``argmax W E(x)`` with E frozen; cross-entropy on the source."""

    summary = "Linear probe: a linear classifier on a frozen encoder's features (no target data)."

    Hparams = LinearProbeHparams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.norm = nn.BatchNorm1d(self.feature_dim, affine=False)  # standardise the fixed features (running stats)
        self.classifier = nn.Linear(self.feature_dim, self.num_classes)

    def predict(self, batch: Batch) -> Tensor:
        return self.classifier(self.norm(self.encoder(batch["images"])))

    def update(self, source: SourceInput, target: Batch | None, progress: float) -> dict[str, float]:
        xs = pooled(source)
        logits = self.predict(xs)
        loss = classification_loss(logits, xs["labels"])           # L = CE(W E(x), y)
        self.step(loss)
        return {"loss": loss.item(), "cls": loss.item(), "src_acc": (logits.argmax(1) == xs["labels"]).float().mean().item()}


@dataclass
class GenFERHparams(FrozenFeatureHparams):
    mask_init: str = "pretrain"         # "pretrain": the encoder recipe's backbone and weights; "backbone": the
    #                                     run's --backbone (random init, or --backbone-weights)
    head: str = "groupmax"              # inference: "groupmax" (paper) or "fc" (released code)
    fc_weight: float = 1.0              # CE(FC(z), y) (ours_CAFE.py)
    sep_weight: float = 1.5             # L_sep (ours_CAFE.py)
    div_weight: float = 5.0             # L_div (ours_CAFE.py)
    drop_frac: float = 10 / 73          # channels dropped per group in L_sep (10 of 73 in the code)
    drop_per_sample: bool = False       # the code draws one drop pattern per batch

    SEARCH: ClassVar[dict[str, Callable[[np.random.Generator], Any]]] = {
        "div_weight": lambda rng: float(10 ** rng.uniform(-0.5, 1.0)),
        "sep_weight": lambda rng: float(10 ** rng.uniform(-0.5, 0.7)),
    }


@METHODS.register("gen_fer")
class GenFER(FrozenFeatureMethod):
    """Masks on frozen features with channel-separated, group-max logits (see the module docstring)."""

    Hparams = GenFERHparams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        hp = self.hp
        if hp.head not in ("groupmax", "fc"):
            raise ValueError(f"gen_fer: head must be 'groupmax' (paper) or 'fc' (released code), got {hp.head!r}")
        self.groups = group_slices(self.feature_dim, self.num_classes)
        self.group_size = self.feature_dim // self.num_classes
        self.n_drop = int(round(hp.drop_frac * self.group_size))
        self.mask_net = MaskNetwork(self._mask_backbone(), self.feature_dim)
        self.fc = nn.Linear(self.feature_dim, self.num_classes)

    def _mask_backbone(self) -> Backbone:
        hp = self.hp
        if hp.mask_init == "backbone":
            return build_backbone(self.backbone_name, weights=self.backbone_weights)
        if hp.mask_init != "pretrain":
            raise ValueError(f"gen_fer: mask_init must be 'pretrain' or 'backbone', got {hp.mask_init!r}")
        from fer_lab.models.frozen import parse_encoder_spec
        from fer_lab.pretrain import build_backbone_from_recipe, resolve_pretrain

        scheme, arg, _ = parse_encoder_spec(hp.encoder)
        _, recipe = resolve_pretrain((arg or "auto") if scheme == "pretrain" else "auto")
        if self.backbone_weights is not None or self.backbone_name not in ("smallcnn", recipe.backbone):
            raise ValueError(f"gen_fer: mask_init='pretrain' builds the mask network from the pretrain recipe "
                             f"({recipe.backbone}); to use --backbone {self.backbone_name} / --backbone-weights, "
                             f"pass --hp mask_init=backbone")
        return build_backbone_from_recipe(recipe)

    # -- forward pieces -------------------------------------------------------------------------------------------
    def masked(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(e, σ(M(x)), z = e ⊙ σ(M(x)))``."""
        e = self.encoder(images)
        mask = torch.sigmoid(self.mask_net(images))
        return e, mask, e * mask

    def logits(self, z: Tensor) -> Tensor:
        return group_max(z, self.num_classes) if self.hp.head == "groupmax" else self.fc(z)

    def features(self, batch: Batch) -> dict[str, Tensor]:
        e, mask, z = self.masked(batch["images"])
        return {"frozen": e, "mask": mask, "masked": z}

    def predict(self, batch: Batch) -> Tensor:
        return self.logits(self.masked(batch["images"])[2])

    def update(self, source: SourceInput, target: Batch | None, progress: float) -> dict[str, float]:
        xs = pooled(source)
        y = xs["labels"]
        _, mask, z = self.masked(xs["images"])
        fc = classification_loss(self.fc(z), y)                                    # CE(W z, y)
        drop = channel_drop_mask(self.feature_dim, self.num_classes, self.n_drop,
                                 len(y) if self.hp.drop_per_sample else None, device=z.device)
        sep_logits = group_max(z * drop, self.num_classes)
        sep = classification_loss(sep_logits, y)                                   # L_sep = CE(s(z ⊙ r), y)
        div = diverse_loss(z, self.num_classes)                                    # L_div = 1 - mean s_k(z) / g
        loss = self.hp.fc_weight * fc + self.hp.sep_weight * sep + self.hp.div_weight * div
        self.step(loss)
        with torch.no_grad():
            acc = (self.logits(z).argmax(1) == y).float().mean()
        return {"loss": loss.item(), "fc": fc.item(), "sep": sep.item(), "div": div.item(), "src_acc": acc.item(),
                "mask_mean": mask.mean().item()}
