"""Typed configuration: training runs and the two profiles.

``smoke`` is sized for a 2-core CPU (small images, few steps, minutes); ``full`` is sized for a GPU (the CD-FER
benchmark's 112 px faces and a long schedule); ``tiny`` only checks that things run (seconds; used by the notebook
tests). ``auto`` is ``$FER_LAB_PROFILE`` when that is set, else ``full`` when CUDA is available, else ``smoke``.
Values given explicitly always win over the profile's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(image_size=64, batch_size=32, steps=400, n_train=2000, n_test=1000, eval_every=200,
                  checkpoint_every=200, log_every=10),
    "tiny": dict(image_size=32, batch_size=16, steps=40, n_train=256, n_test=128, eval_every=40,
                 checkpoint_every=40, log_every=5),
    "full": dict(image_size=112, batch_size=32, steps=20000, n_train=20000, n_test=4000, eval_every=1000,
                 checkpoint_every=1000, log_every=50),
}


def resolve_profile(profile: str) -> str:
    if profile == "auto":
        import os

        import torch

        if os.environ.get("FER_LAB_PROFILE"):
            return resolve_profile(os.environ["FER_LAB_PROFILE"])
        return "full" if torch.cuda.is_available() else "smoke"
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known profiles: auto, {', '.join(PROFILES)}")
    return profile


@dataclass
class TrainConfig:
    """One training run. ``None`` fields take the profile's value."""

    method: str = "source_only"
    source: tuple[str, ...] = ("synth:lab",)
    target: str | None = "synth:wild"
    eval: tuple[str, ...] = ()          # extra evaluation specs (test split), e.g. unseen domains
    backbone: str = "smallcnn"
    backbone_weights: str | None = None
    profile: str = "smoke"
    steps: int | None = None
    batch_size: int | None = None
    image_size: int | None = None
    n_train: int | None = None          # SynthFER sizes (ignored by datasets that do not take ``n``)
    n_test: int | None = None
    eval_every: int | None = None
    checkpoint_every: int | None = None
    log_every: int | None = None
    lr_schedule: str = "inv"            # see fer_lab.train.LR_SCHEDULES
    augment: bool = True
    seed: int = 0
    device: str = "cpu"
    out_dir: str | None = None
    resume: bool = False
    init_from: str | None = None        # run folder (or checkpoint.pt) whose method weights start this run
    source_val: bool = False            # also evaluate each source's val split (model selection on the source)
    progress: bool = True
    hparams: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> "TrainConfig":
        """A copy with the profile's values filled in and the fields checked."""
        profile = resolve_profile(self.profile)
        values = {k: (PROFILES[profile][k] if getattr(self, k) is None and k in PROFILES[profile] else getattr(self, k))
                  for k in (f.name for f in dataclasses.fields(self))}
        values["profile"] = profile
        from fer_lab.data.spec import split_specs

        values["source"], values["eval"] = split_specs(values["source"]), split_specs(values["eval"])
        cfg = TrainConfig(**values)
        cfg.check()
        return cfg

    def check(self) -> None:
        if not self.source:
            raise ValueError("at least one source dataset is needed (--source)")
        for key in ("steps", "batch_size", "image_size", "eval_every", "checkpoint_every", "log_every"):
            v = getattr(self, key)
            if v is not None and v <= 0:
                raise ValueError(f"{key} must be positive, got {v}")
        if self.image_size is not None and self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["source"], d["eval"] = list(self.source), list(self.eval)
        return d
