"""Disentanglement views for pose-aware methods: leakage probes, accuracy by |yaw|, pose swaps, image grids.

The notebook flow (``notebooks/04_pose_aware_ada.ipynb``)::

    codes = code_set(method, data)                         # expression / pose codes, |yaw| bins, predictions
    leakage_table({"after": codes, "before": codes_0})     # pose from the expression code, expression from the pose code
    accuracy_by_yaw(pred, labels, yaw)                     # accuracy per |yaw| bin
    pairs = swap_pairs(subject, yaw)                       # two faces of one person, far apart in yaw
    swap_error(method, data, pairs, truth)                 # G(e_i, p_j) against face i rendered at j's pose
    image_grid([...], row_titles=..., col_titles=...)      # a plotly picture of image rows

Leakage is measured with a **probe**: a logistic regression trained on one half of the faces (stratified, seeded)
to read a factor from a code, scored on the other half, next to the chance rate (the majority class of the test
half). High "pose from the expression code" means the expression code still carries pose; cross-adversarial
learning should bring it towards chance while "expression from the expression code" stays high.

Library code never shows a figure: every ``*_figure`` / :func:`image_grid` returns a plotly figure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from fer_lab.data.loading import FaceTensors, to_device
from fer_lab.evaluate import eval_mode

__all__ = [
    "CodeSet",
    "DEFAULT_YAW_EDGES",
    "accuracy_by_yaw",
    "code_set",
    "concat_code_sets",
    "image_grid",
    "leakage_probe",
    "leakage_table",
    "personalised_tables",
    "pose_swap_truth",
    "pose_colored",
    "swap_error",
    "swap_pairs",
    "yaw_bin_names",
    "yaw_bins_np",
]

#: |yaw| bin edges in degrees (the pose_ada default).
DEFAULT_YAW_EDGES: tuple[float, ...] = (15.0, 30.0, 45.0, 60.0)


def yaw_bins_np(yaw: Any, edges: Sequence[float] = DEFAULT_YAW_EDGES) -> np.ndarray:
    """Bin of ``|yaw|`` per face: bin ``k`` holds ``edges[k-1] <= |yaw| < edges[k]``; NaN yaw -> -1."""
    y = np.abs(np.asarray(yaw, np.float64))
    b = np.searchsorted(np.asarray(edges, np.float64), np.nan_to_num(y), side="right")
    return np.where(np.isnan(y), -1, b).astype(np.int64)


def yaw_bin_names(edges: Sequence[float] = DEFAULT_YAW_EDGES) -> list[str]:
    """``["|yaw| < 15", "15-30", ..., ">= 60"]``."""
    e = [f"{x:g}" for x in edges]
    return [f"|yaw| < {e[0]}"] + [f"{a}-{b}" for a, b in zip(e, e[1:])] + [f">= {e[-1]}"]


@dataclass
class CodeSet:
    """Codes of a set of faces under one model: ``expr [N, de]``, ``pose [N, dp]`` (``None`` for a model
    without a pose code), true ``labels``, ``predictions``, ``yaw`` (degrees) and ``subject`` per face, and the
    row ``indices`` in the dataset."""

    expr: np.ndarray
    pose: np.ndarray | None
    labels: np.ndarray
    predictions: np.ndarray
    yaw: np.ndarray
    subject: np.ndarray
    indices: np.ndarray
    name: str = ""

    def __len__(self) -> int:
        return len(self.labels)


@torch.no_grad()
def code_set(method, data: FaceTensors, expr: str = "expr", pose: str | None = "pose", batch_size: int = 256,
             device: str | torch.device = "cpu", name: str = "") -> CodeSet:
    """Run ``method.embed`` / ``predict`` over ``data`` (unaugmented, eval mode) and keep two of its streams as the
    expression and pose codes (e.g. ``expr="fused", pose=None`` for a method without codes)."""
    e, p, pred = [], [], []
    with eval_mode(method):
        for i in range(0, len(data), batch_size):
            batch = to_device(data.batch(torch.arange(i, min(i + batch_size, len(data)))), device)
            emb = method.embed(batch)
            for key in (expr, pose):
                if key is not None and key not in emb:
                    raise KeyError(f"method.embed has no stream {key!r}; streams: {', '.join(emb)}")
            e.append(emb[expr].float().cpu().numpy())
            if pose is not None:
                p.append(emb[pose].float().cpu().numpy())
            pred.append(method.predict(batch).argmax(1).cpu().numpy())
    return CodeSet(np.concatenate(e), np.concatenate(p) if pose is not None else None, data.labels.numpy().copy(),
                   np.concatenate(pred).astype(np.int64), data.pose[:, 0].numpy().astype(np.float64),
                   data.subject.numpy().copy(), np.arange(len(data)), name)


def leakage_probe(x: Any, y: Any, seed: int = 0, C: float = 1.0) -> dict[str, float]:
    """How well a factor ``y`` can be read from features ``x``: a standardised logistic regression fitted on a
    stratified half (seeded) and scored on the other half. Rows with ``y < 0`` are left out. Returns
    ``{"acc", "chance", "n"}`` (chance: the test half's majority-class rate)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = np.asarray(x, np.float64), np.asarray(y)
    keep = y >= 0
    x, y = x[keep], y[keep]
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"a probe needs at least two classes, got {classes.tolist()}")
    strat = y if counts.min() >= 2 else None
    xa, xb, ya, yb = train_test_split(x, y, test_size=0.5, random_state=seed, stratify=strat)
    if len(np.unique(ya)) < 2:
        raise ValueError("the probe's training half holds one class only")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    clf.fit(xa, ya)
    chance = np.unique(yb, return_counts=True)[1].max() / len(yb)
    return {"acc": float(clf.score(xb, yb)), "chance": float(chance), "n": int(len(y))}


