"""``fer-lab pretrain``: a face encoder trained on tasks that are not expression, cached and reused.

Generalizable FER (Zhang et al., ECCV 2024) masks the features of a frozen general-purpose encoder (CLIP) with a
mask network initialised from a face-*identity* model (ResNet-18 pre-trained on MS-Celeb-1M). Neither set of
weights can be downloaded here, so this module gives the offline stand-in for both: one backbone trained on
SynthFER faces of many domains to recognise **who** is shown (a CosFace-style margin softmax over subject
identities, as face-recognition backbones are trained) and **where** the face and its parts are (the five
landmarks and the head's yaw and pitch, regressed from the same feature). Expression labels are never read.

The recipe's feature, ``GAP(backbone(x))``, is then

* the **frozen encoder** of :mod:`fer_lab.methods.gen_fer` (``encoder="pretrain:<profile>"``), in place of CLIP;
* the initialisation of its **mask network** (the same backbone, trained further), in place of the MS-Celeb
  ResNet-18;
* a ``--backbone-weights`` file for any other method (``backbone.safetensors`` holds the backbone's own keys), e.g.
  the fine-tuned source-only baseline.

Data: the ``val`` split of each domain (subjects and draws disjoint from the ``train`` and ``test`` splits that
training and evaluation use), with ``images_per_subject`` raised so that every identity has several images. The
encoder thus sees the *appearance* of every SynthFER domain, as CLIP saw the web, but never a test image and never
an expression label.

Cache: ``$FER_LAB_CACHE/pretrain/<profile>-<backbone>-<hash>/`` (default ``~/.cache/fer-lab/pretrain``), keyed by a
hash of the whole recipe (every :class:`PretrainConfig` field, :data:`RECIPE_VERSION` and SynthFER's renderer
version). The folder is written to a temporary name and renamed into place (a killed run leaves nothing half
written); concurrent builders of the same recipe serialise on a lock file, so the second one finds the first one's
result instead of training again. For a given recipe the weights are a deterministic function of the seed on a
given machine and thread count.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from fer_lab.data.loading import Augment, BatchStream, FaceTensors, concat_batches
from fer_lab.data.spec import load_dataset, parse_spec
from fer_lab.models.backbones import Backbone, build_backbone

__all__ = [
    "PRETRAIN_PROFILES",
    "RECIPE_VERSION",
    "FaceEmbedder",
    "PretrainConfig",
    "PretrainResult",
    "build_backbone_from_recipe",
    "cache_root",
    "load_encoder",
    "pretrain",
    "pretrain_dir",
    "resolve_pretrain",
    "train_recipe",
]

#: Bump whenever the recipe's code changes what it trains; part of the cache key.
RECIPE_VERSION = 1
WEIGHTS_FILE = "backbone.safetensors"
META_FILE = "meta.json"


@dataclass(frozen=True)
class PretrainConfig:
    """One pre-training recipe. Every field is part of the cache key."""

    backbone: str = "smallcnn"
    #: ``widths`` keyword of the backbone; ``()``: the backbone's defaults, which any ``--backbone NAME
    #: --backbone-weights FILE`` run can then load (the trainer builds backbones with their defaults)
    widths: tuple[int, ...] = ()
    domains: tuple[str, ...] = ("synth:lab", "synth:wild", "synth:lowres", "synth:profile")
    split: str = "val"                 # disjoint from the train / test splits that runs use
    n_per_domain: int = 1200
    images_per_subject: int = 8        # SynthFER knob: several images per identity in every domain
    image_size: int = 64
    steps: int = 300
    batch_size: int = 64               # split evenly over the domains
    lr: float = 0.05                   # SGD (Nesterov), cosine decay to 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    identity_weight: float = 1.0       # CosFace margin softmax over subjects (Wang et al., CVPR 2018)
    landmark_weight: float = 1.0       # smooth-L1 on the 5 landmarks / image size
    pose_weight: float = 0.5           # smooth-L1 on (yaw, pitch) / 45 degrees
    contrastive_weight: float = 1.0    # SimCLR NT-Xent between a weak and a strong view (Chen et al., ICML 2020)
    temperature: float = 0.2           # NT-Xent temperature
    scale: float = 16.0                # CosFace s
    margin: float = 0.2                # CosFace m
    augment: bool = True               # Augment.weak() without flips (flips would invert the yaw target)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["widths"], d["domains"] = list(self.widths), list(self.domains)
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PretrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown pretrain field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        v = dict(values)
        for k in ("widths", "domains"):
            if k in v:
                v[k] = tuple(v[k])
        return cls(**v)

    def backbone_kwargs(self) -> dict[str, Any]:
        return {"widths": tuple(self.widths)} if self.widths else {}

    def key(self) -> str:
        from fer_lab.data.synth import RENDERER_VERSION

        blob = json.dumps({"recipe": RECIPE_VERSION, "renderer": RENDERER_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: Sizes matching the training profiles (fer_lab.config.PROFILES): same image size, smoke < 1 minute on a CPU core.
PRETRAIN_PROFILES: dict[str, PretrainConfig] = {
    "tiny": PretrainConfig(n_per_domain=256, images_per_subject=8, image_size=32, steps=60, batch_size=32),
    "smoke": PretrainConfig(),
    # The paper's 512-d features (CLIP ViT-B/32) and ResNet-18 mask network, at the CD-FER benchmark's 112 px.
    "full": PretrainConfig(backbone="resnet18", widths=(), n_per_domain=6000, images_per_subject=10,
                           image_size=112, steps=6000, batch_size=128, lr=0.1),
}


def resolve_pretrain(recipe: str | PretrainConfig) -> tuple[str, PretrainConfig]:
    """``(name, config)`` of a profile name (``tiny``, ``smoke``, ``full``, ``auto``) or a config (name ``custom``)."""
    if isinstance(recipe, PretrainConfig):
        for name, cfg in PRETRAIN_PROFILES.items():
            if cfg == recipe:
                return name, recipe
        return "custom", recipe
    from fer_lab.config import resolve_profile

    if recipe == "auto":
        recipe = resolve_profile("auto")
    if recipe not in PRETRAIN_PROFILES:
        raise ValueError(f"unknown pretrain profile {recipe!r}; known: auto, {', '.join(PRETRAIN_PROFILES)}")
    return recipe, PRETRAIN_PROFILES[recipe]


def cache_root() -> Path:
    """``$FER_LAB_CACHE/pretrain``, or ``~/.cache/fer-lab/pretrain``."""
    root = os.environ.get("FER_LAB_CACHE")
    return Path(root) / "pretrain" if root else Path.home() / ".cache" / "fer-lab" / "pretrain"


def pretrain_dir(recipe: str | PretrainConfig, root: str | os.PathLike | None = None) -> Path:
    name, cfg = resolve_pretrain(recipe)
    """The cache folder of a recipe (under ``root``, default :func:`cache_root`)."""
    return (Path(root) if root is not None else cache_root()) / f"{name}-{cfg.backbone}-{cfg.key()}"


# ---------------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------------
class FaceEmbedder(nn.Module):
    """``GAP(backbone(images)[last])``: images ``[B, 3, H, W]`` in ``[0, 1]`` -> ``[B, backbone.out_channels]``."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.dim = backbone.out_channels

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(images)[1].mean(dim=(2, 3))


