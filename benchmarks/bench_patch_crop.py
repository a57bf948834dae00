"""Landmark-patch crop: one batched RoIAlign call vs the reference per-sample, per-landmark Python loop.

Setting of the CD-FER benchmark: batch 64, a 128-channel 28 x 28 stage-2 map (IR-50 at 112 px), 7 x 7 windows at
5 landmarks. Each repetition is forward + backward (a fixed upstream gradient). Prints the median time of each and
the speed-up measured in this run.

    python benchmarks/bench_patch_crop.py [--batch 64] [--repeats 30] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
from _timing import median_seconds

try:
    from fer_lab.models.global_local import crop_patches, crop_patches_loop
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from fer_lab.models.global_local import crop_patches, crop_patches_loop


def _time(fn, fm, lm, grad, stride, cells, warmup: int, repeats: int, device: torch.device) -> float:
    def step():
        fm.grad = None
        fn(fm, lm, stride, cells).backward(grad)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return median_seconds(step, repeats, warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--cells", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    stride = 4  # 112 px image / 28 cells
    fm = torch.randn(args.batch, args.channels, args.size, args.size, generator=gen).to(device).requires_grad_(True)
    lm = (torch.rand(args.batch, 5, 2, generator=gen) * args.size * stride).to(device)
    grad = torch.randn(args.batch, 5, args.channels, args.cells, args.cells, generator=gen).to(device)

    with torch.no_grad():
        err = (crop_patches(fm, lm, stride, args.cells) - crop_patches_loop(fm, lm, stride, args.cells)).abs().max()
    t_fast = _time(crop_patches, fm, lm, grad, stride, args.cells, args.warmup, args.repeats, device)
    t_loop = _time(crop_patches_loop, fm, lm, grad, stride, args.cells, args.warmup, args.repeats, device)

    print(f"patch crop fwd+bwd: batch {args.batch}, {args.channels}x{args.size}x{args.size} map, "
          f"{args.cells}x{args.cells} patches x 5 landmarks, device {device}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print(f"  roi_align (batched): {t_fast * 1e3:8.2f} ms")
    print(f"  python loop (ref):   {t_loop * 1e3:8.2f} ms")
    print(f"  speed-up:            {t_loop / t_fast:8.1f}x   (max abs difference {err.item():.1e})")


if __name__ == "__main__":
    main()
