"""Wall time of one small training sweep on each launcher, and the Ray launcher's overhead against the local one.

The same plan (2 methods x 3 seeds at the tiny profile by default, one thread per run) runs into a fresh folder
on: the local launcher with 1 and with 2 worker processes, and the ray launcher with 2 workers on the private
cluster it starts on 127.0.0.1; then the ray launcher's fixed cost (start, one trivial task, stop) apart. All in
one run, so the ratio compares like with like on this machine's load; every launcher must give the same table.

    python benchmarks/bench_sweep.py [--methods source_only,dann --seeds 0,1,2 --profile tiny --workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from fer_lab import sweep as sw
from fer_lab.runner import Job, run_jobs

def timed_sweep(plan: dict, folder: Path, launcher: str, workers: int) -> tuple[float, dict]:
    sw.create_sweep(folder, plan)
    t = time.perf_counter()
    rep = sw.run_sweep(folder, launcher=launcher, workers=workers, threads=1, progress=False)
    return time.perf_counter() - t, rep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="source_only,dann")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--profile", default="tiny")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    plan = sw.plan_training(args.methods.split(","), [int(s) for s in args.seeds.split(",")], 1,
                            config={"profile": args.profile, "steps": args.steps} if args.steps else
                            {"profile": args.profile})
    n = len(plan["runs"])
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        tmp = Path(tmp)
        sw.run_sweep(sw.create_sweep(tmp / "warm", {**plan, "runs": plan["runs"][:1]}).parent, progress=False)
        times, tables = {}, {}
        for name, launcher, workers in (("local, 1 worker", "local", 1), (f"local, {args.workers} workers", "local",
                                                                          args.workers),
                                        (f"ray, {args.workers} workers", "ray", args.workers)):
            times[name], rep = timed_sweep(plan, tmp / name.replace(", ", "-").replace(" ", ""), launcher, workers)
            assert rep["done"] == n, f"{name}: {rep['failed']} run(s) failed: {rep['failed_runs']}"
            tables[name] = (tmp / name.replace(", ", "-").replace(" ", "") / "results.csv").read_text()
            print(f"{name:18s} {times[name]:7.1f} s  ({times[name] / n:.1f} s per run, {n} runs)", flush=True)
        t = time.perf_counter()  # the ray launcher's fixed cost: start a private cluster, one trivial task, stop
        run_jobs([Job("noop", "fer_lab.sweep:mean_ci", {"values": [1.0]})], tmp / "noop", launcher="ray",
                 workers=args.workers, progress=False)
        fixed = time.perf_counter() - t
    local, ray_ = times[f"local, {args.workers} workers"], times[f"ray, {args.workers} workers"]
    print(f"ray launcher fixed cost (private 127.0.0.1 cluster start, one trivial task, stop): {fixed:.1f} s")
    print(f"ray / local ({args.workers} workers): {ray_ / local:.2f}x wall time; less the fixed cost: "
          f"{(ray_ - fixed) / local:.2f}x;  local 1 -> {args.workers} workers: "
          f"{times['local, 1 worker'] / local:.2f}x speed-up")
    print("same table on every launcher:", len(set(tables.values())) == 1)


if __name__ == "__main__":
    main()
