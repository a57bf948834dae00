"""SynthFER's measured shift: a small CNN trained on one preset and tested on every preset (the data card's table).

A small CNN (4 conv-BN-ReLU-max-pool blocks 32-64-128-128, global average pooling, linear; Adam with a one-cycle
schedule, batch 64, horizontal flips) is trained on ``--n-train`` train faces of each ``--train`` preset at
``--size`` px and tested on ``--n-test`` test faces of every preset (seed 0 data, training seeds as given).
Printed: accuracy and balanced (mean class) accuracy per test preset, and the always-majority share of each.

    python benchmarks/bench_synth_shift.py [--train lab,wild --seeds 0,1 --steps 500 --n-train 4000 --n-test 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from fer_lab.data.synth import DOMAINS, RENDERER_VERSION, make_synthfer
from fer_lab.labels import NUM_CLASSES


def small_cnn() -> nn.Module:
    layers: list[nn.Module] = []
    cin = 3
    for cout in (32, 64, 128, 128):
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, NUM_CLASSES))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def train(x: torch.Tensor, y: torch.Tensor, seed: int, steps: int, batch: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = small_cnn()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=g)
        xb = x[idx]
        flip = torch.rand(batch, generator=g) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = nn.functional.cross_entropy(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    pred = torch.cat([net(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    acc = float((pred == y).float().mean())
    recalls = [float((pred[y == c] == c).float().mean()) for c in range(NUM_CLASSES) if (y == c).any()]
    return acc, float(np.mean(recalls))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", default="lab,wild")
    p.add_argument("--test", default=",".join(DOMAINS))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    a = p.parse_args()
    tests = [d for d in a.test.split(",") if d]
    print(f"SynthFER renderer v{RENDERER_VERSION}: small CNN, {a.steps} steps of batch 64, {a.n_train} train faces, "
          f"{a.n_test} test faces per preset, {a.size} px, torch threads {torch.get_num_threads()}")
    test_sets = {}
    for d in tests:
        data = make_synthfer(d, n=a.n_test, size=a.size, seed=0, split="test")
        y = torch.from_numpy(data.labels.astype(np.int64))
        test_sets[d] = (to_tensor(data.images), y)
        print(f"  {d:8s} majority share {np.bincount(data.labels, minlength=NUM_CLASSES).max() / len(y):.1%}")
    print(f"{'trained on':16s} " + " ".join(f"{d:>16s}" for d in tests) + "   (accuracy / balanced accuracy %)")
    for src in (d for d in a.train.split(",") if d):
        data = make_synthfer(src, n=a.n_train, size=a.size, seed=0, split="train")
        x, y = to_tensor(data.images), torch.from_numpy(data.labels.astype(np.int64))
        for seed in (int(s) for s in a.seeds.split(",")):
            t0 = time.perf_counter()
            net = train(x, y, seed, a.steps)
            cells = [evaluate(net, *test_sets[d]) for d in tests]
            print(f"{src + f' (seed {seed})':16s} " + " ".join(f"{100 * c[0]:7.1f} / {100 * c[1]:5.1f}" for c in cells)
                  + f"   ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
