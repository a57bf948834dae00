"""Known-answer check of the adaptation code: digits -> MNIST-M-style digits (``fer_lab/data/digits.py``).

The DANN paper's classic shift, built from data bundled with scikit-learn and scikit-image. fer-lab's own
``source_only``, ``dann``, ``cdan`` and ``iwdan`` run through the same trainer as every CD-FER experiment (global
stream, 32 px, no augmentation, from scratch), next to a minimal reference DANN written here from the paper (two conv
layers, its own gradient reversal), on the same arrays and seeds. Every run is a runner job in its own
1-thread process (two at once with ``--workers 2``); the table gives each seed, the mean with its 95 % t-interval and
the paired gain of each method over its own source-only.

The DANN paper reports 52.25 % (source only) vs 76.66 % (DANN) on MNIST -> MNIST-M. If fer-lab's DANN or CDAN-E
gains clearly less than the minimal reference here, or nothing over source-only, the adaptation code is broken.

Three kinds of fer-lab rows, all through the same trainer: ``, paper net`` puts the DANN paper's own digit network
(``dann_digits``: two conv blocks, no BatchNorm) under fer-lab's global stream (4 x 4 grid), so it checks the
adaptation code itself against the reference; the plain rows use smallcnn, fer-lab's CPU face backbone, with the
global stream on a 2 x 2 grid (its whole last map at 32 px); ``, pooled`` rows pool smallcnn's map to one cell as
the CD-FER benchmark's global head does (``global_grid=1``, fer-lab's default); ``, no BatchNorm`` rows drop
smallcnn's BatchNorm (``smallcnn?batch_norm=false``). The adversarial rows use the paper's digit domain classifier
(one hidden layer of 100 units, no dropout).

    python benchmarks/bench_digits.py [--seeds 0,1,2] [--steps 1500] [--workers 2] [--out reports/bench_digits]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

SOURCE, TARGET = "digits:mnist", "digits:mnistm"
FER_LAB_METHODS = ("source_only", "dann", "cdan", "iwdan")
GRID = 2            # the global stream keeps smallcnn's 2 x 2 map at 32 px (GlobalHead's grid)
POOLED = ("source_only", "dann")   # also run with the benchmark's global average pooling (grid 1): the contrast
#: ", paper net" rows: the DANN paper's own digit network as fer-lab's backbone (``dann_digits``), its 8 x 8 map at
#: 32 px pooled to a 4 x 4 grid (1,024-d; the paper flattens 5 x 5 x 48 = 1,200), through the same trainer
PAPER_NET = {"backbone": "dann_digits", "global_grid": 4}
#: the DANN paper's domain classifier for digits: one hidden layer of 100 units, no dropout (fer-lab's default,
#: CDAN's two layers of 1,024 with dropout 0.5, is sized for 2,048-d ResNet features)
PAPER_DISC = {"disc_layers": 1, "disc_hidden": 100, "disc_dropout": 0.0}


def fer_lab_run(method: str, seed: int, steps: int, out_dir: str, global_grid: int = GRID,
                backbone: str = "smallcnn", n_train: int = 2000, n_test: int = 1000) -> dict[str, float]:
    from fer_lab.config import TrainConfig
    from fer_lab.train import train

    r = train(TrainConfig(method=method, source=(SOURCE,), target=TARGET, backbone=backbone, image_size=32,
                          steps=steps, batch_size=64, n_train=n_train, n_test=n_test, eval_every=steps,
                          checkpoint_every=max(1, steps // 6), augment=False, seed=seed, out_dir=out_dir, resume=True,
                          hparams={"lr": 0.01, "feature": "global", "global_grid": global_grid,
                                   **(PAPER_DISC if method != "source_only" else {})}))
    return {"acc": r.final["target"]["acc"], "seconds": r.seconds}


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def reference_run(adapt: bool, seed: int, steps: int, out_dir: str, n_train: int = 2000, n_test: int = 1000
                  ) -> dict[str, float]:
    """The DANN paper's small-digit recipe, minimal: conv5-32, pool, conv5-48, pool, fc 100-100-7; a 100-1 domain
    head behind gradient reversal with the coefficient 2 / (1 + exp(-10 p)) - 1; SGD 0.01 momentum 0.9 with the
    lr_p = lr_0 (1 + 10 p)^-0.75 annealing."""
    import time

    from fer_lab.data.spec import load_dataset

    def tensors(spec, split, n):
        a = load_dataset(spec, split=split, defaults={"n": n, "size": 32, "seed": seed})
        return torch.from_numpy(a.images).permute(0, 3, 1, 2).float() / 255.0, torch.from_numpy(a.labels)

    xs, ys = tensors(SOURCE, "train", n_train)
    xt, _ = tensors(TARGET, "train", n_train)
    xe, ye = tensors(TARGET, "test", n_test)
    torch.manual_seed(seed)
    features = nn.Sequential(nn.Conv2d(3, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 48, 5), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten())
    dim = 48 * 5 * 5
    classifier = nn.Sequential(nn.Linear(dim, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 7))
    domain = nn.Sequential(nn.Linear(dim, 100), nn.ReLU(), nn.Linear(100, 1))
    params = [*features.parameters(), *classifier.parameters(), *domain.parameters()]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        p = step / steps
        for group in opt.param_groups:
            group["lr"] = 0.01 * (1 + 10 * p) ** -0.75
        i, j = torch.randint(len(xs), (64,), generator=g), torch.randint(len(xt), (64,), generator=g)
        fs = features(xs[i])
        loss = nn.functional.cross_entropy(classifier(fs), ys[i])
        if adapt:
            ft = features(xt[j])
            coeff = float(2 / (1 + np.exp(-10 * p)) - 1)
            d = domain(_Reverse.apply(torch.cat([fs, ft]), coeff)).squeeze(1)
            loss = loss + nn.functional.binary_cross_entropy_with_logits(
                d, torch.cat([torch.ones(64), torch.zeros(64)]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float((classifier(features(xe)).argmax(1) == ye).float().mean())
    return {"acc": acc, "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--methods", default=",".join(FER_LAB_METHODS))
    p.add_argument("--out", default="reports/bench_digits")
    p.add_argument("--no-pooled", action="store_true",
                   help="skip the smallcnn contrast rows (global average pooling, no BatchNorm)")
    a = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fer_lab.bench import paired_difference, t_interval
    from fer_lab.runner import Job, run_jobs

    seeds = [int(s) for s in a.seeds.split(",")]
    out = Path(a.out)
    rows = {"reference source-only": ("bench_digits:reference_run", {"adapt": False}),   # cheap: first
            "reference DANN": ("bench_digits:reference_run", {"adapt": True})}
    methods = a.methods.split(",")
    # label suffix -> (network arguments, methods); each suffix's rows are paired with its own source-only
    variants = {"": ({}, methods), ", paper net": (PAPER_NET, methods)}
    if not a.no_pooled:
        variants.update({", pooled": ({"global_grid": 1}, POOLED),
                         ", no BatchNorm": ({"backbone": "smallcnn?batch_norm=false"}, POOLED)})
    rows.update({f"fer-lab {m}{suffix}": ("bench_digits:fer_lab_run", {"method": m, **net})
                 for suffix, (net, ms) in variants.items() for m in ms})
    def key(label: str, seed: int) -> str:
        return f"{label.replace(' ', '_')}__s{seed}"

    jobs = [Job(key(label, s), fn, {**kw, "seed": s, "steps": a.steps, "out_dir": str(out / "runs" / key(label, s))})
            for label, (fn, kw) in rows.items() for s in seeds]
    res = run_jobs(jobs, out / "jobs", workers=a.workers, threads=1)
    acc = {label: [res[key(label, s)].result["acc"] for s in seeds] for label in rows}
    base = {"reference source-only": acc["reference source-only"], "reference DANN": acc["reference source-only"]}
    base.update({f"fer-lab {m}{suffix}": acc[f"fer-lab source_only{suffix}"]
                 for suffix, (_, ms) in variants.items() for m in ms})
    rows = dict(sorted(rows.items(), key=lambda kv: kv[0].startswith("reference")))   # fer-lab's rows first
    lines = [f"digits -> MNIST-M-style digits, {a.steps} steps, seeds {a.seeds}, 1 thread per run; target test "
             "accuracy % (DANN paper on MNIST -> MNIST-M: source only 52.25, DANN 76.66). fer-lab rows: smallcnn, "
             f"global stream on a {GRID} x {GRID} grid; ', pooled': the benchmark's global average pooling; "
             "', paper net': the DANN paper's digit network as the backbone, 4 x 4 grid; ', no BatchNorm': smallcnn "
             "without BatchNorm, 2 x 2 grid; adversarial rows use the "
             "paper's digit domain classifier (one hidden layer of 100)", "",
             "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean [95 % CI] | gain vs its source-only "
             "[95 % CI] (wins) |", "|---|" + "---|" * (len(seeds) + 2)]
    for label in rows:
        m, lo, hi = t_interval(acc[label])
        d = paired_difference(acc[label], base[label])
        gain = "" if acc[label] is base[label] else (f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, "
                                                     f"{100 * d['hi']:+.1f}] ({d['wins']}/{d['n']})")
        lines.append(f"| {label} | " + " | ".join(f"{100 * v:.1f}" for v in acc[label])
                     + f" | {100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | {gain} |")
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "digits.md").write_text(text + "\n")
    (out / "digits.json").write_text(json.dumps({"seeds": seeds, "steps": a.steps, "acc": acc}, indent=1))


if __name__ == "__main__":
    main()
