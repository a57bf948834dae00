"""Frozen encoders on SynthFER: a linear probe trained on one domain, tested on the others, and the cost per image.

For each frozen encoder (fer_lab.models.frozen specs), the pooled features of every SynthFER domain's train and test
faces are computed once and cached under $FER_LAB_CACHE/bench_encoders/ (keyed by the encoder's weights digest and
the data spec). A logistic-regression probe (standardised features, L2, lbfgs) is trained on a seeded draw of one
domain's train faces and tested on every domain's test split; each figure is the mean over the seeds. Printed: for
each encoder its feature size and cost, the Table-1 layout (trained on each domain, accuracy on its own test split and
the mean over the three unseen domains) and the full train-on-lab row.

    python benchmarks/bench_encoders.py [--n-train 1000 --n-test 500 --size 64 --seeds 3 --encoders SPEC,SPEC,...]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch

from fer_lab.data.spec import load_dataset
from fer_lab.models.frozen import build_frozen_encoder

DOMAINS = ("lab", "wild", "lowres", "profile")
ENCODERS = (
    "backbone:smallcnn",                        # random initialisation: the reference any real encoder must beat
    "pretrain:smoke",                           # fer-lab's SynthFER encoder (identity, landmarks, pose, SimCLR)
    "backbone:efficientnet_lite0",              # ImageNet EfficientNet-Lite0 at the data's size
    "backbone:efficientnet_lite0?size=112",     # the same, faces enlarged to 112 px
    "dlib:face_resnet",                         # dlib's face-recognition ResNet, 128-d descriptor (150 px)
    "dlib:face_resnet?feature=pooled",          # its 256-d pooled map
)


def cache_dir() -> Path:
    root = os.environ.get("FER_LAB_CACHE") or os.path.expanduser("~/.cache/fer-lab")
    return Path(root) / "bench_encoders"


def features(encoder, spec: str, images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, float]:
    """Cached ``encoder(images)``; returns the features and the measured seconds per image (0 if cached)."""
    key = hashlib.sha256(f"{encoder.digest}|{encoder.name}|{spec}".encode()).hexdigest()[:20]
    path = cache_dir() / f"{key}.npz"
    if path.is_file():
        z = np.load(path)
        return z["f"], float(z["seconds"])
    t0 = time.perf_counter()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 255
            out.append(encoder(x).numpy())
    f = np.concatenate(out).astype(np.float32)
    seconds = (time.perf_counter() - t0) / len(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, f=f, seconds=seconds)
    os.replace(tmp, path)
    return f, seconds


def probe(train_x, train_y, tests, seed: int, n_fit: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rows = np.random.default_rng(seed).choice(len(train_x), size=min(n_fit, len(train_x)), replace=False)
    scaler = StandardScaler().fit(train_x[rows])
    clf = LogisticRegression(C=0.5, max_iter=2000, random_state=seed)
    clf.fit(scaler.transform(train_x[rows]), train_y[rows])
    return {d: float((clf.predict(scaler.transform(x)) == y).mean()) for d, (x, y) in tests.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--size", type=int, default=64, help="SynthFER image size (the smoke profile's is 64)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--fit-fraction", type=float, default=0.8, help="share of the train faces each seed draws")
    p.add_argument("--encoders", default=",".join(ENCODERS))
    args = p.parse_args()

    data = {}
    for d in DOMAINS:
        for split, n in (("train", args.n_train), ("test", args.n_test)):
            spec = f"synth:{d}?split={split}&n={n}&size={args.size}"
            data[d, split] = (spec, load_dataset(spec))
    print(f"SynthFER {args.size} px, {args.n_train} train / {args.n_test} test faces per domain, probe on "
          f"{args.fit_fraction:.0%} of the train faces, mean over {args.seeds} seeds, {torch.get_num_threads()} "
          f"thread(s)\n")
    n_fit = int(args.fit_fraction * args.n_train)
    results = {}
    for spec in [s for s in args.encoders.split(",") if s]:
        enc = build_frozen_encoder(spec, progress=False)
        feats, cost = {}, []
        for (d, split), (dspec, arrays) in data.items():
            f, sec = features(enc, dspec, arrays.images)
            feats[d, split] = (f, arrays.labels)
            cost.append(sec)
        per_image = max(cost)
        if per_image == 0:                                 # everything cached: time one batch now
            x = torch.rand(64, 3, args.size, args.size)
            with torch.no_grad():
                enc(x[:8])
                t0 = time.perf_counter()
                enc(x)
            per_image = (time.perf_counter() - t0) / 64
        table = {}
        for src in DOMAINS:
            tests = {d: feats[d, "test"] for d in DOMAINS}
            runs = [probe(*feats[src, "train"], tests, seed, n_fit) for seed in range(args.seeds)]
            table[src] = {d: float(np.mean([r[d] for r in runs])) for d in DOMAINS}
            table[src]["sd unseen"] = float(np.std([np.mean([r[d] for d in DOMAINS if d != src]) for r in runs]))
        results[spec] = (enc.dim, per_image, table)

    head = f"{'encoder':40s} {'dim':>5s} {'ms/img':>7s} | " + " | ".join(f"{d + ' -> own / unseen':>22s}"
                                                                          for d in DOMAINS) + " | mean unseen"
    print("Table-1 layout: trained on each domain; accuracy % on its own test split / mean over the 3 unseen")
    print(head)
    print("-" * len(head))
    for spec, (dim, sec, table) in results.items():
        cells, unseen_all = [], []
        for src in DOMAINS:
            unseen = np.mean([table[src][d] for d in DOMAINS if d != src])
            unseen_all.append(unseen)
            cells.append(f"{100 * table[src][src]:9.1f} / {100 * unseen:4.1f} ±{100 * table[src]['sd unseen']:3.1f}")
        print(f"{spec:40s} {dim:5d} {1000 * sec:7.1f} | " + " | ".join(f"{c:>22s}" for c in cells)
              + f" | {100 * np.mean(unseen_all):6.1f}")
    print("\ntrained on lab, accuracy % per test domain (chance 14.3)")
    print(f"{'encoder':40s} " + " ".join(f"{d:>8s}" for d in DOMAINS) + "  mean unseen")
    for spec, (_, _, table) in results.items():
        row = table["lab"]
        print(f"{spec:40s} " + " ".join(f"{100 * row[d]:8.1f}" for d in DOMAINS)
              + f"  {100 * np.mean([row[d] for d in DOMAINS[1:]]):8.1f}")


if __name__ == "__main__":
    main()
