"""Run many independent jobs in worker processes, resumably: the one runner behind ``fer-lab bench`` and sweeps.

A :class:`Job` names a function by import path (``"fer_lab.bench:run_cell"``) and its JSON-able keyword arguments.
:func:`run_jobs` runs a list of them under a status folder, one sub-folder per job key::

    root/<key>/job.json     the job as planned (written before anything runs)
    root/<key>/done.json    the function's JSON result; a job with this marker is never run again
    root/<key>/error.txt    the traceback of a failed job (kept, reported; the job is retried on the next run)
    root/<key>/log.txt      everything the job printed (its progress bar included)

Each job runs in a worker process started fresh (``spawn``) with a fixed number of threads (default one), so a
figure does not depend on how many cores the machine has or how many jobs run at once. Jobs may depend on others
(``after``): a job starts once those are done, and fails at once, naming it, when one of them failed. A killed
run, started again, runs only what has no done marker (and a training job resumes from its own checkpoint).

Launchers: ``local`` (a pool of worker processes on this machine). Others register in :data:`LAUNCHERS` with the
same signature as :func:`launch_local`.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from fer_lab.registry import Registry


@dataclass(frozen=True)
class Job:
    key: str                                  # unique; a folder name under the runner's root
    fn: str                                   # "package.module:function", called as fn(**kwargs)
    kwargs: dict[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()               # keys of jobs that must be done first
    resources: dict[str, float] = field(default_factory=dict)   # launcher hints, e.g. {"num_gpus": 1}

    def __post_init__(self) -> None:
        if not self.key or "/" in self.key or self.key.startswith("."):
            raise ValueError(f"job key {self.key!r} must be a plain folder name")
        if ":" not in self.fn:
            raise ValueError(f"job {self.key}: fn {self.fn!r} is not 'module:function'")


@dataclass
class Outcome:
    key: str
    status: str                               # "done", "failed" or "cached" (done in an earlier run)
    result: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0


class JobFailed(RuntimeError):
    pass


def resolve(fn: str) -> Callable[..., Any]:
    module, _, name = fn.partition(":")
    return getattr(importlib.import_module(module), name)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def job_dir(root: str | os.PathLike, key: str) -> Path:
    return Path(root) / key


def is_done(root: str | os.PathLike, key: str) -> bool:
    return (job_dir(root, key) / "done.json").is_file()


def read_result(root: str | os.PathLike, key: str) -> dict[str, Any]:
    return json.loads((job_dir(root, key) / "done.json").read_text())["result"]


def set_threads(threads: int) -> None:
    """Fix the thread count of this process (before torch is imported where possible)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)


def execute(job: dict[str, Any], root: str, threads: int) -> dict[str, Any]:
    """Run one job in this process with its output sent to its log; writes done.json or error.txt.

    Returns ``{"status", "result" | "error", "seconds"}``. Launchers call this inside their workers."""
    set_threads(threads)
    folder = job_dir(root, job["key"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "error.txt").unlink(missing_ok=True)
    t0 = time.perf_counter()
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(folder / "log.txt", "a") as log:
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
        try:
            import torch

            torch.set_num_threads(threads)
            result = resolve(job["fn"])(**job["kwargs"])
            status, payload = "done", {"result": result}
        except BaseException as exc:  # noqa: BLE001  (recorded, reported, never swallowed silently)
            if isinstance(exc, KeyboardInterrupt):
                raise
            status, payload = "failed", {"error": traceback.format_exc()}
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
    seconds = time.perf_counter() - t0
    if status == "done":
        _atomic_write(folder / "done.json", json.dumps({"key": job["key"], "seconds": seconds,
                                                        "result": payload["result"]}, indent=1, default=float))
    else:
        _atomic_write(folder / "error.txt", payload["error"])
    return {"status": status, "seconds": seconds, **payload}


def _init_worker(threads: int) -> None:
    set_threads(threads)


def launch_local(jobs: Sequence[Job], root: Path, workers: int, threads: int,
                 on_finish: Callable[[Outcome], None], **options: Any) -> None:
    """Run ``jobs`` (already ordered so that every job comes after its dependencies, and none done) on a pool of
    ``workers`` fresh processes with ``threads`` threads each."""
    if options:
        raise ValueError(f"the local launcher takes no options, got {', '.join(options)}")
    pending = list(jobs)
    state: dict[str, str] = {}
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx, initializer=_init_worker,
                                initargs=(threads,)) as pool:
        running: dict[cf.Future, Job] = {}
        while pending or running:
            for job in list(pending):
                if len(running) >= max(1, workers):
                    break
                deps = [state.get(d, "done" if is_done(root, d) else None) for d in job.after]
                if any(d == "failed" for d in deps):
                    pending.remove(job)
                    bad = next(d for d, s in zip(job.after, deps) if s == "failed")
                    msg = f"not run: the job it depends on, {bad}, failed"
                    _atomic_write(job_dir(root, job.key) / "error.txt", msg + "\n")
                    state[job.key] = "failed"
                    on_finish(Outcome(job.key, "failed", error=msg))
                    continue
                if all(d == "done" for d in deps):
                    pending.remove(job)
                    running[pool.submit(execute, asdict(job), str(root), threads)] = job
            if not running:
                if pending:  # nothing runnable and nothing running: a dependency is not in this run
                    missing = sorted({d for j in pending for d in j.after if d not in state and not is_done(root, d)})
                    raise JobFailed(f"jobs wait on unknown or unfinished jobs: {', '.join(missing)}")
                break
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                job = running.pop(fut)
                try:
                    out = fut.result()
                except Exception:  # the worker process itself died
                    out = {"status": "failed", "error": traceback.format_exc(), "seconds": 0.0}
                    _atomic_write(job_dir(root, job.key) / "error.txt", out["error"])
                state[job.key] = out["status"]
                on_finish(Outcome(job.key, out["status"], out.get("result"), out.get("error"), out["seconds"]))