def leakage_table(sets: Mapping[str, CodeSet], edges: Sequence[float] = DEFAULT_YAW_EDGES, seed: int = 0,
                  C: float = 1.0) -> pd.DataFrame:
    """One row per model: probe accuracy of pose (|yaw| bin) and expression from each code, with chance."""
    rows = []
    for name, cs in sets.items():
        bins = yaw_bins_np(cs.yaw, edges)
        row: dict[str, Any] = {"model": name}
        pe, ee = leakage_probe(cs.expr, bins, seed, C), leakage_probe(cs.expr, cs.labels, seed, C)
        row.update({"pose from expression code": pe["acc"], "expression from expression code": ee["acc"]})
        if cs.pose is not None:
            ep, pp = leakage_probe(cs.pose, cs.labels, seed, C), leakage_probe(cs.pose, bins, seed, C)
            row.update({"expression from pose code": ep["acc"], "pose from pose code": pp["acc"]})
        row.update({"pose chance": pe["chance"], "expression chance": ee["chance"]})
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def accuracy_by_yaw(predictions: Any, labels: Any, yaw: Any, edges: Sequence[float] = DEFAULT_YAW_EDGES
                    ) -> pd.DataFrame:
    """Accuracy and face count per |yaw| bin (rows named by :func:`yaw_bin_names`; empty bins show NaN)."""
    pred, lab = np.asarray(predictions), np.asarray(labels)
    bins = yaw_bins_np(yaw, edges)
    names = yaw_bin_names(edges)
    rows = []
    for k, n in enumerate(names):
        m = (bins == k) & (lab >= 0)
        rows.append({"|yaw| bin": n, "n": int(m.sum()),
                     "acc": float((pred[m] == lab[m]).mean()) if m.any() else float("nan")})
    return pd.DataFrame(rows).set_index("|yaw| bin")


def pose_colored(features, yaw: Any, edges: Sequence[float] = DEFAULT_YAW_EDGES):
    """A :class:`fer_lab.analysis.alignment.FeatureSet` whose "domains" are the |yaw| bins of its faces, so that
    ``umap_figure(..., color_by="domain")`` colours by pose (``yaw`` given per row of ``features``)."""
    bins = yaw_bins_np(yaw, edges)
    if len(bins) != len(features):
        raise ValueError(f"{len(bins)} yaw values for {len(features)} faces")
    return replace(features, domains=np.maximum(bins, 0), domain_names=yaw_bin_names(edges))