class _PretrainNet(nn.Module):
    def __init__(self, backbone: Backbone, n_ids: int) -> None:
        super().__init__()
        self.embedder = FaceEmbedder(backbone)
        d = self.embedder.dim
        self.id_weight = nn.Parameter(torch.randn(n_ids, d) * 0.01)
        self.geometry = nn.Linear(d, 5 * 2 + 2)
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, 128))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f = self.embedder(images)
        cos = F.normalize(f, dim=1) @ F.normalize(self.id_weight, dim=1).t()
        return cos, self.geometry(f), f


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent: each view must pick its partner among the other 2B - 1 views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, partner)


def _load_domains(cfg: PretrainConfig) -> list[FaceTensors]:
    out = []
    for i, spec in enumerate(cfg.domains):
        s = parse_spec(spec)
        if s.name == "synth" and "images_per_subject" not in s.params:
            s = s.with_params(images_per_subject=cfg.images_per_subject)
        arrays = load_dataset(s, split=cfg.split, defaults={"n": cfg.n_per_domain, "size": cfg.image_size,
                                                            "seed": cfg.seed})
        if (arrays.subject < 0).any():
            raise ValueError(f"pretrain: {spec} has samples without a subject id; the identity task needs them")
        out.append(FaceTensors(arrays, cfg.image_size, domain=i))
    return out