LAUNCHERS: Registry[Callable[..., None]] = Registry("launcher")
LAUNCHERS.register("local")(launch_local)


def _ordered(jobs: Sequence[Job]) -> list[Job]:
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate job keys: {', '.join(dup)}")
    by_key, order, seen = {j.key: j for j in jobs}, [], set()

    def visit(job: Job, path: tuple[str, ...] = ()) -> None:
        if job.key in seen:
            return
        if job.key in path:
            raise ValueError(f"jobs depend on each other in a cycle: {' -> '.join(path + (job.key,))}")
        for d in job.after:
            if d in by_key:
                visit(by_key[d], path + (job.key,))
        seen.add(job.key)
        order.append(job)

    for j in jobs:
        visit(j)
    return order


def run_jobs(jobs: Iterable[Job], root: str | os.PathLike, launcher: str = "local", workers: int = 1,
             threads: int = 1, progress: bool = True, raise_on_failure: bool = False,
             **options: Any) -> dict[str, Outcome]:
    """Run every job without a done marker under ``root``; returns each job's :class:`Outcome` by key.

    Failed jobs keep their traceback in ``root/<key>/error.txt`` and are reported (``raise_on_failure`` raises
    :class:`JobFailed` naming them after the others have run)."""
    from tqdm.auto import tqdm

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = _ordered(list(jobs))
    outcomes: dict[str, Outcome] = {}
    todo = []
    for job in jobs:
        folder = job_dir(root, job.key)
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / "job.json", json.dumps(asdict(job), indent=1, sort_keys=True))
        if is_done(root, job.key):
            outcomes[job.key] = Outcome(job.key, "cached", read_result(root, job.key))
        else:
            todo.append(job)
    bar = tqdm(total=len(jobs), initial=len(outcomes), disable=not progress, desc=f"jobs ({launcher})",
               unit="job", dynamic_ncols=True)
    counts = {"done": 0, "failed": 0, "cached": len(outcomes)}

    def on_finish(out: Outcome) -> None:
        outcomes[out.key] = out
        counts[out.status] += 1
        bar.update(1)
        bar.set_postfix(done=counts["done"] + counts["cached"], failed=counts["failed"],
                        left=len(jobs) - len(outcomes))
        if out.status == "failed" and progress:
            last = (out.error or "").strip().splitlines()[-1:] or [""]
            tqdm.write(f"job {out.key} failed: {last[0]} (see {job_dir(root, out.key) / 'error.txt'})")

    try:
        if todo:
            LAUNCHERS.get(launcher)(todo, root, workers, threads, on_finish, **options)
    finally:
        bar.close()
    failed = sorted(k for k, o in outcomes.items() if o.status == "failed")
    if failed and raise_on_failure:
        raise JobFailed(f"{len(failed)} job(s) failed: {', '.join(failed)} (tracebacks in {root}/<key>/error.txt)")
    return outcomes