def swap_pairs(subject: Any, yaw: Any, n_pairs: int = 6, min_gap: float = 30.0, seed: int = 0) -> np.ndarray:
    """Up to ``n_pairs`` pairs ``(i, j)`` of faces of the same person whose yaws differ by at least ``min_gap``
    degrees, as ``int64 [m, 2]`` (one pair per person in turn, people in a seeded order, the widest gap first)."""
    subject, yaw = np.asarray(subject), np.asarray(yaw, np.float64)
    rng = np.random.default_rng(seed)
    people = rng.permutation(np.unique(subject))
    candidates = []
    for who in people:
        rows = np.flatnonzero(subject == who)
        gap = np.abs(yaw[rows][:, None] - yaw[rows][None, :])
        order = np.argsort(-gap, axis=None, kind="stable")
        used: set[int] = set()
        mine = []
        for flat in order:
            a, b = divmod(int(flat), len(rows))
            if gap[a, b] < min_gap:
                break
            if a in used or b in used:
                continue
            used |= {a, b}
            mine.append((rows[a], rows[b]))
        candidates.append(mine)
    out = []
    depth = 0
    while len(out) < n_pairs and any(depth < len(c) for c in candidates):
        out += [c[depth] for c in candidates if depth < len(c)]
        depth += 1
    return np.asarray(out[:n_pairs], np.int64).reshape(-1, 2)


@torch.no_grad()
def swap_error(method, data: FaceTensors, pairs: np.ndarray, truth: np.ndarray,
               device: str | torch.device = "cpu") -> dict[str, Any]:
    """Score pose swaps against the rendered truth.

    For each pair ``(i, j)`` the swap ``G(e_i, p_j)`` should show face ``i`` at face ``j``'s pose; ``truth``
    (``uint8 [m, S, S, 3]``, e.g. from :func:`fer_lab.data.synth.render_at_pose`) is that face. Returns mean
    L1 errors (intensities in [0, 1], at the decoder's resolution) of the swap and, for reference, of the
    unswapped reconstruction ``G(e_i, p_i)`` and of face ``j`` itself against the same truth, plus the images
    (``recon_i``, ``swap``, ``truth``, ``face_i``, ``face_j`` as ``[m, 3, s, s]`` float arrays).
    """
    from fer_lab.models.decoder import image_target

    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    idx = torch.from_numpy(np.concatenate([pairs[:, 0], pairs[:, 1]]))
    m = len(pairs)
    with eval_mode(method):
        batch = to_device(data.batch(idx), device)
        e, p = method.codes(batch)
        recon = method.decoder(e[:m], p[:m]).cpu()
        swap = method.decoder(e[:m], p[m:]).cpu()
    size = recon.shape[-1]
    t = torch.from_numpy(np.asarray(truth)).permute(0, 3, 1, 2).float().div(255.0)
    t = image_target(torch.nn.functional.interpolate(t, size=data.image_size, mode="bilinear", align_corners=False,
                                                     antialias=True) if t.shape[-1] != data.image_size else t, size)
    faces = image_target(batch["images"].cpu(), size)
    err = lambda a: float((a - t).abs().mean())  # noqa: E731
    return {"swap_l1": err(swap), "recon_i_l1": err(recon), "face_j_l1": err(faces[m:]), "face_i_l1": err(faces[:m]),
            "images": {"face_i": faces[:m].numpy(), "face_j": faces[m:].numpy(), "recon_i": recon.numpy(),
                       "swap": swap.numpy(), "truth": t.numpy()}}


