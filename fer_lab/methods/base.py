"""The method contract every paper and baseline implements, and the method registry.

A method is an ``nn.Module`` with a tiny surface (as DomainBed's ``Algorithm``); the trainer knows nothing about
any paper::

    method = build_method("dann", backbone="smallcnn")
    logs = method.update(source, target, progress)   # one optimisation step -> {"loss": ..., ...}
    logits = method.predict(batch)                    # [B, 7], the paper's inference rule
    feats = method.embed(batch)                       # named features for analysis (global, each patch, fused)

``source`` is one batch, or a list of batches (one per source domain) for multi-source methods; methods that pool
their sources call :func:`fer_lab.data.loading.concat_batches`. ``target`` is an unlabelled batch (its ``labels``
are -1; ``true_labels`` is present for diagnostics such as pseudo-label precision and must never be trained on), or
``None`` for methods with ``needs_target = False``. ``progress`` runs from 0 to 1 over training.

Each method owns its optimisers (the main one is built on first use). Every parameter group carries ``lr_mult``; the trainer
scales ``lr_mult * hparams.lr`` by its schedule (times :meth:`Method.lr_factor`, a method's own stage factor), so
methods never touch the optimiser's learning rate themselves.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fer_lab.data.loading import Batch, concat_batches
from fer_lab.labels import NUM_CLASSES
from fer_lab.models import build_extractor
from fer_lab.registry import Registry

METHODS: Registry[type["Method"]] = Registry("method")

SourceInput = Batch | Sequence[Batch]


def _log_uniform(lo: float, hi: float) -> Callable[[np.random.Generator], float]:
    return lambda rng: float(10 ** rng.uniform(lo, hi))


@dataclass
class Hparams:
    """Hyper-parameters shared by every method. Subclasses add their own fields.

    ``SEARCH`` maps a field to a seeded random draw for sweeps (DomainBed's ``hparams_registry`` idea).
    """

    lr: float = 0.1                  # SGD from scratch (smoke backbones); with pre-trained weights use 0.01 and
    #                                  backbone_lr_mult 0.1, as the DANN / CDAN reference code does
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    backbone_lr_mult: float = 1.0    # 0.1 is usual with pre-trained backbone weights
    feat_dim: int = 64               # per-stream feature size (CD-FER benchmark: 64; fused = 6 x 64 = 384)
    feature: str = "fused"           # which stream feeds the classifier and the alignment losses
    heavy_heads: bool = False        # the benchmark's IR-block CropNet per patch instead of the light head
    global_grid: int = 1             # global stream pooled to g x g cells (1: the benchmark's global average pool)

    SEARCH: ClassVar[dict[str, Callable[[np.random.Generator], Any]]] = {
        "lr": _log_uniform(-2.5, -0.7),
        "weight_decay": _log_uniform(-5, -3),
    }

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None = None) -> "Hparams":
        values = dict(values or {})
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown hyper-parameter(s) {', '.join(unknown)} for {cls.__name__}; "
                             f"known: {', '.join(sorted(names))}")
        for k, v in values.items():  # cast CLI strings to the field's type
            default = getattr(cls, k, None)
            if isinstance(v, str) and isinstance(default, bool):
                values[k] = v.lower() in ("1", "true", "yes")
            elif isinstance(v, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
                values[k] = type(default)(float(v)) if isinstance(default, int) else float(v)
        return cls(**values)

    @classmethod
    def sample(cls, seed: int, **fixed: Any) -> "Hparams":
        """A seeded random draw for sweeps: each searched field gets its own stream (stable under additions)."""
        values: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            for name, draw in getattr(klass, "SEARCH", {}).items() if "SEARCH" in vars(klass) else []:
                rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
                values[name] = draw(rng)
        values.update(fixed)
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Method(nn.Module):
    """Base class: a global-local feature extractor and a classifier on ``hparams.feature``."""

    needs_target: ClassVar[bool] = True
    summary: ClassVar[str] = ""          # one line for `fer-lab methods` (default: the module docstring's first)
    Hparams: ClassVar[type[Hparams]] = Hparams
    name: ClassVar[str] = ""
    #: state-dict prefixes that may start fresh when a run is initialised from another method's run (a
    #: discriminator, when stage 2 starts from a source-only stage 1); anything else missing is an error
    fresh_on_init: ClassVar[tuple[str, ...]] = ()

    def __init__(self, hparams: Hparams | dict | None = None, backbone: str = "smallcnn",
                 weights: str | None = None, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        if not isinstance(hparams, self.Hparams):
            hparams = self.Hparams.from_dict(hparams if isinstance(hparams, dict) else dataclasses.asdict(hparams)
                                             if hparams is not None else None)
        self.hp = hparams
        self.num_classes = num_classes
        self.extractor = build_extractor(backbone, feat_dim=hparams.feat_dim, weights=weights,
                                         heavy_heads=hparams.heavy_heads, global_grid=hparams.global_grid)
        if hparams.feature not in self.extractor.streams:
            raise ValueError(f"feature {hparams.feature!r} is not a stream; streams: {', '.join(self.extractor.streams)}")
        self.feature_dim = self.extractor.stream_dim(hparams.feature)
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self._optimizer: torch.optim.Optimizer | None = None

    # -- optimisation ---------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Backbone at ``backbone_lr_mult``; everything else (heads, classifier, discriminators) at 1."""
        backbone = list(self.extractor.backbone.parameters())
        ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if id(p) not in ids and p.requires_grad]
        return [{"params": backbone, "lr_mult": self.hp.backbone_lr_mult}, {"params": rest, "lr_mult": 1.0}]

    def regrouped(self, extra: Sequence[tuple[Sequence[nn.Parameter], float]],
                  exclude: Sequence[nn.Parameter] = ()) -> list[dict[str, Any]]:
        """:meth:`Method.param_groups` without the parameters of ``extra`` and ``exclude`` (e.g. those another
        optimiser steps), then one group per ``(params, lr_mult)`` of ``extra`` (a discriminator, new heads)."""
        extra = [(list(params), mult) for params, mult in extra]
        taken = {id(p) for params, _ in extra for p in params} | {id(p) for p in exclude}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in taken]} for g in Method.param_groups(self)]
        return groups + [{"params": params, "lr_mult": mult} for params, mult in extra]

    def build_optimizer(self, groups: list[dict[str, Any]] | None = None) -> torch.optim.Optimizer:
        groups = groups if groups is not None else self.param_groups()
        for g in groups:
            g["lr"] = self.hp.lr * g["lr_mult"]
        return torch.optim.SGD(groups, lr=self.hp.lr, momentum=self.hp.momentum,
                               weight_decay=self.hp.weight_decay, nesterov=self.hp.nesterov)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The main optimiser, built on first use (after subclasses have added their modules)."""
        if self._optimizer is None:
            self._optimizer = self.build_optimizer()
        return self._optimizer

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimiser the method steps (for the trainer's schedule and checkpoints)."""
        return {"main": self.optimizer}

    def step(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    # -- the contract ---------------------------------------------------------------------------------------
    def setup_data(self, source_sizes: Sequence[int], target_size: int | None, batch_size: int) -> None:
        """Called by the trainer once the data is loaded (sizes only); methods with per-sample state (e.g. a
        pseudo-label store) size it here. The default does nothing."""

    def lr_factor(self, progress: float) -> float:
        """A method's own multiplier on the trainer's learning-rate schedule (e.g. a lower rate in a second
        training stage, as the paper prescribes). The default is 1."""
        return 1.0

    def initial_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The part of another run's state dict that initialises a new run (``TrainConfig.init_from``); methods
        drop per-run state here (e.g. a pseudo-label store). The default keeps everything."""
        return state

    def recorder(self, steps: int) -> Any:
        """The diagnostics every run of this method records, or None (the default): a trainer callback with a
        ``records`` list of JSON-able dicts, each with a ``"step"``. The trainer attaches it to every run of the method
        and writes its records to ``diagnostics.jsonl`` in the run folder (see :func:`fer_lab.train.load_diagnostics`),
        so a notebook reads a benchmark cell's diagnostics instead of training that cell again. A recorder reads the
        method's state and never changes it. ``steps``: the run's length, to choose the recording period."""
        return None

    def update(self, source: SourceInput, target: Batch | None, progress: float) -> dict[str, float]:
        raise NotImplementedError

    def features(self, batch: Batch) -> dict[str, Tensor]:
        return self.extractor(batch["images"], batch["landmarks"])

    def embed(self, batch: Batch) -> dict[str, Tensor]:
        """Named features for analysis: every stream of the extractor."""
        return self.features(batch)

    def predict(self, batch: Batch) -> Tensor:
        return self.classifier(self.features(batch)[self.hp.feature])


def build_method(name: str, hparams: Hparams | dict | None = None, backbone: str = "smallcnn",
                 weights: str | None = None, num_classes: int = NUM_CLASSES) -> Method:
    import fer_lab.methods  # noqa: F401  (registers the built-in methods)

    cls = METHODS.get(name)
    return cls(hparams, backbone=backbone, weights=weights, num_classes=num_classes)


def joint_forward(method: Method, source: Batch, target: Batch) -> tuple[dict[str, Tensor], int]:
    """Run the extractor once on source and target together (shared BatchNorm statistics, as TLlib does);
    returns the features and the number of source rows."""
    n = len(source["labels"])
    images = torch.cat([source["images"], target["images"]])
    landmarks = torch.cat([source["landmarks"], target["landmarks"]])
    return method.extractor(images, landmarks), n


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy on labelled rows (labels >= 0)."""
    return F.cross_entropy(logits, labels, ignore_index=-1)


def pooled(source: SourceInput) -> Batch:
    return concat_batches(source) if not isinstance(source, dict) else source
