"""SynthFER rendering speed: faces/s without cache against the 2,000 faces/s target, and a cached load.

Every domain preset is rendered from scratch (``cache=False``) after a small warm-up; the default (``lab``) is
the headline figure. The cached load writes the lab set to a temporary cache folder once and then times
``make_synthfer`` reading it back (memory-mapped) and touching every image byte. Then every face the default
benchmark needs (its source and targets, train/test/val, each seed) is rendered uncached and the total printed.
Measured in one run.

    python benchmarks/bench_synth.py [--n 4000 --size 112 --domains lab,wild,lowres,profile --repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from fer_lab.data.synth import DOMAINS, make_synthfer

TARGET = 2000.0  # faces/s at 112x112 on a 2-core CPU, uncached


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--domains", default=",".join(DOMAINS))
    p.add_argument("--repeats", type=int, default=2, help="best of this many timed runs per domain")
    p.add_argument("--no-bench-data", dest="bench_data", action="store_false",
                   help="skip rendering every face of the default benchmark")
    a = p.parse_args()
    domains = [d for d in a.domains.split(",") if d]

    print(f"SynthFER render speed, n={a.n}, {a.size}x{a.size}, torch threads={torch.get_num_threads()}, "
          f"target {TARGET:.0f} faces/s (uncached)")
    make_synthfer("lab", n=128, size=a.size, cache=False)  # warm-up: imports, allocator, thread pool
    rates = {}
    for dom in domains:
        best = float("inf")
        for r in range(a.repeats):
            t0 = time.perf_counter()
            make_synthfer(dom, n=a.n, size=a.size, seed=r, cache=False)
            best = min(best, time.perf_counter() - t0)
        rates[dom] = a.n / best
        print(f"  {dom:8s} {rates[dom]:8.0f} faces/s   {rates[dom] / TARGET:5.2f}x target   ({best:.2f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        make_synthfer("lab", n=a.n, size=a.size, cache_dir=tmp)
        write = time.perf_counter() - t0
        t0 = time.perf_counter()
        d = make_synthfer("lab", n=a.n, size=a.size, cache_dir=tmp)
        checksum = int(np.asarray(d.images).sum(dtype=np.uint64))  # read every byte of the memory map
        load = time.perf_counter() - t0
        print(f"  cached   load {load * 1e3:.0f} ms for {a.n} faces ({a.n / load:.0f} faces/s, "
              f"{load / write:.3f}x of render+write {write:.2f} s; checksum {checksum})")

    if a.bench_data:
        # every face the default benchmark renders (smoke): train, test and val splits of its source and targets,
        # one set per seed (a run's data seed is its seed); the notebooks' runs use these same sets
        from fer_lab.bench import BenchConfig

        cfg = BenchConfig(profile="smoke").resolved()
        specs = [s.split(":", 1)[1] for s in (*cfg.source, *cfg.targets)]
        n_faces, t0 = 0, time.perf_counter()
        for seed in cfg.seeds:
            for dom in specs:
                for split, n in (("train", cfg.n_train), ("test", cfg.n_test), ("val", cfg.n_test)):
                    make_synthfer(dom, n=n, size=cfg.image_size, seed=seed, split=split, cache=False)
                    n_faces += n
        total = time.perf_counter() - t0
        print(f"  default bench data: {n_faces} faces ({', '.join(specs)}; train/test/val; seeds "
              f"{', '.join(map(str, cfg.seeds))}; {cfg.image_size} px) rendered uncached in {total:.1f} s "
              f"({n_faces / total:.0f} faces/s; {total / len(cfg.seeds):.1f} s per seed)")

    head = rates.get("lab", next(iter(rates.values())))
    print(f"headline (default domain{' lab' if 'lab' in rates else ''}): {head:.0f} faces/s = "
          f"{head / TARGET:.2f}x the {TARGET:.0f} faces/s target; slowest "
          f"{min(rates, key=rates.get)} {min(rates.values()):.0f} faces/s = {min(rates.values()) / TARGET:.2f}x")


if __name__ == "__main__":
    main()