def image_grid(columns: Mapping[str, np.ndarray], row_titles: Sequence[str] | None = None, pad: int = 2,
               title: str | None = None, scale: int = 3) -> go.Figure:
    """A grid picture: one column per entry of ``columns`` (``[m, 3, s, s]`` floats in [0, 1], all the same
    size), one row per image, column names on top; returns a plotly figure."""
    arrays = [np.asarray(a, np.float32) for a in columns.values()]
    m, _, s, _ = arrays[0].shape
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"all columns must have the same shape, got {[a.shape for a in arrays]}")
    cols = len(arrays)
    canvas = np.ones((m * (s + pad) + pad, cols * (s + pad) + pad, 3), np.float32)
    for c, a in enumerate(arrays):
        for r in range(m):
            y, x = pad + r * (s + pad), pad + c * (s + pad)
            canvas[y:y + s, x:x + s] = a[r].transpose(1, 2, 0)
    fig = go.Figure(go.Image(z=(canvas.clip(0, 1) * 255).astype(np.uint8)))
    for c, name in enumerate(columns):
        fig.add_annotation(x=pad + c * (s + pad) + s / 2, y=-2, text=name, showarrow=False, yanchor="bottom",
                           font=dict(size=11))
    if row_titles is not None:
        for r, name in enumerate(row_titles):
            fig.add_annotation(x=-2, y=pad + r * (s + pad) + s / 2, text=name, showarrow=False, xanchor="right",
                               font=dict(size=10))
    h, w = canvas.shape[:2]
    fig.update_layout(title=title, width=w * scale + 160, height=h * scale + 90, margin=dict(l=150, r=10, t=70, b=10),
                      xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig


@torch.no_grad()
def personalised_tables(models: Mapping[str, Mapping[Any, Any]], tests: Mapping[Any, FaceTensors],
                        edges: Sequence[float] = DEFAULT_YAW_EDGES, device: str | torch.device = "cpu"
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The personalised protocol's two tables.

    ``models[name][person]`` is the model adapted to ``person`` (the same model may serve several people, e.g.
    source-only or a pooled-target run); ``tests[person]`` that person's test faces. Returns ``(per_subject,
    by_yaw)``: accuracy per method and person with the mean over people, and accuracy per method and |yaw| bin
    over all people's test faces pooled (each face scored by its own person's model), with the face counts.
    """
    from fer_lab.evaluate import predict_all

    acc_rows, yaw_rows = {}, {}
    counts = None
    for name, per_person in models.items():
        accs, preds, labels, yaws = {}, [], [], []
        for person, data in tests.items():
            pred = predict_all(per_person[person], data, device=device)[0].argmax(1).numpy()
            lab = data.labels.numpy()
            accs[f"person {person}"] = float((pred == lab)[lab >= 0].mean())
            preds.append(pred), labels.append(lab), yaws.append(data.pose[:, 0].numpy())
        accs["mean"] = float(np.mean(list(accs.values())))
        acc_rows[name] = accs
        t = accuracy_by_yaw(np.concatenate(preds), np.concatenate(labels), np.concatenate(yaws), edges)
        yaw_rows[name] = t["acc"]
        counts = t["n"]
    by_yaw = pd.DataFrame(yaw_rows).T
    by_yaw.loc["faces"] = counts
    return pd.DataFrame(acc_rows).T, by_yaw


def pose_swap_truth(spec: str, pairs: np.ndarray, pose: Any, size: int, seed: int = 0, split: str = "test",
                    n: int | None = None) -> np.ndarray:
    """For a SynthFER ``spec`` (as a run loads it: ``size``, ``seed``, ``split``, and ``n`` unless the spec pins
    it), face ``i`` of each pair ``(i, j)`` rendered at face ``j``'s pose (``pose``: the set's ``[N, 3]`` poses):
    the truth for ``G(e_i, p_j)``. ``uint8 [m, size, size, 3]``."""
    from fer_lab.data.spec import parse_spec
    from fer_lab.data.synth import render_at_pose

    s = parse_spec(spec)
    if s.name != "synth":
        raise ValueError(f"pose-swap truth needs a SynthFER spec, got {spec!r}")
    params = dict(s.params)
    params.setdefault("n", n)
    params.setdefault("size", size)
    params.setdefault("seed", seed)
    params["split"] = params.get("split", split)
    params.pop("cache", None)
    if params["n"] is None:
        raise ValueError(f"{spec!r} does not pin n: pass the n the run used")
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    pose = np.asarray(pose, np.float64)
    images, _ = render_at_pose(s.arg or "lab", pairs[:, 0], pose[pairs[:, 1]], **params)
    return images


def concat_code_sets(sets: Sequence[CodeSet], name: str = "") -> CodeSet:
    """Stack code sets of one model (e.g. source and target test faces); ``indices`` keep each set's rows."""
    sets = list(sets)
    if not sets:
        raise ValueError("concat_code_sets needs at least one CodeSet")
    if len({s.pose is None for s in sets}) > 1:
        raise ValueError("either every code set has a pose code or none has")
    cat = lambda key: np.concatenate([getattr(s, key) for s in sets])  # noqa: E731
    return CodeSet(cat("expr"), None if sets[0].pose is None else cat("pose"), cat("labels"), cat("predictions"),
                   cat("yaw"), cat("subject"), cat("indices"), name or sets[0].name)
