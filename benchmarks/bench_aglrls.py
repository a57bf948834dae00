"""AGLRLS stage-2 step time relative to DANN on the same backbone, batch and batches.

One stage-2 AGLRLS step forwards source + weak target + strong target through the extractor (3B images), trains
seven heads and seven CDAN-E discriminators and updates the pseudo-label store; one DANN step forwards 2B images
through the same extractor with one discriminator. Both run on the same pre-cut batches, interleaved in rounds so a
noisy machine slows both alike; the printed ratio is measured in this one run.

    python benchmarks/bench_aglrls.py [--steps 30 --batch-size 32 --image-size 64 --backbone smallcnn]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fer_lab.data.loading import Augment, BatchStream, FaceTensors
from fer_lab.data.spec import load_dataset
from fer_lab.methods import build_method


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per method and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--backbone", default="smallcnn")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    dev = torch.device(a.device)

    n = max(512, a.batch_size * 4)
    src = FaceTensors(load_dataset(f"synth:lab?n={n}&size={a.image_size}", split="train"), a.image_size, 0)
    tgt = FaceTensors(load_dataset(f"synth:wild?n={n}&size={a.image_size}", split="train"), a.image_size, 1)
    s_stream = BatchStream(src, a.batch_size, 0, 0, Augment.weak())
    t_stream = BatchStream(tgt, a.batch_size, 0, 1, Augment.weak(), Augment.strong())
    total = a.warmup + a.steps
    batches = []
    for i in range(total):
        t = t_stream.batch(i)
        t["true_labels"], t["labels"] = t["labels"], torch.full_like(t["labels"], -1)
        batches.append(({k: v.to(dev) for k, v in s_stream.batch(i).items()}, {k: v.to(dev) for k, v in t.items()}))

    torch.manual_seed(0)
    methods = {"dann": build_method("dann", backbone=a.backbone).to(dev),
               "aglrls": build_method("aglrls", {"stage1_fraction": 0.0}, backbone=a.backbone).to(dev)}
    methods["aglrls"].setup_data([len(src)], len(tgt), a.batch_size)
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(a.rounds):
        for name, m in methods.items():
            m.train()
            for i, (s, t) in enumerate(batches):
                if i == a.warmup:
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                m.update(s, t, 0.5)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / a.steps)
    dann, agl = statistics.median(times["dann"]), statistics.median(times["aglrls"])
    print(f"backbone {a.backbone}, batch {a.batch_size} source + {a.batch_size} target, {a.image_size}px, "
          f"{a.steps} timed steps x {a.rounds} rounds, {torch.get_num_threads()} threads, device {a.device}")
    print(f"DANN step:           {1000 * dann:8.1f} ms")
    print(f"AGLRLS stage-2 step: {1000 * agl:8.1f} ms")
    print(f"ratio AGLRLS / DANN: {agl / dann:8.2f}")


if __name__ == "__main__":
    main()
