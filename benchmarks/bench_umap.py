"""UMAP of 5,000 x 512 features with :func:`fer_lab.analysis.alignment.fit_reducer`, with and without PCA.

Features: 7 classes x 2 domains of Gaussian clusters in 512-d (a class offset, a domain shift, isotropic noise), so
the neighbour graph has the structure of real CD-FER features. Each configuration runs in a FRESH interpreter, so
the first call includes numba's JIT compilation (and the ``import umap``); the second call is the same fit again
in that process (compiled code warm). Also timed: placing 500 new samples with ``Reducer.transform`` (first and
second call). Target: a fit well under a minute on a 2-core CPU. The default neighbour search is fer-lab's exact
brute force (``knn="auto"``); ``--pynndescent`` adds rows for UMAP's own search, for comparison.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/bench_umap.py [--n 5000] [--dim 512] [--pca 50]
                                                                         [--pynndescent]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

try:
    import fer_lab  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def features(n: int, dim: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = rng.normal(size=(7, dim)) * 1.5
    shift = rng.normal(size=dim) * 1.0
    y = rng.integers(0, 7, n)
    d = rng.integers(0, 2, n)
    x = classes[y] + d[:, None] * shift + rng.normal(size=(n, dim))
    return np.maximum(x, 0).astype(np.float32)  # ReLU'd like GAP features


def one(n: int, dim: int, pca: int | None, knn: str) -> dict:
    """Run in a fresh process: time the import, two fits and two transforms."""
    out = {}
    t = time.perf_counter()
    from fer_lab.analysis.alignment import fit_reducer
    import umap  # noqa: F401  (its import, numba included, counts against the first call below)

    out["import_s"] = time.perf_counter() - t
    x = features(n, dim)
    new = features(500, dim, seed=1)
    for k in ("first", "second"):
        t = time.perf_counter()
        reducer = fit_reducer(x, pca_dim=pca, seed=0, knn=knn)
        out[f"fit_{k}_s"] = time.perf_counter() - t
    for k in ("first", "second"):
        t = time.perf_counter()
        reducer.transform(new)
        out[f"transform_{k}_s"] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--pca", type=int, default=50, help="PCA dimension for the 'with PCA' run")
    ap.add_argument("--pynndescent", action="store_true",
                    help="also time UMAP's own neighbour search (knn='umap': pynndescent above 4096 samples)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: '<pca dim or none>,<knn>'
    args = ap.parse_args()
    if args.one is not None:
        pca, knn = args.one.split(",")
        print(json.dumps(one(args.n, args.dim, None if pca == "none" else int(pca), knn)))
        return
    configs = [(f"PCA {args.pca} + UMAP", f"{args.pca},auto"), ("UMAP on raw features", "none,auto")]
    if args.pynndescent:
        configs += [(f"PCA {args.pca}, pynndescent", f"{args.pca},umap"), ("raw, pynndescent", "none,umap")]
    rows = []
    for label, spec in configs:
        res = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--dim", str(args.dim), "--one", spec],
                             capture_output=True, text=True, check=True)
        rows.append((label, json.loads(res.stdout.strip().splitlines()[-1])))
    print(f"UMAP of {args.n} x {args.dim} features (fresh process per row; first call includes numba JIT)")
    print(f"{'configuration':<26}{'import':>8}{'fit #1':>9}{'fit #2':>9}{'transform #1':>14}{'transform #2':>14}")
    for label, r in rows:
        print(f"{label:<26}{r['import_s']:>7.1f}s{r['fit_first_s']:>8.1f}s{r['fit_second_s']:>8.1f}s"
              f"{r['transform_first_s']:>13.1f}s{r['transform_second_s']:>13.1f}s")
    default = [r for (label, r), (_, spec) in zip(rows, configs) if spec.endswith("auto")]
    worst = max(r["import_s"] + r["fit_first_s"] for r in default)
    print(f"slowest cold fit with the defaults (import + first fit): {worst:.1f}s (target: well under 60 s)")


if __name__ == "__main__":
    main()
