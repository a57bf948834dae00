"""Sweeps: many runs of the trainer or of a notebook, one plan, one resumable results table.

    fer-lab sweep train DIR --methods source_only,dann --seeds 0,1,2 --draws 4 --target synth:wild --profile smoke
    fer-lab sweep notebook notebooks/00_synthfer_tour.ipynb DIR --grid seed=0,1 --draw lr=loguniform:1e-3:1e-1
    fer-lab sweep run DIR [--launcher local|ray|slurm] [--workers N]   # (re)start a planned sweep
    fer-lab sweep report DIR                                            # rebuild the results table, at any time

A sweep is a folder (DomainBed's sweep, on fer-lab's job runner :mod:`fer_lab.runner`)::

    DIR/plan.json              what the sweep is and every run's parameters, written before anything runs
    DIR/runs/<key>/            one run: the runner's job.json, log.txt (the run's own progress bar), done.json (the
                               done marker) or error.txt (kept; the run is retried by the next start), and the
                               run's files: a training run's config.json, metrics.jsonl, checkpoint.pt,
                               results.json; a notebook run's executed notebook, HTML and metrics JSON
    DIR/results.{csv,md,json}  the results table (:func:`report`)

Training sweeps are methods x hyper-parameter draws x seeds x (source, target) pairs. Draw 0 is each method's
defaults; draw ``d > 0`` is ``Hparams.sample(d)`` (the method's ``SEARCH``; the same ``d`` gives every method the
same value of a shared field, so draws pair up). Every run is ``fer_lab.train.train(..., out_dir=DIR/runs/<key>,
resume=True)``: a sweep killed at any point and started again runs only what has no done marker, a half-trained
run continues from its checkpoint, and the table comes out the same.

The table follows the CD-FER benchmark's model-selection rules, each applied to the evaluations a run logged
(``metrics.jsonl``) and then to the draws (the per-method best draw, mean over seeds):

* ``last``: the last checkpoint; the draw with the best source-validation accuracy there (with no ``source_val``
  evaluation in the runs, the best target accuracy, and the table says so in ``chosen by``);
* ``source_val``: the checkpoint and the draw with the best accuracy on the source's validation split (legitimate
  model selection: no target labels);
* ``target_test``: the best target test accuracy over checkpoints and draws (an optimistic oracle bound).

Accuracies are means over seeds with 95 % t-intervals (the statistics of :mod:`fer_lab.bench`); each method is
also compared with a reference method (source-only when it is in the sweep) by the paired difference over the
seeds both have, with its 95 % interval.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import re
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fer_lab.data.spec import json_value
from fer_lab.runner import Job, job_dir, run_jobs

PLAN = "plan.json"
RUNS = "runs"
RULES = ("last", "source_val", "target_test")
PLAN_VERSION = 1


# -- statistics (the benchmark's: fer_lab.bench) ---------------------------------------------------------------------
def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its t-interval (NaN with fewer than two values), NaN values left out."""
    from fer_lab.bench import t_interval

    x = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not x:
        return math.nan, math.nan
    mean, _, hi = t_interval(x, level)
    return mean, hi - mean


def paired_ci(a: dict[Any, float], b: dict[Any, float], level: float = 0.95) -> tuple[float, float, int]:
    """Mean paired difference ``a - b`` over the keys (seeds) both have, its interval half-width, and the pairs."""
    from fer_lab.bench import paired_difference

    keys = sorted(k for k in set(a) & set(b) if not math.isnan(a[k]) and not math.isnan(b[k]))
    if not keys:
        return math.nan, math.nan, 0
    d = paired_difference([a[k] for k in keys], [b[k] for k in keys], level)
    return d["diff"], d["hi"] - d["diff"], d["n"]


# -- plans ---------------------------------------------------------------------------------------------------------
def _slug(text: str | None, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "-", str(text or "none")).strip("-.")[:limit] or "x"


def _unique_keys(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, int] = {}
    for r in runs:
        seen[r["key"]] = seen.get(r["key"], 0) + 1
    for r in runs:
        if seen[r["key"]] > 1:
            digest = hashlib.sha1(json.dumps(r["params"], sort_keys=True).encode()).hexdigest()[:6]
            r["key"] = f"{r['key']}-{digest}"
    return runs


def searched_fields(method: str) -> list[str]:
    """The hyper-parameters a method's ``Hparams.SEARCH`` draws (its own and those it inherits)."""
    from fer_lab.methods import METHODS

    cls = METHODS.get(method).Hparams
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        if "SEARCH" in vars(klass):
            names += [n for n in klass.SEARCH if n not in names]
    return names


