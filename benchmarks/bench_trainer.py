"""Trainer overhead: images/s of the trainer's source-only loop vs a bare forward+backward loop.

Both train the same model (the source-only method: backbone, global-local extractor and classifier) with the
same optimiser and batch size. The bare loop reuses batches cut in advance (no data work at all); the trainer
cuts, augments and logs its own batches, sets the schedule and checkpoints. Measured in one run; target >= 0.9x.

    python benchmarks/bench_trainer.py [--steps 60 --batch-size 32 --image-size 64 --backbone smallcnn]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from fer_lab.config import TrainConfig
from fer_lab.methods import build_method
from fer_lab.train import Trainer


class _Clock:
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1, self.steps = warmup, None, None, 0

    def on_step(self, trainer, step, logs) -> None:
        if step == self.warmup:
            self.t0 = time.perf_counter()
        elif step > self.warmup:
            self.t1, self.steps = time.perf_counter(), step - self.warmup


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--backbone", default="smallcnn")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(method="source_only", target=None, backbone=a.backbone, steps=a.steps,
                          batch_size=a.batch_size, image_size=a.image_size, n_train=max(1000, a.batch_size * 4),
                          n_test=64, eval_every=10 ** 9, checkpoint_every=10 ** 9, log_every=10, out_dir=out,
                          progress=False, device=a.device)
        clock = _Clock(a.warmup)
        trainer = Trainer(cfg, callbacks=[clock])
        trainer.fit()
        trainer_ips = clock.steps * a.batch_size / (clock.t1 - clock.t0)

        # the bare loop: same model and optimiser, the same batches cut in advance
        batches = [trainer.batches(s)[0] for s in range(a.steps)]
        torch.manual_seed(0)
        model = build_method("source_only", backbone=a.backbone).to(trainer.device)
        opt = model.optimizer
        for s, b in enumerate(batches):
            if s == a.warmup:
                t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model.predict(b), b["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        bare_ips = (a.steps - a.warmup) * a.batch_size / (time.perf_counter() - t0)

    print(f"backbone {a.backbone}, batch {a.batch_size}, {a.image_size}px, {a.steps - a.warmup} timed steps, "
          f"{torch.get_num_threads()} threads, device {a.device}")
    print(f"bare forward+backward loop: {bare_ips:8.1f} images/s")
    print(f"fer-lab trainer:            {trainer_ips:8.1f} images/s")
    print(f"ratio trainer / bare:       {trainer_ips / bare_ips:8.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