def train_recipe(cfg: PretrainConfig, progress: bool = True, device: str | torch.device = "cpu"
                 ) -> tuple[Backbone, dict[str, Any]]:
    """Train the recipe from scratch (no cache); returns the backbone (eval mode, on CPU) and a summary."""
    if cfg.batch_size < len(cfg.domains):
        raise ValueError(f"pretrain: batch_size {cfg.batch_size} is smaller than the {len(cfg.domains)} domains")
    t0 = time.perf_counter()
    data = _load_domains(cfg)
    subjects = torch.unique(torch.cat([d.subject for d in data]))
    torch.manual_seed(cfg.seed)
    net = _PretrainNet(build_backbone(cfg.backbone, **cfg.backbone_kwargs()), len(subjects)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=True)
    aug = dataclasses.replace(Augment.weak(), flip=0.0) if cfg.augment else None
    per = [cfg.batch_size // len(data) + (i < cfg.batch_size % len(data)) for i in range(len(data))]
    strong = Augment.strong() if cfg.contrastive_weight else None
    streams = [BatchStream(d, b, cfg.seed, 500 + i, aug, strong) for i, (d, b) in enumerate(zip(data, per))]
    subjects = subjects.to(device)
    net.train()
    recent: list[tuple[float, ...]] = []
    bar = tqdm(range(cfg.steps), desc=f"pretrain {cfg.backbone} ({len(subjects)} identities)", disable=not progress,
               leave=False)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        b = concat_batches([s.batch(step) for s in streams])
        images = b["images"].to(device)
        ids = torch.searchsorted(subjects, b["subject"].to(device))
        cos, geo, f = net(images)
        # CosFace: L_id = CE(s (cos_theta - m 1[j = y]), y)
        l_id = F.cross_entropy(cfg.scale * (cos - cfg.margin * F.one_hot(ids, len(subjects))), ids)
        lm = b["landmarks"].to(device).reshape(len(ids), -1) / cfg.image_size
        pose = b["pose"].to(device)[:, :2] / 45.0
        l_lm = F.smooth_l1_loss(geo[:, :10], lm, beta=0.05)
        l_pose = F.smooth_l1_loss(geo[:, 10:], torch.nan_to_num(pose), beta=0.1)
        loss = cfg.identity_weight * l_id + cfg.landmark_weight * l_lm + cfg.pose_weight * l_pose
        l_con = torch.zeros((), device=device)
        if cfg.contrastive_weight:
            # L_con = NT-Xent(g(f(x_weak)), g(f(x_strong)))
            l_con = nt_xent(net.projection(f), net.projection(net.embedder(b["strong"].to(device))), cfg.temperature)
            loss = loss + cfg.contrastive_weight * l_con
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        id_acc = (cos.argmax(1) == ids).float().mean().item()
        recent = (recent + [(loss.item(), l_id.item(), l_lm.item(), l_pose.item(), l_con.item(), id_acc)])[-50:]
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", id_acc=f"{id_acc:.2f}")
    last = np.mean(np.array(recent), axis=0) if recent else [float("nan")] * 6
    backbone = net.embedder.backbone.cpu().eval()
    summary = {
        "identities": int(len(subjects)), "images": int(sum(len(d) for d in data)), "dim": int(net.embedder.dim),
        "seconds": time.perf_counter() - t0,
        "last50": dict(zip(("loss", "identity", "landmark", "pose", "contrastive", "identity_acc"), map(float, last))),
    }
    return backbone, summary


# ---------------------------------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    """Where a recipe's weights are, and how they were made."""

    path: Path
    name: str
    config: PretrainConfig
    meta: dict[str, Any]
    built: bool          # True when this call trained it (False: read from the cache)
    seconds: float       # of this call

    @property
    def weights(self) -> Path:
        """The backbone's state dict (``--backbone-weights`` compatible)."""
        return self.path / WEIGHTS_FILE


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return meta if (folder / WEIGHTS_FILE).is_file() else None


def pretrain(recipe: str | PretrainConfig = "smoke", progress: bool = True, force: bool = False,
             root: str | os.PathLike | None = None, device: str = "auto") -> PretrainResult:
    """The recipe's weights: read from the cache, or trained and cached (``force``: train again and replace).

    ``device`` (``auto``: CUDA when available) is where a build trains; it is not part of the cache key (a recipe
    trained on a GPU and on a CPU differs in the last bits; whichever is cached first is used)."""
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    name, cfg = resolve_pretrain(recipe)
    folder = pretrain_dir(cfg if name == "custom" else name, root)
    if not force and (meta := _read(folder)) is not None:
        return PretrainResult(folder, name, cfg, meta, False, time.perf_counter() - t0)
    with _locked(folder.with_name(folder.name + ".lock")):
        if not force and (meta := _read(folder)) is not None:  # another process built it while we waited
            return PretrainResult(folder, name, cfg, meta, False, time.perf_counter() - t0)
        from fer_lab.train import resolve_device

        dev = resolve_device(device)
        backbone, summary = train_recipe(cfg, progress=progress, device=dev)
        meta = {"name": name, "config": cfg.to_dict(), "key": cfg.key(), "recipe_version": RECIPE_VERSION,
                "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(dev), **summary}
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".tmp", dir=folder.parent))
        try:
            save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(tmp / WEIGHTS_FILE),
                      metadata={"recipe": name, "key": cfg.key()})
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
            if folder.exists():  # force, or a damaged entry: move the old one aside, then swap
                old = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".old", dir=folder.parent))
                os.replace(folder, old / "entry")
                os.rename(tmp, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return PretrainResult(folder, name, cfg, meta, True, time.perf_counter() - t0)


def build_backbone_from_recipe(recipe: str | PretrainConfig = "smoke", progress: bool = True) -> Backbone:
    """A fresh, trainable copy of the recipe's backbone with its pre-trained weights (built on first use)."""
    result = pretrain(recipe, progress=progress)
    return build_backbone(result.config.backbone, weights=result.weights, **result.config.backbone_kwargs())


def load_encoder(recipe: str | PretrainConfig = "smoke", progress: bool = True):
    """The recipe's feature ``GAP(backbone(x))`` as a :class:`~fer_lab.models.frozen.FrozenEncoder`."""
    from fer_lab.models.frozen import FrozenEncoder

    name, cfg = resolve_pretrain(recipe)
    embedder = FaceEmbedder(build_backbone_from_recipe(cfg, progress=progress))
    return FrozenEncoder(embedder, embedder.dim, input_size=cfg.image_size, normalize="none",
                         name=f"pretrain:{name}")
