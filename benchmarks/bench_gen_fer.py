"""gen_fer step time relative to source-only, and the frozen encoder's share of it.

gen_fer runs two networks per step (the frozen encoder under no_grad, the mask network with gradients) where
source-only runs one (its backbone and the global-local heads). Both get the same fixed batch, so only the models
differ; the frozen-encoder forward alone is timed too. Measured in one run; the ratio is the figure to watch.

    python benchmarks/bench_gen_fer.py [--steps 30 --batch-size 32 --image-size 64 --encoder pretrain:smoke]
"""

from __future__ import annotations

import argparse
import time

import torch

from fer_lab.methods import build_method


def _time(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--encoder", default="pretrain:smoke")
    args = p.parse_args()

    g = torch.Generator().manual_seed(0)
    s = args.image_size
    batch = {"images": torch.rand(args.batch_size, 3, s, s, generator=g),
             "landmarks": torch.rand(args.batch_size, 5, 2, generator=g) * s * 0.5 + s * 0.25,
             "labels": torch.randint(0, 7, (args.batch_size,), generator=g)}
    torch.manual_seed(0)
    gen = build_method("gen_fer", {"encoder": args.encoder}).train()
    base = build_method("source_only").train()
    t_gen = _time(lambda: gen.update(batch, None, 0.5), args.steps, args.warmup)
    t_base = _time(lambda: base.update(batch, None, 0.5), args.steps, args.warmup)
    t_enc = _time(lambda: gen.encoder(batch["images"]), args.steps, args.warmup)
    print(f"batch {args.batch_size} at {s} px, {torch.get_num_threads()} thread(s), encoder {args.encoder}")
    print(f"source-only step   {1000 * t_base:7.1f} ms")
    print(f"gen_fer step       {1000 * t_gen:7.1f} ms  ({t_gen / t_base:.2f}x source-only)")
    print(f"frozen encoder fwd {1000 * t_enc:7.1f} ms  ({t_enc / t_gen:.0%} of a gen_fer step)")


if __name__ == "__main__":
    main()
