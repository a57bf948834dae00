"""The training loop, independent of any paper.

One run = one :class:`~fer_lab.config.TrainConfig`. The trainer loads the datasets (sources' train split, the
target's train split with its labels hidden, every evaluation set's test split), builds the method, and calls
``method.update(source, target, progress)`` for ``steps`` steps. It sets the learning rate of every optimiser
group from the schedule, evaluates periodically, logs one JSON line per logged step, and writes atomic
checkpoints from which a killed run resumes to the very same final metrics (batches are a pure function of the
step, and the RNG state travels with the checkpoint).

Files in ``out_dir``: ``config.json``, ``metrics.jsonl`` (``{"step", "lr", <losses>}`` and
``{"step", "eval": {...}}`` lines), ``checkpoint.pt`` (latest, loadable with ``torch.load(weights_only=True)``),
``results.json`` (final reports with per-class accuracy and confusion matrices), and, for a method with a
:meth:`~fer_lab.methods.base.Method.recorder`, ``diagnostics.jsonl`` (its records, one per line).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from fer_lab.config import TrainConfig
from fer_lab.data.loading import Augment, Batch, BatchStream, FaceTensors, to_device
from fer_lab.data.spec import load_dataset, parse_spec
from fer_lab.evaluate import evaluate
from fer_lab.methods import METHODS
from fer_lab.methods.base import Method, build_method
from fer_lab.models import BACKBONES
from fer_lab.models.backbones import parse_backbone_spec

LR_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda p: 1.0,
    # DANN / CDAN annealing: lr_p = lr_0 (1 + 10 p)^-0.75
    "inv": lambda p: (1.0 + 10.0 * p) ** -0.75,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * min(p, 1.0))),
    # CD-FER benchmark transfer stage: x1 for the first third, x0.1 after two thirds (approximated on progress)
    "step": lambda p: 1.0 if p < 2 / 3 else 0.1,
    # Generalizable FER's ExponentialLR(gamma=0.9) stepped once per epoch over 60 epochs, on progress
    "exp": lambda p: 0.9 ** (60 * min(p, 1.0)),
}


DIAGNOSTICS = "diagnostics.jsonl"


class Callback(Protocol):
    """Hooks a notebook or a sweep can pass to :class:`Trainer`; every method is optional."""

    def on_step(self, trainer: "Trainer", step: int, logs: dict[str, float]) -> None: ...
    def on_eval(self, trainer: "Trainer", step: int, results: dict[str, dict[str, Any]]) -> None: ...


@dataclass
class RunResult:
    config: TrainConfig
    out_dir: Path
    final: dict[str, dict[str, Any]]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def target_acc(self) -> float:
        return self.final["target"]["acc"]


def default_out_dir(cfg: TrainConfig) -> Path:
    key = json.dumps({k: v for k, v in cfg.to_dict().items() if k not in ("out_dir", "resume", "progress")},
                     sort_keys=True)
    return Path("runs") / f"{cfg.method}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but CUDA is not available on this machine")
    return torch.device(device)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_split(cfg: TrainConfig, spec: str, split: str = "test", domain: int = 0) -> FaceTensors:
    """One split of a dataset as a run with ``cfg`` sees it: the profile's size, sample count and seed apply
    where the spec does not set its own (``n_train`` for the train split, ``n_test`` otherwise)."""
    cfg = cfg.resolved()
    n = cfg.n_train if split == "train" else cfg.n_test
    arrays = load_dataset(spec, split=split, defaults={"n": n, "size": cfg.image_size, "seed": cfg.seed})
    return FaceTensors(arrays, cfg.image_size, domain=domain)


class Trainer:
    def __init__(self, config: TrainConfig, callbacks: Sequence[Callback] = ()) -> None:
        self.cfg = config.resolved()
        if self.cfg.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.cfg.lr_schedule!r}; known: {', '.join(LR_SCHEDULES)}")
        self.out_dir = Path(self.cfg.out_dir) if self.cfg.out_dir else default_out_dir(self.cfg)
        self.callbacks = list(callbacks)
        self.device = resolve_device(self.cfg.device)
        self.method: Method | None = None
        self.eval_sets: dict[str, FaceTensors] = {}
        self.init_fresh: list[str] = []

    # -- set-up -------------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        # fail fast, before any data is loaded, on a malformed spec or an unknown method / backbone
        for spec in (*cfg.source, *([cfg.target] if cfg.target else []), *cfg.eval):
            parse_spec(spec)
        METHODS.get(cfg.method)
        BACKBONES.get(parse_backbone_spec(cfg.backbone)[0])
        if cfg.backbone_weights and not Path(cfg.backbone_weights).is_file():
            raise FileNotFoundError(f"backbone weights file not found: {cfg.backbone_weights}")
        self.sources = [load_split(cfg, s, "train", i) for i, s in enumerate(cfg.source)]
        torch.manual_seed(cfg.seed)
        self.method = build_method(cfg.method, cfg.hparams, backbone=cfg.backbone, weights=cfg.backbone_weights)
        self.method.to(self.device)
        k = len(self.sources)
        self.target = None
        if cfg.target and self.method.needs_target:
            self.target = load_split(cfg, cfg.target, "train", k)
        elif self.method.needs_target:
            raise ValueError(f"method {cfg.method!r} needs unlabelled target data: give --target")
        if cfg.target:
            self.eval_sets["target"] = load_split(cfg, cfg.target, "test", k)
        for spec in cfg.eval:
            self.eval_sets[spec] = load_split(cfg, spec, "test", k + 1)
        if not self.eval_sets:
            self.eval_sets["source"] = load_split(cfg, cfg.source[0], "test", 0)
        if cfg.source_val:  # "source_val" (one source) or "source_val/<i>" (several): selection without target labels
            for i, spec in enumerate(cfg.source):
                name = "source_val" if len(cfg.source) == 1 else f"source_val/{i}"
                self.eval_sets[name] = load_split(cfg, spec, "val", i)
        aug = Augment.weak() if cfg.augment else None
        strong = Augment.strong() if getattr(self.method, "wants_strong_view", False) else None
        self.method.setup_data([len(d) for d in self.sources], len(self.target) if self.target is not None else None,
                               cfg.batch_size)
        if cfg.init_from:
            self.init_from(cfg.init_from)
        self.source_streams = [BatchStream(d, cfg.batch_size, cfg.seed, i, aug) for i, d in enumerate(self.sources)]
        self.target_stream = (BatchStream(self.target, cfg.batch_size, cfg.seed, 1000, aug, strong)
                              if self.target is not None else None)

    def init_from(self, path: str) -> None:
        """Start from another run's method weights. Entries this method lacks (e.g. heads an ablation drops) are
        ignored; anything this method needs that the run lacks is an error, except the modules the method names in
        ``fresh_on_init`` (e.g. a discriminator, when starting from a source-only stage 1): those start fresh and
        are listed in ``config.json`` under ``init_fresh``."""
        state = self.method.initial_state(load_method_state(path))
        missing, _ = self.method.load_state_dict(state, strict=False)
        fresh = tuple(self.method.fresh_on_init)
        self.init_fresh = sorted(k for k in missing if k.startswith(fresh))
        missing = [k for k in missing if not k.startswith(fresh)]
        if missing:
            raise ValueError(f"init_from {path}: the saved run lacks {len(missing)} weight(s) this "
                             f"{self.cfg.method} needs: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")

    # -- one step -----------------------------------------------------------------------------------------
    def set_lr(self, progress: float) -> float:
        factor = LR_SCHEDULES[self.cfg.lr_schedule](progress) * self.method.lr_factor(progress)
        for opt in self.method.optimizers().values():
            for g in opt.param_groups:
                g.setdefault("initial_lr", g["lr"])
                g["lr"] = g["initial_lr"] * factor
        return self.method.hp.lr * factor

    def batches(self, step: int) -> tuple[Batch | list[Batch], Batch | None]:
        sources = [to_device(s.batch(step), self.device) for s in self.source_streams]
        target = None
        if self.target_stream is not None:
            t = self.target_stream.batch(step)
            t["true_labels"], t["labels"] = t["labels"], torch.full_like(t["labels"], -1)
            target = to_device(t, self.device)
        return (sources[0] if len(sources) == 1 else sources), target

    def evaluate(self) -> dict[str, dict[str, Any]]:
        return {name: evaluate(self.method, data, device=self.device) for name, data in self.eval_sets.items()}

    # -- checkpoints ------------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def save_checkpoint(self, step: int) -> None:
        state = {
            "step": step,
            "config": json.dumps(self.cfg.to_dict(), sort_keys=True),
            "method": self.method.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.method.optimizers().items()},
            "rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        _atomic_save(state, self.checkpoint_path)

    def load_checkpoint(self) -> int:
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        saved = json.loads(state["config"])
        mine = self.cfg.to_dict()
        differs = [k for k in mine if k not in ("resume", "progress", "device") and saved.get(k) != mine[k]]
        if differs:
            raise ValueError(f"{self.checkpoint_path}: saved with a different config ({', '.join(differs)}); "
                             "use another --out-dir or drop --resume")
        self.method.load_state_dict(state["method"])
        for k, o in self.method.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return int(state["step"])

    def _open_log(self, start: int, name: str = "metrics.jsonl"):
        log = self.out_dir / name
        kept = []
        if start > 0 and log.exists():  # drop lines written after the checkpoint we resume from
            kept = [ln for ln in log.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= start]
        _atomic_write_text("".join(ln + "\n" for ln in kept), log)
        return open(log, "a"), [json.loads(ln) for ln in kept]

    # -- the loop ----------------------------------------------------------------------------------------------
    def fit(self) -> RunResult:
        cfg = self.cfg
        if self.method is None:
            self.setup()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        start = 0
        if cfg.resume and self.checkpoint_path.exists():
            start = self.load_checkpoint()
        elif not cfg.resume:
            self.checkpoint_path.unlink(missing_ok=True)
        _atomic_write_text(json.dumps({"config": cfg.to_dict(), "hparams": self.method.hp.to_dict(),
                                       "init_fresh": self.init_fresh}, indent=1), self.out_dir / "config.json")
        log, history = self._open_log(start)
        recorder = self.method.recorder(cfg.steps)
        callbacks = list(self.callbacks)
        if recorder is not None:  # its records up to the checkpoint survive a resume; it goes on from there
            diag, recorder.records = self._open_log(start, DIAGNOSTICS)
            written = len(recorder.records)
            callbacks.append(recorder)
        t0 = time.perf_counter()
        self.method.train()
        try:
            bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not cfg.progress,
                       desc=f"{cfg.method} {'+'.join(cfg.source)} -> {cfg.target or '-'}", leave=False)
            for step in bar:
                progress = step / cfg.steps
                lr = self.set_lr(progress)
                source, target = self.batches(step)
                logs = self.method.update(source, target, progress)
                done = step + 1
                for cb in callbacks:
                    getattr(cb, "on_step", lambda *a: None)(self, done, logs)
                if recorder is not None:
                    for rec in recorder.records[written:]:
                        diag.write(json.dumps(rec) + "\n")
                    written = len(recorder.records)
                if done % cfg.log_every == 0 or done == cfg.steps:
                    rec = {"step": done, "lr": lr, **{k: float(v) for k, v in logs.items()}}
                    log.write(json.dumps(rec) + "\n")
                    history.append(rec)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items() if k in ("loss", "cls", "adv")})
                if done % cfg.eval_every == 0 or done == cfg.steps:
                    results = self.evaluate()
                    rec = {"step": done, "eval": {k: {m: r[m] for m in ("acc", "mean_class_acc")}
                                                  for k, r in results.items()}}
                    log.write(json.dumps(rec) + "\n")
                    history.append(rec)
                    for cb in callbacks:
                        getattr(cb, "on_eval", lambda *a: None)(self, done, results)
                if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                    log.flush()
                    if recorder is not None:
                        diag.flush()
                    self.save_checkpoint(done)
        finally:
            log.close()
            if recorder is not None:
                diag.close()
        final = self.evaluate()
        seconds = time.perf_counter() - t0
        _atomic_write_text(json.dumps({"config": cfg.to_dict(), "hparams": self.method.hp.to_dict(),
                                       "final": final, "train_seconds": seconds}, indent=1),
                           self.out_dir / "results.json")
        return RunResult(cfg, self.out_dir, final, history, seconds)


def train(config: TrainConfig | None = None, callbacks: Sequence[Callback] = (), **overrides: Any) -> RunResult:
    """Train one run: ``train(method="dann", source=("synth:lab",), target="synth:wild", steps=200)``."""
    cfg = config or TrainConfig()
    if overrides:
        cfg = TrainConfig(**{**cfg.to_dict(), **overrides})
    return Trainer(cfg, callbacks).fit()


def load_diagnostics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records a method's :meth:`~fer_lab.methods.base.Method.recorder` wrote during a run (``diagnostics.jsonl``
    in the run folder), in step order."""
    path = Path(out_dir) / DIAGNOSTICS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no diagnostics in this run folder (its method records none, or the run was "
                                "trained before runs recorded them: delete the folder to train it again)")
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def load_method_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The method weights of a run folder's checkpoint (or of a ``checkpoint.pt`` file), to initialise a new run
    (``TrainConfig.init_from``: e.g. AGLRLS stage 2 from a shared stage-1 run)."""
    path = Path(path)
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no checkpoint to initialise from (init_from={str(path)!r})")
    return torch.load(file, map_location="cpu", weights_only=True)["method"]


def load_run(out_dir: str | os.PathLike, device: str = "cpu") -> tuple[Method, TrainConfig]:
    """Rebuild a trained method from a run folder (its config and latest checkpoint)."""
    out_dir = Path(out_dir)
    info = json.loads((out_dir / "config.json").read_text())
    cfg = TrainConfig(**info["config"])
    method = build_method(cfg.method, info["hparams"], backbone=cfg.backbone)
    method.load_state_dict(load_method_state(out_dir))
    return method.to(device).eval(), cfg
