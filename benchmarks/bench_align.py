"""Face alignment speed: faces/s of MTCNN alignment one-by-one vs batched, at one thread and at all cores.

Workloads, all made from the photograph scikit-image ships (``skimage.data.astronaut()``), jittered per face
(shift, scale, flip) so that no two inputs are equal:

- ``crop48``:  FER2013-like 48 x 48 grey tight face crops, ``mode="mtcnn"`` (detection canvas 96 x 96);
- ``photo512``: 512 x 512 photographs with one face, ``mode="mtcnn"`` (canvas 1024 x 1024);
- ``landmarks``: the 512 x 512 photographs with their five points given (warp only, no detection);
- ``whole48``: the 48 x 48 crops resized whole.

Also prints the warp alone (PIL ``Image.transform`` per face vs one batched ``grid_sample``), and, to justify
``detect_pad``, the worst landmark error of MTCNN on the tight crops with and without the padding.

    python benchmarks/bench_align.py [--n-crops 64] [--n-photos 8] [--threads 1,0] [--repeats 3]

``--threads 0`` means every core (``os.cpu_count()``); set ``OMP_NUM_THREADS`` before starting, as usual.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from _timing import median_seconds
from PIL import Image

try:
    from fer_lab.data import align as A
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from fer_lab.data import align as A

#: Hand-checked five points of skimage.data.astronaut() (see tests/data/test_align.py).
ASTRONAUT_5 = np.array([[203.5, 101.0], [246.0, 103.0], [224.0, 127.0], [202.5, 140.5], [244.5, 141.5]])


def jittered(photo: np.ndarray, n: int, seed: int) -> tuple[list, list, list, list]:
    """``n`` 512-px photos and ``n`` 48-px grey tight crops of their face, each with a random shift, scale and
    flip, and the hand-checked five points carried into every photo and every crop."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(photo)
    photos, photo_pts, crops, crop_pts = [], [], [], []
    for _ in range(n):
        s = rng.uniform(0.85, 1.15)
        dx, dy = rng.uniform(-40, 40, 2)
        m = np.array([[s, 0, (1 - s) * 224 + dx], [0, s, (1 - s) * 120 + dy]])  # scale about the face, shift
        p = A.apply_transform(m, ASTRONAUT_5).astype(np.float64)
        im = np.asarray(img.transform((512, 512), Image.Transform.AFFINE, tuple(A.invert_transform(m).ravel()),
                                      Image.Resampling.BILINEAR))
        if rng.random() < 0.5:
            im = np.ascontiguousarray(im[:, ::-1])
            p = np.stack([512 - p[:, 0], p[:, 1]], 1)[[1, 0, 2, 4, 3]]
        photos.append(im)
        photo_pts.append(p)
        # a FER2013-like crop: a square about 2.2 interocular distances wide, brows to chin
        side = 2.2 * np.hypot(*(p[1] - p[0])) * rng.uniform(0.95, 1.05)
        cx, cy = p[:, 0].mean() + rng.uniform(-3, 3), p[:, 1].mean() + rng.uniform(-3, 3) - 0.05 * side
        x1, y1 = round(cx - side / 2), round(cy - side / 2)
        x2 = x1 + round(side)
        crops.append(np.asarray(Image.fromarray(im).crop((x1, y1, x2, y1 + round(side)))
                                .resize((48, 48), Image.Resampling.BICUBIC).convert("L").convert("RGB")))
        crop_pts.append((p - np.array([x1, y1])) * 48 / (x2 - x1))
    return photos, photo_pts, crops, crop_pts


def rate(fn, n_faces: int, repeats: int) -> float:
    """Median faces/s over ``repeats`` runs (after one warm-up run)."""
    return n_faces / median_seconds(fn, repeats, warmup=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-crops", type=int, default=64)
    ap.add_argument("--n-photos", type=int, default=8)
    ap.add_argument("--threads", default="1,0", help="comma-separated thread counts; 0 = every core")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from skimage import data

    photos, points, crops, crop_points = jittered(data.astronaut(), max(args.n_crops, args.n_photos), args.seed)
    photos, points = photos[:args.n_photos], points[:args.n_photos]
    crops, crop_points = crops[:args.n_crops], crop_points[:args.n_crops]
    aligner = A.FaceAligner(size=112, batch_size=args.batch_size)
    aligner.detector  # load the networks outside the timings

    found_one = sum(f is not None for f in (aligner.align(c) for c in crops))
    found_batch = sum(f is not None for f in aligner.align_batch(crops))
    print(f"face alignment (112 px), torch {torch.__version__}, {os.cpu_count()} cores visible, "
          f"batch size {args.batch_size}, median of {args.repeats}")
    print(f"  faces found in {len(crops)} jittered 48 px crops: {found_one} one-by-one, {found_batch} batched")

    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads or os.cpu_count() or 1)
        nt = torch.get_num_threads()
        print(f"threads {nt}:")
        for name, imgs in (("crop48 mtcnn", crops), ("photo512 mtcnn", photos)):
            one = rate(lambda: [aligner.align(im) for im in imgs], len(imgs), args.repeats)
            bat = rate(lambda: aligner.align_batch(imgs), len(imgs), args.repeats)
            print(f"  {name:16s} one-by-one {one:8.1f} faces/s   batched {bat:8.1f} faces/s   ({bat / one:.2f}x)")
        lm = rate(lambda: aligner.align_batch(photos, landmarks=points), len(photos), args.repeats)
        wh = rate(lambda: aligner.align_batch(crops, mode="whole"), len(crops), args.repeats)
        print(f"  photo512 landmarks (warp only) {lm:8.1f} faces/s   crop48 whole {wh:8.1f} faces/s")

        # the warp alone: PIL per face vs one grid_sample call over the batch (same matrices)
        mats = np.stack([A.similarity_transform(p, A.reference_landmarks(112)) for p in points])
        batch = np.stack(photos)
        pil = rate(lambda: [A.warp_affine(im, m, 112) for im, m in zip(photos, mats)], len(photos), args.repeats)
        tch = rate(lambda: A.warp_affine_batch(batch, mats, 112), len(photos), args.repeats)
        print(f"  warp 512->112: PIL transform {pil:8.1f} faces/s   torch grid_sample (batched) {tch:8.1f} faces/s")

    # why detect_pad: worst landmark error on the tight crops, in interocular distances
    print(f"MTCNN on the {len(crops)} tight 48 px crops: worst point error / interocular distance, median "
          "(90th percentile) over the faces found")
    for pad in (0.0, 0.25, 0.5):
        errs = []
        for f, truth in zip(A.FaceAligner(size=112, detect_pad=pad).align_batch(crops), crop_points):
            if f is not None:
                src = A.apply_transform(A.invert_transform(f.matrix), f.landmarks)
                errs.append(np.hypot(*(src - truth).T).max() / np.hypot(*(truth[1] - truth[0])))
        q = f"{np.median(errs):.3f} ({np.percentile(errs, 90):.3f})" if errs else "n/a"
        print(f"  detect_pad {pad:4.2f}: {q}   faces found {len(errs)} of {len(crops)}")

if __name__ == "__main__":
    main()
