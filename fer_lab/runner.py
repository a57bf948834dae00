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

Launchers: ``local`` (a pool of worker processes on this machine), ``ray`` (one Ray task per job, on an existing
cluster or a private one on 127.0.0.1; :func:`launch_ray`) and ``slurm`` (one Slurm job per job through submitit;
:func:`launch_slurm`). Others register in :data:`LAUNCHERS` with the same signature as :func:`launch_local`.
Ray tasks rather than Ray Tune: the done markers, error files and resume are the runner's own, shared by every
launcher; Tune's trial bookkeeping, schedulers and result store would duplicate them with a second, different state.
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
        _atomic_write(folder / "done.json", json.dumps({"key": job["key"], "job": _plan_digest(job),
                                                        "seconds": seconds, "result": payload["result"]},
                                                       indent=1, default=float))
    else:
        _atomic_write(folder / "error.txt", payload["error"])
    return {"status": status, "seconds": seconds, **payload}


def _plan_digest(job: Job | dict[str, Any]) -> str:
    """What a done marker was made for: the function and its arguments."""
    import hashlib

    d = asdict(job) if isinstance(job, Job) else job
    return hashlib.sha1(json.dumps([d["fn"], d["kwargs"]], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _init_worker(threads: int) -> None:
    set_threads(threads)
    if sys.platform.startswith("linux"):  # a worker ends with the runner that started it (a killed bench leaves none)
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
        except OSError:
            pass


def launch_local(jobs: Sequence[Job], root: Path, workers: int, threads: int,
                 on_finish: Callable[[Outcome], None], **options: Any) -> None:
    """Run ``jobs`` (already ordered so that every job comes after its dependencies, and none done) on a pool of
    ``workers`` fresh processes with ``threads`` threads each."""
    if options:
        raise ValueError(f"the local launcher takes no options, got {', '.join(options)}")
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx, initializer=_init_worker,
                                initargs=(threads,)) as pool:

        def wait(futures: list[cf.Future]) -> list[tuple[cf.Future, dict[str, Any]]]:
            finished, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
            out = []
            for fut in finished:
                try:
                    out.append((fut, fut.result()))
                except Exception:  # the worker process itself died
                    out.append((fut, _crashed("worker process")))
            return out

        _dispatch(jobs, root, on_finish, lambda job: pool.submit(execute, asdict(job), str(root), threads), wait,
                  max_in_flight=workers, cancel=lambda futures: [f.cancel() for f in futures])


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
        if is_done(root, job.key):
            planned = json.loads((folder / "done.json").read_text()).get("job")
            if planned is not None and planned != _plan_digest(job):       # job.json still shows what it ran
                raise ValueError(f"job {job.key} is done in {root} with other arguments (see its job.json); use "
                                 f"another folder or remove {folder}")
            outcomes[job.key] = Outcome(job.key, "cached", read_result(root, job.key))
        else:
            _atomic_write(folder / "job.json", json.dumps(asdict(job), indent=1, sort_keys=True))
            todo.append(job)
    bar = tqdm(total=len(jobs), initial=len(outcomes), disable=not progress, desc=f"jobs ({launcher})",
               unit="job", dynamic_ncols=True)
    counts = {"done": 0, "failed": 0, "cached": len(outcomes)}

    def on_finish(out: Outcome) -> None:
        outcomes[out.key] = out
        counts[out.status] += 1
        bar.update(1)
        left = len(jobs) - len(outcomes)
        bar.set_postfix(done=counts["done"] + counts["cached"], running=min(max(1, workers), left),
                        failed=counts["failed"], left=left)
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


# -- launchers on other engines: Ray tasks and Slurm (submitit) --------------------------------------------------
def _dispatch(jobs: Sequence[Job], root: Path, on_finish: Callable[[Outcome], None],
              submit: Callable[[Job], Any], wait: Callable[[list[Any]], list[tuple[Any, dict[str, Any]]]],
              max_in_flight: int, cancel: Callable[[list[Any]], None] = lambda handles: None) -> None:
    """The scheduling loop of the engine launchers: submit each job once its dependencies are done (at most
    ``max_in_flight`` at once), report each as it finishes. ``submit(job)`` returns a hashable handle;
    ``wait(handles)`` blocks until at least one finished and returns ``(handle, execute's dict)`` pairs, with
    ``"crashed": True`` where the worker itself died (then no error.txt exists yet)."""
    pending = list(jobs)
    state: dict[str, str] = {}
    running: dict[Any, Job] = {}
    try:
        while pending or running:
            for job in list(pending):
                if len(running) >= max(1, max_in_flight):
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
                    running[submit(job)] = job
            if not running:
                if pending:
                    missing = sorted({d for j in pending for d in j.after if d not in state and not is_done(root, d)})
                    raise JobFailed(f"jobs wait on unknown or unfinished jobs: {', '.join(missing)}")
                break
            for handle, out in wait(list(running)):
                job = running.pop(handle)
                if out.pop("crashed", False):
                    _atomic_write(job_dir(root, job.key) / "error.txt", out["error"])
                state[job.key] = out["status"]
                on_finish(Outcome(job.key, out["status"], out.get("result"), out.get("error"), out["seconds"]))
    except BaseException:
        cancel(list(running))
        raise


def _crashed(what: str) -> dict[str, Any]:
    return {"status": "failed", "seconds": 0.0, "crashed": True,
            "error": f"the {what} running this job died or was stopped:\n{traceback.format_exc()}"}


RAY_RESOURCES = ("num_cpus", "num_gpus", "memory", "resources", "accelerator_type")


def launch_ray(jobs: Sequence[Job], root: Path, workers: int, threads: int,
               on_finish: Callable[[Outcome], None], address: str | None = None, num_gpus: float | None = None,
               temp_dir: str | None = None, runtime_env: dict[str, Any] | None = None) -> None:
    """Run ``jobs`` as Ray tasks (one task per job, each calling :func:`execute`, so done markers and logs are the
    local launcher's), at most ``workers`` at once.

    ``address`` names an existing cluster (``"ray://head:10001"``, ``"head:6379"`` or ``"auto"``); there ``root``
    must be on a file system every node sees and fer_lab importable on every node. Without it a private local
    cluster is started on 127.0.0.1 with ``workers * threads`` CPUs (``num_gpus``: the GPUs it offers, default
    detected), no dashboard, no usage statistics and its temp dir in ``temp_dir`` (default a new folder under
    /tmp, removed at the end: Ray's socket paths must stay short), and stopped at the end. A session already connected (``ray.init``
    called by the caller) is used as it is. Each task asks for ``threads`` CPUs unless its ``Job.resources`` says
    otherwise (``{"num_cpus": 2, "num_gpus": 1}``; Ray's ``memory``, ``resources`` and ``accelerator_type`` too).
    Tasks are never retried by Ray: a failure is kept in error.txt and the next run of the sweep retries it."""
    loopback = not address or address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost")
    if loopback:  # before Ray is imported: a single-machine cluster stays on the loopback address
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        from ray._private import ray_constants
    except ImportError:
        raise RuntimeError("the ray launcher needs Ray: pip install 'ray==2.60.0' (see requirements/constraints.txt)") \
            from None
    for job in jobs:
        unknown = sorted(set(job.resources) - set(RAY_RESOURCES))
        if unknown:
            raise ValueError(f"job {job.key}: resource(s) {', '.join(unknown)} are not Ray task options "
                             f"({', '.join(RAY_RESOURCES)})")
    started, own_temp = False, None
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kw: dict[str, Any] = dict(log_to_driver=False, logging_level="warning", runtime_env=runtime_env)
        if not address:
            import tempfile

            env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p)),
                                "RAY_USAGE_STATS_ENABLED": "0"}}
            for k, v in (runtime_env or {}).items():
                env[k] = {**env.get(k, {}), **v} if isinstance(v, dict) else v
            own_temp = None if temp_dir else tempfile.mkdtemp(prefix="fer-lab-ray-", dir="/tmp")
            kw.update(address="local", num_cpus=max(1, workers) * threads, num_gpus=num_gpus, runtime_env=env,
                      include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=100 * 2**20,
                      _temp_dir=temp_dir or own_temp)
        else:
            kw["address"] = address
        # Ray swaps a loopback address for the machine's own unless told the cluster is single-machine
        saved = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = saved and not loopback
        try:
            for attempt in range(3 if not address else 1):
                try:
                    ray.init(**kw)
                    break
                except Exception as e:  # Ray gives a starting node 30 s: too little on a machine under load
                    if "timed out during startup" not in str(e) or attempt == 2:
                        raise
                    ray.shutdown()
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = saved
        started = True
    if started and not address:  # a private cluster never grows: a request it cannot meet would wait forever
        have = ray.cluster_resources()
        for job in jobs:
            need = {"num_cpus": threads, **job.resources}
            for k, name in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
                if need.get(k, 0) > have.get(name, 0):
                    ray.shutdown()
                    if own_temp:
                        import shutil

                        shutil.rmtree(own_temp, ignore_errors=True)
                    raise ValueError(f"job {job.key} asks for {need[k]:g} {name}(s); the local Ray cluster has "
                                     f"{have.get(name, 0):g} (num_gpus / --gpus-per-run, --workers x --threads)")
    task = ray.remote(max_retries=0)(execute)

    def submit(job: Job) -> Any:
        return task.options(**{"num_cpus": threads, **job.resources}).remote(asdict(job), str(root), threads)

    def wait(refs: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        ready, _ = ray.wait(refs, num_returns=1)
        done = []
        for ref in ready:
            try:
                done.append((ref, ray.get(ref)))
            except Exception:  # the worker died (killed, out of memory) or the task was cancelled
                done.append((ref, _crashed("Ray worker")))
        return done

    def cancel(refs: list[Any]) -> None:
        for ref in refs:
            ray.cancel(ref, force=True)

    try:
        _dispatch(jobs, root, on_finish, submit, wait, workers, cancel)
    finally:
        if started:
            ray.shutdown()
        if own_temp:  # the session's logs go with the private cluster (pass temp_dir to keep them)
            import shutil

            shutil.rmtree(own_temp, ignore_errors=True)


SLURM_RESOURCES = {"num_cpus": "cpus_per_task", "num_gpus": "gpus_per_node", "mem_gb": "mem_gb",
                   "timeout_min": "timeout_min"}


def launch_slurm(jobs: Sequence[Job], root: Path, workers: int, threads: int,
                 on_finish: Callable[[Outcome], None], cluster: str | None = None, folder: str | None = None,
                 poll_s: float = 5.0, **parameters: Any) -> None:
    """Run ``jobs`` through submitit: one Slurm job per runner job, each calling :func:`execute` (same done
    markers and logs), at most ``workers`` submitted at once.

    ``cluster``: ``"slurm"``, ``"local"`` (submitit's local executor: subprocesses on this machine, how the tests
    run it) or ``None`` (submitit picks: Slurm where ``sbatch`` exists). ``folder``: submitit's own files (default
    ``root/.submitit``). Other keyword arguments are submitit parameters (``timeout_min``, ``slurm_partition``,
    ``slurm_account``, ``gpus_per_node``, ``mem_gb``, ``slurm_additional_parameters`` ...). Each job asks for
    ``threads`` CPUs unless its ``Job.resources`` says otherwise (``num_cpus``, ``num_gpus``, ``mem_gb``,
    ``timeout_min``). A job that Slurm kills (time limit, pre-emption) is failed; the next run retries it, and a
    training run resumes from its checkpoint."""
    try:
        import submitit
    except ImportError:
        raise RuntimeError("the slurm launcher needs submitit: pip install 'submitit==1.5.4'") from None
    for job in jobs:
        unknown = sorted(set(job.resources) - set(SLURM_RESOURCES))
        if unknown:
            raise ValueError(f"job {job.key}: resource(s) {', '.join(unknown)} have no Slurm meaning here "
                             f"({', '.join(SLURM_RESOURCES)})")
    executor = submitit.AutoExecutor(folder=folder or str(Path(root) / ".submitit" / "%j"), cluster=cluster)
    base = {"timeout_min": 60, "tasks_per_node": 1, "nodes": 1, "name": "fer-lab", **parameters}

    def submit(job: Job) -> Any:
        res = {"cpus_per_task": threads, **{SLURM_RESOURCES[k]: v for k, v in job.resources.items()}}
        res = {k: (int(v) if k != "mem_gb" else float(v)) for k, v in res.items()}  # submitit checks the types
        executor.update_parameters(**{**base, **res, "name": f"fer-lab-{job.key}"})
        return executor.submit(execute, asdict(job), str(root), threads)

    def wait(handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        while True:
            done = [h for h in handles if h.done()]
            if done:
                break
            time.sleep(poll_s)
        out = []
        for h in done:
            try:
                out.append((h, h.result()))
            except Exception:  # killed by Slurm, out of time, or the process died
                out.append((h, _crashed(f"Slurm job {h.job_id}")))
        return out

    def cancel(handles: list[Any]) -> None:
        for h in handles:
            h.cancel(check=False)

    _dispatch(jobs, root, on_finish, submit, wait, workers, cancel)


LAUNCHERS.register("ray")(launch_ray)
LAUNCHERS.register("slurm")(launch_slurm)