def draw_hparams(method: str, draw: int, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Draw ``draw`` of a method's hyper-parameters: 0 is the defaults, ``d > 0`` is ``Hparams.sample(d)``. Only
    the drawn and the fixed fields are returned (the rest are the defaults)."""
    from fer_lab.methods import METHODS

    fixed = dict(fixed or {})
    cls = METHODS.get(method).Hparams
    if draw == 0:
        cls.from_dict(fixed)  # checks the names
        return fixed
    hp = cls.sample(draw, **fixed)
    return {**{n: getattr(hp, n) for n in searched_fields(method)}, **fixed}


def plan_training(methods: Sequence[str], seeds: Sequence[int] = (0,), draws: int = 1,
                  sources: Sequence[str] = ("synth:lab",), targets: Sequence[str | None] = ("synth:wild",),
                  config: dict[str, Any] | None = None, hparams: dict[str, Any] | None = None) -> dict[str, Any]:
    """The plan of a training sweep: methods x draws x seeds x every (source, target) pair. ``config`` holds
    :class:`~fer_lab.config.TrainConfig` fields shared by every run (``profile``, ``steps``, ``device`` ...);
    ``hparams`` fixed hyper-parameters (every method must know them)."""
    from fer_lab.config import TrainConfig
    from fer_lab.data.spec import DATASETS, _ensure_builtin_datasets, parse_spec, split_specs

    config = dict(config or {})
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(config) - fields) + sorted(set(config) & {"method", "source", "target", "seed", "hparams",
                                                                 "out_dir", "resume"})
    if bad:
        raise ValueError(f"sweep config: {', '.join(bad)} cannot be set here (the sweep sets method, source, target, "
                         f"seed, hparams, out_dir and resume); known fields: {', '.join(sorted(fields))}")
    if not methods:
        raise ValueError("a training sweep needs at least one method")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    _ensure_builtin_datasets()
    for spec in (*sources, *(t for t in targets if t)):
        for s in split_specs(spec):
            DATASETS.get(parse_spec(s).name)  # an unknown dataset fails here, naming the known ones
    TrainConfig(**config).resolved()  # a bad profile or value fails here, before anything is written
    runs = []
    for method, source, target, draw, seed in itertools.product(methods, sources, targets, range(draws), seeds):
        hp = draw_hparams(method, draw, hparams)
        params = {"method": method, "source": list(split_specs(source)), "target": target, "seed": int(seed),
                  "draw": draw, "hparams": hp}
        key = f"{method}.{_slug(source)}.{_slug(target)}.d{draw}.s{seed}"
        runs.append({"key": key, "params": params})
    spec = {"methods": list(methods), "seeds": [int(s) for s in seeds], "draws": draws, "sources": list(sources),
            "targets": list(targets), "config": config, "hparams": dict(hparams or {})}
    return {"version": PLAN_VERSION, "kind": "train", "spec": spec, "runs": _unique_keys(runs)}


def parse_distribution(text: str) -> tuple[str, list[Any]]:
    """``loguniform:1e-3:1e-1``, ``uniform:0:1``, ``int:1:8`` (both ends included) or ``choice:a|b|c``."""
    kind, _, rest = text.partition(":")
    if kind == "choice":
        values = [json_value(v) for v in rest.split("|") if v != ""]
        if not values:
            raise ValueError(f"random draw {text!r}: choice needs values, e.g. choice:a|b|c")
        return kind, values
    if kind not in ("uniform", "loguniform", "int"):
        raise ValueError(f"random draw {text!r}: unknown distribution {kind!r}; known: uniform:LO:HI, "
                         "loguniform:LO:HI, int:LO:HI, choice:A|B|C")
    try:
        lo, hi = (float(v) for v in rest.split(":"))
    except ValueError:
        raise ValueError(f"random draw {text!r}: expected {kind}:LO:HI with two numbers") from None
    if lo > hi or (kind == "loguniform" and lo <= 0):
        raise ValueError(f"random draw {text!r}: needs LO <= HI{' and LO > 0' if kind == 'loguniform' else ''}")
    return kind, [lo, hi]


def draw_value(spec: str, seed: int, index: int, name: str) -> Any:
    """Draw ``index`` of parameter ``name``: its own random stream, so adding a parameter changes no other."""
    kind, args = parse_distribution(spec)
    rng = np.random.default_rng([seed, index, zlib.crc32(name.encode())])
    if kind == "choice":
        return args[int(rng.integers(len(args)))]
    if kind == "int":
        return int(rng.integers(int(args[0]), int(args[1]) + 1))
    if kind == "loguniform":
        return float(10 ** rng.uniform(math.log10(args[0]), math.log10(args[1])))
    return float(rng.uniform(args[0], args[1]))


def notebook_parameters(notebook: str | Path) -> dict[str, Any]:
    """The names and defaults of a notebook's ``parameters`` cell (papermill's reading of it)."""
    import papermill as pm

    path = Path(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"notebook not found: {path}")
    found = pm.inspect_notebook(str(path))
    if not found:
        raise ValueError(f"{path}: no cell tagged 'parameters' to sweep over")
    return {k: v.get("default") for k, v in found.items()}


def plan_notebook(notebook: str | Path, grid: dict[str, Sequence[Any]] | None = None,
                  draws: dict[str, str] | None = None, n_draws: int = 1, draw_seed: int = 0,
                  fixed: dict[str, Any] | None = None, cell_timeout: float | None = None) -> dict[str, Any]:
    """The plan of a notebook sweep: every combination of ``grid`` values, each with ``n_draws`` seeded random
    draws of the ``draws`` parameters (``{"lr": "loguniform:1e-3:1e-1"}``); ``fixed`` parameters go to every
    run. Names are checked against the notebook's parameters cell."""
    path = Path(notebook).resolve()
    known = notebook_parameters(path)
    grid, draws, fixed = dict(grid or {}), dict(draws or {}), dict(fixed or {})
    names = [*grid, *draws, *fixed]
    unknown = sorted({n for n in names if n not in known})
    if unknown:
        raise ValueError(f"{path}: no parameter(s) {', '.join(unknown)} in its parameters cell; "
                         f"it has: {', '.join(known)}")
    if "results_path" in names:
        raise ValueError("results_path is set by the sweep (each run writes its metrics into its own folder)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"parameter(s) {', '.join(twice)} given more than once (grid, draw or fixed)")
    for name, values in grid.items():
        if not values:
            raise ValueError(f"grid parameter {name!r} has no values")
    for text in draws.values():
        parse_distribution(text)
    if n_draws < 1:
        raise ValueError(f"draws must be at least 1, got {n_draws}")
    if not draws:
        n_draws = 1
    combos = list(itertools.product(*grid.values())) or [()]
    runs = []
    for i, (combo, d) in enumerate(itertools.product(combos, range(n_draws))):
        values = dict(zip(grid, combo))
        values.update({n: draw_value(s, draw_seed, d, n) for n, s in draws.items()})
        label = "-".join(f"{k}={_slug(v, 16)}" for k, v in values.items())
        runs.append({"key": f"{i:03d}" + (f"-{label}" if label else ""), "draw": d,
                     "params": {**fixed, **values}})
    for r in runs:
        r["key"] = r["key"][:100]
    spec = {"notebook": str(path), "grid": grid, "draws": draws, "n_draws": n_draws, "draw_seed": draw_seed,
            "fixed": fixed, "cell_timeout": cell_timeout, "out_dir_parameter": "out_dir" in known}
    return {"version": PLAN_VERSION, "kind": "notebook", "spec": spec, "runs": _unique_keys(runs)}


def create_sweep(folder: str | os.PathLike, plan: dict[str, Any]) -> Path:
    """Write the plan into ``folder`` (before anything runs). The same plan again is fine (the sweep resumes); a
    different plan in a folder that holds one is an error."""
    folder = Path(folder)
    path = folder / PLAN
    if path.is_file():
        old = json.loads(path.read_text())
        if (old.get("kind"), old.get("runs")) != (plan["kind"], json.loads(json.dumps(plan["runs"]))):
            raise ValueError(f"{folder} already holds a different sweep ({path}); resume it with "
                             f"`fer-lab sweep run {folder}` or choose another folder")
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(PLAN + ".tmp")
    tmp.write_text(json.dumps(plan, indent=1, default=float))
    os.replace(tmp, path)
    return path


def plan_digest(plan: dict[str, Any]) -> str:
    """A short digest of a plan's runs (a folder name that changes when the sweep does)."""
    return hashlib.sha1(json.dumps(plan["runs"], sort_keys=True, default=float).encode()).hexdigest()[:8]


def load_plan(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / PLAN
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a sweep folder (no {PLAN}); start one with `fer-lab sweep train` "
                                "or `fer-lab sweep notebook`")
    try:
        plan = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if plan.get("kind") not in ("train", "notebook") or not isinstance(plan.get("runs"), list):
        raise ValueError(f"{path}: not a sweep plan (needs 'kind' train|notebook and a 'runs' list)")
    return plan


# -- the runs themselves (called by the runner inside its workers) ------------------------------------------------
def train_run(out_dir: str, config: dict[str, Any]) -> dict[str, Any]:
    """One training run of a sweep: resumes from ``out_dir``'s checkpoint when there is one; evaluates the
    source validation split too where the trainer can (``TrainConfig.source_val``)."""
    from fer_lab.config import TrainConfig
    from fer_lab.train import train

    values = {**config, "out_dir": out_dir, "resume": True}
    if "source_val" in {f.name for f in dataclasses.fields(TrainConfig)}:
        values.setdefault("source_val", True)
    cfg = TrainConfig(**values)
    print(f"training {cfg.method} {'+'.join(cfg.source)} -> {cfg.target} seed {cfg.seed} hparams {cfg.hparams}",
          flush=True)
    r = train(cfg)
    return {"final": {k: {m: v[m] for m in ("acc", "mean_class_acc")} for k, v in r.final.items()}}


def notebook_run(notebook: str, out_dir: str, parameters: dict[str, Any],
                 cell_timeout: float | None = None) -> dict[str, Any]:
    """One notebook run of a sweep: papermill into ``out_dir`` (executed notebook, HTML, metrics JSON)."""
    from fer_lab.notebooks import run_notebook

    print(f"running {notebook} with {parameters}", flush=True)
    rec = run_notebook(notebook, out_dir, parameters, html=True, progress=True, cell_timeout=cell_timeout)
    return {"metrics": rec["metrics"], "output": rec["output"], "html": rec["html"]}  # times: in done.json


def jobs(plan: dict[str, Any], folder: str | os.PathLike, resources: dict[str, float] | None = None) -> list[Job]:
    """The runner's jobs for a plan, with the sweep folder where it is now (a moved folder keeps working)."""
    root = (Path(folder) / RUNS).resolve()
    resources = dict(resources or {})
    out = []
    for run in plan["runs"]:
        out_dir = str(root / run["key"])
        p = run["params"]
        if plan["kind"] == "train":
            config = {**plan["spec"]["config"], "method": p["method"], "source": p["source"],
                      "target": p["target"], "seed": p["seed"], "hparams": p["hparams"]}
            out.append(Job(run["key"], "fer_lab.sweep:train_run", {"out_dir": out_dir, "config": config},
                           resources=resources))
        else:
            spec = plan["spec"]
            params = dict(p)
            if spec.get("out_dir_parameter") and "out_dir" not in params:
                params["out_dir"] = str(Path(out_dir) / "work")  # the notebook's own runs stay in its folder
            out.append(Job(run["key"], "fer_lab.sweep:notebook_run",
                           {"notebook": spec["notebook"], "out_dir": out_dir, "parameters": params,
                            "cell_timeout": spec.get("cell_timeout")}, resources=resources))
    return out


def run_sweep(folder: str | os.PathLike, launcher: str = "local", workers: int = 1, threads: int = 1,
              progress: bool = True, resources: dict[str, float] | None = None, **options: Any) -> dict[str, Any]:
    """Run every run of the plan in ``folder`` that has no done marker (on ``launcher``), then write and return
    the report. Failed runs are kept (``runs/<key>/error.txt``), listed in the table, and retried next time."""
    folder = Path(folder)
    plan = load_plan(folder)
    run_jobs(jobs(plan, folder, resources), folder / RUNS, launcher=launcher, workers=workers, threads=threads,
             progress=progress, **options)
    return report(folder)


# -- the results table ------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
    return out


def _val_score(evals: dict[str, Any]) -> float:
    vals = [v["acc"] for k, v in evals.items() if k == "source_val" or k.startswith("source_val/")]
    return float(np.mean(vals)) if vals else math.nan


def _target_score(evals: dict[str, Any]) -> float:
    if "target" in evals:
        return float(evals["target"]["acc"])
    rest = [v["acc"] for k, v in evals.items() if not k.startswith("source_val")]
    return float(np.mean(rest)) if rest else math.nan


def selections(metrics: list[dict[str, Any]], final: dict[str, Any] | None = None) -> dict[str, Any]:
    """The three selection rules on one training run's evaluation records: for each rule the target accuracy it
    picks (``acc``), the score it picked by (``by``) and the step. ``final`` (the run's final evaluation) stands
    for the last checkpoint where given. Target accuracy is the ``target`` set's (or the mean of the evaluation
    sets, for runs without a target)."""
    evals = [(r["step"], r["eval"]) for r in metrics if "eval" in r]
    out: dict[str, Any] = {}
    last = final if final is not None else (evals[-1][1] if evals else None)
    last_step = evals[-1][0] if evals else None
    out["last"] = ({"acc": _target_score(last), "by": _val_score(last), "step": last_step} if last
                   else {"acc": math.nan, "by": math.nan, "step": None})
    with_val = [(s, e) for s, e in evals if not math.isnan(_val_score(e))]
    if with_val:
        s, e = max(reversed(with_val), key=lambda se: _val_score(se[1]))  # ties: the later one (as fer_lab.bench)
        out["source_val"] = {"acc": _target_score(e), "by": _val_score(e), "step": s}
    else:
        out["source_val"] = {"acc": math.nan, "by": math.nan, "step": None}
    if evals:
        s, e = max(evals, key=lambda se: _target_score(se[1]))
        out["target_test"] = {"acc": _target_score(e), "by": _target_score(e), "step": s}
    else:
        out["target_test"] = {"acc": math.nan, "by": math.nan, "step": None}
    return out


def _status(run_folder: Path) -> tuple[str, str | None]:
    if (run_folder / "done.json").is_file():
        return "done", None
    if (run_folder / "error.txt").is_file():
        return "failed", (run_folder / "error.txt").read_text()
    return "pending", None


def _last_line(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def collect(folder: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The plan and one record per planned run: status (done / failed / pending), error, result, selections."""
    folder = Path(folder)
    plan = load_plan(folder)
    records = []
    for run in plan["runs"]:
        rf = folder / RUNS / run["key"]
        status, error = _status(rf)
        rec: dict[str, Any] = {"key": run["key"], **run["params"], "status": status, "error": error}
        if plan["kind"] == "notebook":
            rec["params"] = run["params"]
            rec["draw"] = run.get("draw", 0)
        if status == "done":
            done = json.loads((rf / "done.json").read_text())
            rec["seconds"] = done.get("seconds")
            result = done.get("result") or {}
            if plan["kind"] == "train":
                rec["selections"] = selections(_read_jsonl(rf / "metrics.jsonl"), result.get("final"))
            else:
                rec["metrics"] = result.get("metrics", {})
        records.append(rec)
    return plan, records


def hp_text(hp: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hp.items())) or "defaults"


def _r(x: float, digits: int = 4) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), digits)


def _train_tables(plan: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], "+".join(r["source"]), r["target"], r["draw"]), []).append(r)
    draws = []
    for (method, source, target, draw), rs in groups.items():
        done = [r for r in rs if r["status"] == "done"]
        row: dict[str, Any] = {"method": method, "source": source, "target": target, "draw": draw,
                               "hparams": rs[0]["hparams"], "seeds": len(done),
                               "failed": sum(r["status"] == "failed" for r in rs),
                               "pending": sum(r["status"] == "pending" for r in rs)}
        for rule in RULES:
            accs = {r["seed"]: r["selections"][rule]["acc"] for r in done}
            mean, half = mean_ci(list(accs.values()))
            row[rule] = {"mean": mean, "ci95": half, "by": mean_ci([r["selections"][rule]["by"] for r in done])[0],
                         "per_seed": accs}
        draws.append(row)
    has_val = any(not math.isnan(d["source_val"]["by"]) for d in draws)
    best: list[dict[str, Any]] = []
    cells = sorted({(d["source"], d["target"]) for d in draws}, key=str)
    methods = list(dict.fromkeys(plan["spec"]["methods"]))
    reference = "source_only" if "source_only" in methods else methods[0]
    for source, target in cells:
        chosen: dict[tuple[str, str], dict[str, Any]] = {}
        for rule in RULES:
            for method in methods:
                cands = [d for d in draws if (d["method"], d["source"], d["target"]) == (method, source, target)
                         and d["seeds"] > 0]
                by = rule if rule != "last" or has_val else "target_test"
                key = (lambda d: d[rule]["by"]) if by == rule else (lambda d: d["last"]["mean"])
                cands = [d for d in cands if not math.isnan(key(d))]
                if not cands:
                    continue
                top = max(cands, key=key)  # ties keep the lower draw
                chosen[(rule, method)] = top
                top.setdefault("best_for", []).append(rule)
            ref = chosen.get((rule, reference))
            for method in methods:
                d = chosen.get((rule, method))
                if d is None:
                    continue
                row = {"rule": rule, "method": method, "source": source, "target": target, "draw": d["draw"],
                       "hparams": d["hparams"],
                       "chosen_by": ("source_val" if rule == "last" and has_val else
                                     "target_test" if rule == "last" else rule),
                       "seeds": d["seeds"], "failed": d["failed"], "acc": d[rule]["mean"], "ci95": d[rule]["ci95"]}
                if ref is not None and method != reference:
                    diff, half, n = paired_ci(d[rule]["per_seed"], ref[rule]["per_seed"])
                    row.update({"vs": reference, "diff": diff, "diff_ci95": half, "pairs": n})
                best.append(row)
    return {"draws": draws, "best": best, "reference": reference, "has_source_val": has_val}


def _notebook_tables(plan: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    headline = list(dict.fromkeys(k for r in records for k in (r.get("metrics", {}).get("headline") or {})))
    swept = [*plan["spec"]["grid"], *plan["spec"]["draws"]]
    over = "seed" if "seed" in swept else None
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        label = json.dumps({k: r["params"].get(k) for k in swept if k != over}, sort_keys=True)
        groups.setdefault(label, []).append(r)
    rows = []
    for label, rs in groups.items():
        done = [r for r in rs if r["status"] == "done"]
        row: dict[str, Any] = {**json.loads(label), "runs": len(done),
                               "failed": sum(r["status"] == "failed" for r in rs),
                               "pending": sum(r["status"] == "pending" for r in rs)}
        for h in headline:
            vals = [float(r["metrics"]["headline"][h]) for r in done
                    if isinstance((r["metrics"].get("headline") or {}).get(h), (int, float))]
            row[h] = dict(zip(("mean", "ci95"), mean_ci(vals)))
        rows.append(row)
    return {"groups": rows, "headline": headline, "swept": swept, "over": over}


def _fmt(x: Any, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float):
        return f"{100 * x:.1f}" if pct else f"{x:.4g}"
    return str(x)


def _md(rows: list[dict[str, Any]]) -> str:
    from fer_lab.evaluate import format_table

    return format_table(rows, percent=False)


def report(folder: str | os.PathLike, write: bool = True) -> dict[str, Any]:
    """Rebuild the results table of a sweep from its folder (any time: mid-sweep, after a kill, after the end);
    writes ``results.csv`` (one row per table line), ``results.md`` and ``results.json`` unless ``write`` is
    false. Wall-clock times are in the JSON's run records only, so the tables of a resumed sweep equal those of
    an uninterrupted one."""
    folder = Path(folder)
    plan, records = collect(folder)
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "failed", "pending")}
    failed = [{"key": r["key"], "error": _last_line(r["error"])} for r in records if r["status"] == "failed"]
    out: dict[str, Any] = {"kind": plan["kind"], "folder": str(folder), "runs": len(records), **counts}
    md = [f"# Sweep {folder.name}", "",
          f"{plan['kind']} sweep: {len(records)} runs, {counts['done']} done, {counts['failed']} failed, "
          f"{counts['pending']} not run yet.", ""]
    if plan["kind"] == "train":
        t = _train_tables(plan, records)
        out.update(t)
        csv_rows = [{"table": "best", "rule": b["rule"], "method": b["method"], "source": b["source"],
                     "target": b["target"], "draw": b["draw"], "hparams": hp_text(b["hparams"]),
                     "chosen_by": b["chosen_by"], "seeds": b["seeds"], "failed": b["failed"],
                     "acc": _r(100 * b["acc"]), "ci95": _r(100 * b["ci95"]),
                     "vs": b.get("vs", ""), "diff": _r(100 * b["diff"]) if "diff" in b else None,
                     "diff_ci95": _r(100 * b["diff_ci95"]) if "diff" in b else None} for b in t["best"]]
        csv_rows += [{"table": "draw", "rule": rule, "method": d["method"], "source": d["source"],
                      "target": d["target"], "draw": d["draw"], "hparams": hp_text(d["hparams"]), "chosen_by": "",
                      "seeds": d["seeds"], "failed": d["failed"], "acc": _r(100 * d[rule]["mean"]),
                      "ci95": _r(100 * d[rule]["ci95"]), "vs": "", "diff": None, "diff_ci95": None}
                     for d in t["draws"] for rule in RULES]
        md += ["## Per-method best draw under each selection rule", "",
               "Target test accuracy %, mean over seeds ± 95 % interval; `vs`: paired difference with the "
               f"reference ({t['reference']}) over the seeds both have."
               + ("" if t["has_source_val"] else " No run logged a `source_val` evaluation: `last` chose its "
                  "draw on the target test split and `source_val` is empty."), "",
               _md([{"rule": b["rule"], "method": b["method"], "source": b["source"], "target": b["target"],
                     "draw": b["draw"], "chosen by": b["chosen_by"], "seeds": b["seeds"],
                     "acc %": f"{_fmt(b['acc'])} ± {_fmt(b['ci95'])}".rstrip(" ±"),
                     f"vs {t['reference']}": (f"{100 * b['diff']:+.1f} ± {_fmt(b['diff_ci95'])}".rstrip(" ±")
                                              if "diff" in b and not math.isnan(b["diff"]) else "")}
                    for b in t["best"]]), "",
               "## Every draw (mean over seeds ± 95 % interval, %)", "",
               _md([{"method": d["method"], "source": d["source"], "target": d["target"], "draw": d["draw"],
                     "hparams": hp_text(d["hparams"]), "seeds": d["seeds"], "failed": d["failed"],
                     "pending": d["pending"],
                     **{rule: f"{_fmt(d[rule]['mean'])} ± {_fmt(d[rule]['ci95'])}".rstrip(" ±") for rule in RULES},
                     "best for": ",".join(d.get("best_for", []))} for d in t["draws"]]), ""]
    else:
        t = _notebook_tables(plan, records)
        out.update(t)
        csv_rows = [{**{k: g.get(k) for k in t["swept"] if k != t["over"]}, "runs": g["runs"], "failed": g["failed"],
                     **{f"{h} mean": _r(g[h]["mean"]) for h in t["headline"]},
                     **{f"{h} ci95": _r(g[h]["ci95"]) for h in t["headline"]}} for g in t["groups"]]
        md += [f"## Headline metrics{' (mean over seeds ± 95 % interval)' if t['over'] else ''}", "",
               _md([{**{k: g.get(k) for k in t["swept"] if k != t["over"]}, "runs": g["runs"], "failed": g["failed"],
                     **{h: f"{_fmt(g[h]['mean'], False)} ± {_fmt(g[h]['ci95'], False)}".rstrip(" ±")
                        for h in t["headline"]}} for g in t["groups"]]), ""]
    md += ["## Runs", "", _md([{"run": r["key"], "status": r["status"], "error": _last_line(r["error"])}
                               for r in records]), ""]
    if failed:
        md += ["Failed runs keep their traceback in `runs/<run>/error.txt`; `fer-lab sweep run` retries them.", ""]
    out["failed_runs"] = failed
    out["records"] = [{k: v for k, v in r.items()} for r in records]
    if write:
        buf = io.StringIO()
        if csv_rows:
            w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in csv_rows for k in r)))
            w.writeheader()
            w.writerows(csv_rows)
        _write(folder / "results.csv", buf.getvalue())
        _write(folder / "results.md", "\n".join(md))
        _write(folder / "results.json", json.dumps(json_safe(out), indent=1, default=float))
    out["markdown"] = "\n".join(md)
    return out


def json_safe(x: Any) -> Any:
    """JSON without NaN (null instead)."""
    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def best_frame(rep: dict[str, Any]):
    """The per-method best draws of a training sweep's report as a DataFrame, accuracies in %."""
    import pandas as pd

    cols = ["rule", "method", "source", "target", "draw", "hparams", "chosen_by", "seeds", "failed", "acc", "ci95",
            "vs", "diff", "diff_ci95"]
    rows = [{**b, "hparams": hp_text(b["hparams"]),
             **{k: 100 * b[k] for k in ("acc", "ci95", "diff", "diff_ci95") if k in b}} for b in rep["best"]]
    return pd.DataFrame(rows).reindex(columns=cols).round(1)


# -- plots (notebook 06) ------------------------------------------------------------------------------------------
def plot_best(rep: dict[str, Any], ax: Any = None) -> Any:
    """Bars: each method's best draw per selection rule and (source, target) cell, with 95 % intervals."""
    import matplotlib.pyplot as plt

    best = rep["best"]
    cells = list(dict.fromkeys((b["source"], b["target"]) for b in best))
    methods = list(dict.fromkeys(b["method"] for b in best))
    if ax is None:
        _, axes = plt.subplots(1, max(1, len(cells)), figsize=(5 * max(1, len(cells)), 3.5), squeeze=False)
        axes = axes[0]
    else:
        axes = [ax]
    width = 0.8 / max(1, len(methods))
    for a, (source, target) in zip(axes, cells):
        for i, m in enumerate(methods):
            rows = {b["rule"]: b for b in best if (b["source"], b["target"], b["method"]) == (source, target, m)}
            x = np.arange(len(RULES)) + i * width
            y = [100 * rows[r]["acc"] if r in rows else np.nan for r in RULES]
            e = [100 * rows[r]["ci95"] if r in rows and not math.isnan(rows[r]["ci95"]) else 0 for r in RULES]
            a.bar(x, y, width, yerr=e, capsize=3, label=m)
        a.set_xticks(np.arange(len(RULES)) + 0.4 - width / 2, RULES)
        a.set_ylabel("target accuracy %")
        a.set_title(f"{source} -> {target}", fontsize=9)
        a.legend(fontsize=8)
    return axes


def plot_vs_hparam(rep: dict[str, Any], name: str = "lr", rule: str = "last", log: bool = True, ax: Any = None):
    """Target accuracy (mean over seeds ± 95 %) of every draw against one swept hyper-parameter, per method."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    for m in dict.fromkeys(d["method"] for d in rep["draws"]):
        pts = sorted((d["hparams"][name], 100 * d[rule]["mean"],
                      0 if math.isnan(d[rule]["ci95"]) else 100 * d[rule]["ci95"])
                     for d in rep["draws"] if d["method"] == m and name in d["hparams"] and d["seeds"])
        if pts:
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=m)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(f"{name} (draws; defaults are draw 0)")
    ax.set_ylabel(f"target accuracy % ({rule})")
    ax.legend(fontsize=8)
    return ax


# -- command line ---------------------------------------------------------------------------------------------------
def _key_value(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    return key, value


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _add_launch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("launcher")
    g.add_argument("--launcher", default="local", choices=["local", "ray", "slurm"])
    g.add_argument("--workers", type=int, default=1, help="runs at once (local: processes; ray/slurm: in flight)")
    g.add_argument("--threads", type=int, default=1, help="threads per run")
    g.add_argument("--gpus-per-run", type=float, default=None, help="ray / slurm: GPUs each run asks for")
    g.add_argument("--cpus-per-run", type=float, default=None, help="ray / slurm: CPUs each run asks for "
                                                                    "(default: --threads)")
    g.add_argument("--ray-address", default=None,
                   help="an existing Ray cluster (host:port, ray://host:10001 or auto); default: start a local one")
    g.add_argument("--slurm-partition", default=None)
    g.add_argument("--slurm-time", type=int, default=None, metavar="MIN", help="time limit per run, minutes")
    g.add_argument("--slurm-cluster", default=None, choices=["slurm", "local", "debug"],
                   help="submitit's executor (default: slurm where sbatch exists, else local)")
    g.add_argument("--slurm-option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="any submitit parameter, e.g. slurm_account=abc (repeatable)")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--plan-only", action="store_true", help="write the plan and stop")


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``fer-lab sweep train|notebook|run|report`` on the CLI's sub-parsers."""
    from fer_lab.config import PROFILES

    sp = subparsers.add_parser("sweep", help="sweeps of training runs or of a notebook: plan, launch, resume, report")
    sub = sp.add_subparsers(dest="sweep_command", required=True)
    t = sub.add_parser("train", help="methods x hyper-parameter draws x seeds x (source, target) pairs")
    t.add_argument("folder")
    t.add_argument("--methods", default="source_only,dann")
    t.add_argument("--seeds", type=_int_list, default=[0, 1, 2])
    t.add_argument("--draws", type=int, default=1,
                   help="hyper-parameter draws per method (draw 0: the defaults; d > 0: Hparams.sample(d))")
    t.add_argument("--source", action="append", default=[], help="source spec(s) (repeatable: one sweep cell each)")
    t.add_argument("--target", action="append", default=[], help="target spec (repeatable; 'none' for none)")
    t.add_argument("--profile", default="smoke", choices=["auto", *PROFILES])
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--device", default="cpu")
    t.add_argument("--backbone", default="smallcnn")
    t.add_argument("--hp", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="a hyper-parameter fixed for every run (repeatable)")
    t.add_argument("--set", type=_key_value, action="append", default=[], metavar="FIELD=VALUE",
                   help="any other TrainConfig field for every run, e.g. n_train=512 (repeatable)")
    _add_launch_args(t)
    n = sub.add_parser("notebook", help="a grid and/or seeded random draws over a notebook's parameters cell")
    n.add_argument("notebook")
    n.add_argument("folder")
    n.add_argument("--grid", type=_key_value, action="append", default=[], metavar="NAME=V1,V2",
                   help="grid values (repeatable; repeat a name to add values that contain commas)")
    n.add_argument("--draw", type=_key_value, action="append", default=[], metavar="NAME=DIST",
                   help="random draw: uniform:LO:HI, loguniform:LO:HI, int:LO:HI or choice:A|B (repeatable)")
    n.add_argument("--draws", type=int, default=1, help="random draws per grid point")
    n.add_argument("--draw-seed", type=int, default=0)
    n.add_argument("-p", "--param", type=_key_value, action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter fixed for every run (repeatable)")
    n.add_argument("--cell-timeout", type=float, default=None, metavar="S")
    _add_launch_args(n)
    r = sub.add_parser("run", help="(re)start a planned sweep: runs only what is not done")
    r.add_argument("folder")
    _add_launch_args(r)
    rep = sub.add_parser("report", help="rebuild the results table (CSV, Markdown, JSON) of a sweep folder")
    rep.add_argument("folder")
    sp.set_defaults(func=cmd_sweep)
    return sp


def _launch_options(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, Any]]:
    resources: dict[str, float] = {}
    if args.cpus_per_run is not None:
        resources["num_cpus"] = args.cpus_per_run
    if args.gpus_per_run is not None:
        resources["num_gpus"] = args.gpus_per_run
    options: dict[str, Any] = {}
    if args.launcher == "ray":
        if args.ray_address:
            options["address"] = args.ray_address
    elif args.launcher == "slurm":
        if args.slurm_cluster:
            options["cluster"] = args.slurm_cluster
        if args.slurm_partition:
            options["slurm_partition"] = args.slurm_partition
        if args.slurm_time:
            options["timeout_min"] = args.slurm_time
        options.update({k: json_value(v) for k, v in args.slurm_option})
    elif args.ray_address or args.slurm_partition or args.slurm_time or args.slurm_option:
        raise ValueError("--ray-address / --slurm-* options need --launcher ray / slurm")
    elif resources:
        raise ValueError("--cpus-per-run / --gpus-per-run are requests to a ray or slurm launcher")
    return resources, options


def _grid(pairs: Iterable[tuple[str, str]]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for k, v in pairs:
        grid.setdefault(k, []).extend(json_value(x) for x in v.split(",") if x != "")
    return grid


def cmd_sweep(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if args.sweep_command == "report":
        rep = report(folder)
        print(rep["markdown"])
        print(f"\nwritten: {folder / 'results.md'}, {folder / 'results.csv'}, {folder / 'results.json'}")
        return 0
    resources, options = _launch_options(args)
    if args.sweep_command == "train":
        config = {"profile": args.profile, "steps": args.steps, "device": args.device, "backbone": args.backbone,
                  **{k: json_value(v) for k, v in args.set}}
        config = {k: v for k, v in config.items() if v is not None}
        targets = [None if t.lower() in ("", "none") else t for t in (args.target or ["synth:wild"])]
        plan = plan_training([m for m in args.methods.split(",") if m], args.seeds, args.draws,
                             args.source or ["synth:lab"], targets, config, {k: json_value(v) for k, v in args.hp})
        create_sweep(folder, plan)
    elif args.sweep_command == "notebook":
        plan = plan_notebook(args.notebook, _grid(args.grid), dict(args.draw), args.draws, args.draw_seed,
                             {k: json_value(v) for k, v in args.param}, args.cell_timeout)
        create_sweep(folder, plan)
    plan = load_plan(folder)
    print(f"sweep {folder}: {len(plan['runs'])} {plan['kind']} runs; plan in {folder / PLAN}", flush=True)
    if args.plan_only:
        return 0
    rep = run_sweep(folder, args.launcher, args.workers, args.threads, not args.no_progress, resources, **options)
    print(rep["markdown"])
    print(f"\n{rep['done']} done, {rep['failed']} failed, {rep['pending']} not run; "
          f"table: {folder / 'results.md'} (CSV, JSON beside it)")
    return 1 if rep["failed"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fer_lab.sweep ...``: the same as ``fer-lab sweep ...``."""
    import sys

    parser = argparse.ArgumentParser(prog="fer-lab")
    add_sweep_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        if os.environ.get("FER_LAB_DEBUG"):
            raise
        print(f"fer-lab: error: {e.args[0] if type(e) is KeyError else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
