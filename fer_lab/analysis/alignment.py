"""Feature alignment between domains: features, UMAP embeddings, figures and numbers.

The usual notebook flow::

    src = extract_features(method, source_test, domain_name="lab")
    tgt = extract_features(method, target_test, domain_name="wild")
    both = concat_features([src, tgt])                    # one FeatureSet, domain names ["lab", "wild"]
    reducer = fit_reducer(both, stream="fused")           # optional PCA, then UMAP (seeded)
    umap_figure(reducer.embedding, color_by="class")      # interactive plotly scatter with hover
    alignment_report(src, tgt)                            # PAD, domain-classifier accuracy, MMD^2, class-wise MMD^2
    before_after_figure(both_source_only, both_dann)      # two models side by side, same axes

Numbers (all on the raw stream features, never on the 2-D embedding):

* :func:`proxy_a_distance` ``PAD = 2 (1 - 2 err)`` of a logistic-regression domain classifier trained on one half
  of a balanced sample and tested on the other half (Ben-David et al. 2007; Ganin et al. 2016). 0 = the domains are
  indistinguishable, 2 = perfectly separable. ``err`` is capped at 0.5, so PAD is in ``[0, 2]``.
* :func:`mmd`: the unbiased estimate of the squared maximum mean discrepancy (Gretton et al. 2012), RBF kernel with
  the median heuristic by default (optionally several bandwidths averaged), or linear; the kernels and the
  estimate are :mod:`fer_lab.losses`' (the same code the training losses use).
* :func:`classwise_mmd`: MMD^2 between the source and target samples of each class (true labels where known).

Library code never shows or saves a figure: every ``*_figure`` returns a :class:`plotly.graph_objects.Figure`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from fer_lab import losses
from fer_lab.data.loading import FaceTensors, to_device
from fer_lab.evaluate import eval_mode
from fer_lab.labels import EXPRESSIONS

__all__ = [
    "EXACT_KNN_MAX",
    "Embedding",
    "ExactKNNIndex",
    "FeatureSet",
    "Reducer",
    "alignment_report",
    "before_after_figure",
    "classwise_mmd",
    "concat_features",
    "domain_classifier_accuracy",
    "extract_features",
    "fit_reducer",
    "mmd",
    "procrustes_align",
    "proxy_a_distance",
    "report_frame",
    "umap_figure",
]

#: One fixed colour per expression (same colour for a class in every figure of the workbench).
CLASS_COLORS: tuple[str, ...] = ("#1f77b4", "#9467bd", "#8c564b", "#2ca02c", "#17becf", "#d62728", "#7f7f7f")
#: Domain colours, in domain order (source first).
DOMAIN_COLORS: tuple[str, ...] = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
DOMAIN_SYMBOLS: tuple[str, ...] = ("circle", "x", "diamond", "square", "triangle-up", "cross", "star")
CORRECT_COLORS = {"correct": "#2ca02c", "incorrect": "#d62728", "unknown": "#aaaaaa"}


# ---------------------------------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class FeatureSet:
    """Features of a set of samples under one model, with what is needed to colour and hover them.

    Attributes:
        features: stream name -> ``float32 [N, d]``.
        labels: ``int64 [N]`` true expression index (-1 unknown).
        predictions: ``int64 [N]`` predicted class (argmax of ``method.predict``).
        probs: ``float32 [N, C]`` softmax of the logits.
        domains: ``int64 [N]`` index into :attr:`domain_names`.
        indices: ``int64 [N]`` row of each sample in its dataset.
        domain_names: name of each domain id.
        name: free label of the model / run (used in figure titles).
    """

    features: dict[str, np.ndarray]
    labels: np.ndarray
    predictions: np.ndarray
    probs: np.ndarray
    domains: np.ndarray
    indices: np.ndarray
    domain_names: list[str] = field(default_factory=list)
    name: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(self.features)

    def stream(self, name: str) -> np.ndarray:
        if name not in self.features:
            raise KeyError(f"no stream {name!r} in this FeatureSet; streams: {', '.join(self.features)}")
        return self.features[name]

    @property
    def correct(self) -> np.ndarray:
        """``bool [N]``: prediction equals the label (False where the label is unknown)."""
        return (self.predictions == self.labels) & (self.labels >= 0)

    @property
    def domain_labels(self) -> np.ndarray:
        """Domain name of every sample."""
        names = np.asarray(self.domain_names, dtype=object)
        return names[self.domains] if len(names) else np.full(len(self), "", dtype=object)

    def subset(self, rows: np.ndarray | Sequence[int]) -> "FeatureSet":
        """Rows selected by a boolean mask or integer positions (domain names unchanged)."""
        rows = np.asarray(rows)
        return replace(self, features={k: v[rows] for k, v in self.features.items()}, labels=self.labels[rows],
                       predictions=self.predictions[rows], probs=self.probs[rows], domains=self.domains[rows],
                       indices=self.indices[rows], domain_names=list(self.domain_names))

    def domain(self, which: int | str) -> "FeatureSet":
        """The samples of one domain (by id or name)."""
        d = self.domain_names.index(which) if isinstance(which, str) else int(which)
        return self.subset(self.domains == d)


@torch.no_grad()
def extract_features(method, data: FaceTensors, streams: Sequence[str] | None = None, batch_size: int = 256,
                     device: str | torch.device = "cpu", max_samples: int | None = None, seed: int = 0,
                     domain_name: str | None = None, name: str = "") -> FeatureSet:
    """Run ``method.embed`` and ``method.predict`` over (a seeded subset of) ``data``, unaugmented.

    The method is put in eval mode under ``torch.no_grad`` and its train/eval mode is restored afterwards.

    Args:
        method: a :class:`fer_lab.methods.Method` (anything with ``embed`` and ``predict``).
        data: the samples.
        streams: streams to keep (default: every stream ``embed`` returns).
        max_samples: keep a random subset of this many samples (drawn with ``seed``, kept in dataset order).
        domain_name: the name of this set's single domain (default ``data.name``).
        name: label of the model, for figure titles.
    """
    n = len(data)
    if max_samples is not None and max_samples < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=int(max_samples), replace=False))
    else:
        rows = np.arange(n)
    feats: dict[str, list[np.ndarray]] = {}
    logits: list[torch.Tensor] = []
    with eval_mode(method):
        for i in range(0, len(rows), batch_size):
            batch = to_device(data.batch(torch.from_numpy(rows[i:i + batch_size])), device)
            emb = method.embed(batch)
            keep = list(streams) if streams is not None else list(emb)
            for s in keep:
                if s not in emb:
                    raise KeyError(f"method.embed has no stream {s!r}; streams: {', '.join(emb)}")
                feats.setdefault(s, []).append(emb[s].detach().float().reshape(len(batch["labels"]), -1).cpu().numpy())
            logits.append(method.predict(batch).detach().float().cpu())
    lg = torch.cat(logits) if logits else torch.zeros(0, len(EXPRESSIONS))
    return FeatureSet(
        features={k: np.concatenate(v).astype(np.float32, copy=False) for k, v in feats.items()},
        labels=data.labels[torch.from_numpy(rows)].numpy().astype(np.int64),
        predictions=lg.argmax(1).numpy().astype(np.int64),
        probs=torch.softmax(lg, 1).numpy().astype(np.float32),
        domains=np.zeros(len(rows), dtype=np.int64),
        indices=rows.astype(np.int64),
        domain_names=[domain_name if domain_name is not None else data.name],
        name=name,
    )


def concat_features(sets: Sequence[FeatureSet] | Mapping[str, FeatureSet],
                    domain_names: Sequence[str] | None = None, name: str | None = None) -> FeatureSet:
    """Stack FeatureSets (e.g. source and target of one model) into one, renumbering the domains.

    The domains of the result are the domains of the inputs in order (a set with several domains keeps them all).
    ``domain_names`` (or the keys of a mapping) rename them: one name per input set, each of which must then hold a
    single domain. Only streams present in every set are kept.
    """
    if isinstance(sets, Mapping):
        if domain_names is not None:
            raise ValueError("give domain names either as the mapping's keys or as domain_names, not both")
        domain_names, sets = list(sets.keys()), list(sets.values())
    sets = list(sets)
    if not sets:
        raise ValueError("concat_features needs at least one FeatureSet")
    if domain_names is not None:
        if len(domain_names) != len(sets):
            raise ValueError(f"{len(domain_names)} domain names for {len(sets)} feature sets")
        multi = [i for i, s in enumerate(sets) if len(s.domain_names) > 1]
        if multi:
            raise ValueError(f"feature set(s) {multi} hold several domains; they cannot take a single new name")
    streams = [s for s in sets[0].features if all(s in fs.features for fs in sets[1:])]
    names: list[str] = []
    domains = []
    for i, fs in enumerate(sets):
        domains.append(fs.domains + len(names))
        names += [str(domain_names[i])] if domain_names is not None else list(fs.domain_names)
    return FeatureSet(
        features={s: np.concatenate([fs.features[s] for fs in sets]) for s in streams},
        labels=np.concatenate([fs.labels for fs in sets]),
        predictions=np.concatenate([fs.predictions for fs in sets]),
        probs=np.concatenate([fs.probs for fs in sets]),
        domains=np.concatenate(domains),
        indices=np.concatenate([fs.indices for fs in sets]),
        domain_names=names,
        name=name if name is not None else sets[0].name,
    )


def _as_array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x.reshape(len(x), -1) if x.ndim != 2 else x


# ---------------------------------------------------------------------------------------------------------------------
# dimension reduction
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Embedding:
    """2-D coordinates of a set of samples, with the FeatureSet they come from (for colours and hover)."""

    coords: np.ndarray
    meta: FeatureSet | None = None
    stream: str = ""

    def __len__(self) -> int:
        return len(self.coords)


class Reducer:
    """A fitted optional PCA + UMAP; :meth:`transform` embeds other samples of the SAME feature space.

    ``transform`` is only meaningful for features of the model whose features were fitted (e.g. fit on source and
    target test samples, then place extra samples); two models' features live in different spaces, see
    :func:`before_after_figure`.
    """

    def __init__(self, umap_model, stream: str, mean: np.ndarray | None, components: np.ndarray | None,
                 embedding: Embedding) -> None:
        self.umap = umap_model
        self.stream = stream
        self.mean = mean
        self.components = components
        self.embedding = embedding

    def preprocess(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.components is None:
            return x
        return (x - self.mean) @ self.components.T

    def transform(self, other: FeatureSet | np.ndarray | torch.Tensor) -> Embedding:
        """Embed other samples with the fitted PCA and UMAP (UMAP's out-of-sample transform, seeded)."""
        meta = other if isinstance(other, FeatureSet) else None
        x = other.stream(self.stream) if meta is not None else _as_array(other)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            coords = self.umap.transform(self.preprocess(x))
        return Embedding(np.asarray(coords, dtype=np.float64), meta, self.stream)


def _pca(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top ``dim`` principal axes ``[dim, d]`` (SVD, signs fixed so the result is deterministic)."""
    mean = x.mean(0, dtype=np.float64)
    _, _, vt = np.linalg.svd(x.astype(np.float64) - mean, full_matrices=False)
    vt = vt[:dim]
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
    vt *= np.where(signs == 0, 1.0, signs)[:, None]
    return mean.astype(np.float32), vt.astype(np.float32)


class ExactKNNIndex:
    """Brute-force k-nearest-neighbour search (euclidean, or cosine via unit-normalised rows), blockwise in numpy.

    Used instead of pynndescent for data sets of up to :data:`EXACT_KNN_MAX` samples: exact, deterministic, and
    free of pynndescent's numba compilation (about 30 s on a 2-core CPU for a first fit above 4096 samples, and as
    much again for the first ``transform``). It provides what ``umap.UMAP.transform`` asks of a search index
    (``query(X, k, epsilon)`` and ``_angular_trees``).
    """

    _angular_trees = False

    def __init__(self, data: np.ndarray, metric: str = "euclidean", block_elements: int = 8_000_000) -> None:
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"exact k-NN supports 'euclidean' and 'cosine', not {metric!r}")
        self.metric = metric
        self.block_elements = int(block_elements)
        self.data = self._prepare(np.asarray(data, dtype=np.float64))
        self.sq_norms = (self.data ** 2).sum(1)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    def _search(self, x: np.ndarray, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.data)
        k = min(k, n)
        rows = max(1, self.block_elements // max(n, 1))
        idx = np.empty((len(x), k), dtype=np.int32)
        dist = np.empty((len(x), k), dtype=np.float32)
        for i in range(0, len(x), rows):
            q = x[i:i + rows]
            d2 = (q ** 2).sum(1)[:, None] + self.sq_norms[None, :] - 2.0 * q @ self.data.T
            np.maximum(d2, 0.0, out=d2)
            if exclude_self:  # the point itself first, at distance exactly 0 (as UMAP's own k-NN)
                d2[np.arange(len(q)), np.arange(i, i + len(q))] = -1.0
            part = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(q), 1))
            pd2 = np.take_along_axis(d2, part, 1)
            order = np.argsort(pd2, axis=1, kind="stable")
            idx[i:i + rows] = np.take_along_axis(part, order, 1)
            pd2 = np.maximum(np.take_along_axis(pd2, order, 1), 0.0)
            dist[i:i + rows] = np.sqrt(pd2) if self.metric == "euclidean" else pd2 / 2.0  # cosine: 1 - cos
        return idx, dist

    def neighbor_graph(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of every indexed point (itself first)."""
        return self._search(self.data, k, exclude_self=True)

    def query(self, x: np.ndarray, k: int = 15, epsilon: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """k nearest indexed points of each row of ``x`` (``epsilon`` ignored: the search is exact)."""
        return self._search(self._prepare(np.asarray(x, dtype=np.float64)), k, exclude_self=False)


#: Largest fit set for which ``knn="auto"`` uses :class:`ExactKNNIndex` (O(n^2) distances, blockwise).
EXACT_KNN_MAX = 50_000


def fit_reducer(features: FeatureSet | np.ndarray | torch.Tensor, stream: str = "fused", n_neighbors: int = 15,
                min_dist: float = 0.1, pca_dim: int | None = 50, seed: int = 0, metric: str = "euclidean",
                knn: str = "auto", **umap_kwargs: Any) -> Reducer:
    """Fit optional PCA (to ``pca_dim`` dims; ``None`` disables; skipped when the features are already that small)
    followed by ``umap.UMAP(random_state=seed)`` on one stream of ``features``.

    With a seed, UMAP runs single-threaded and two fits on the same input give identical embeddings. The fitted
    data's embedding is :attr:`Reducer.embedding`; :meth:`Reducer.transform` places other samples of the same model
    in the same 2-D space.

    Args:
        knn: neighbour search. ``"exact"``: brute force (:class:`ExactKNNIndex`; euclidean or cosine), passed to
            UMAP as ``precomputed_knn`` with the index used again by ``transform``; ``"umap"``: UMAP's own (exact
            below 4096 samples, pynndescent above, whose numba compilation costs ~30 s per process);
            ``"auto"``: exact for euclidean / cosine and at most :data:`EXACT_KNN_MAX` samples, else UMAP's own.
        umap_kwargs: more ``umap.UMAP`` arguments (``n_epochs``, ``spread``, ...).
    """
    import umap  # local: importing umap costs ~2 s (numba)

    if knn not in ("auto", "exact", "umap"):
        raise ValueError(f"knn must be 'auto', 'exact' or 'umap', got {knn!r}")
    meta = features if isinstance(features, FeatureSet) else None
    x = features.stream(stream) if meta is not None else _as_array(features)
    x = np.asarray(x, dtype=np.float32)
    n, d = x.shape
    if n < 3:
        raise ValueError(f"UMAP needs at least 3 samples, got {n}")
    mean = comps = None
    if pca_dim is not None and pca_dim < d:
        mean, comps = _pca(x, min(int(pca_dim), n))
        x = (x - mean) @ comps.T
    k = min(int(n_neighbors), n - 1)
    exact = knn == "exact" or (knn == "auto" and metric in ("euclidean", "cosine") and n <= EXACT_KNN_MAX)
    if exact:
        index = ExactKNNIndex(x, metric)
        umap_kwargs["precomputed_knn"] = (*index.neighbor_graph(k), index)
    model = umap.UMAP(n_neighbors=k, min_dist=min_dist, metric=metric, random_state=seed, n_jobs=1, **umap_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coords = model.fit_transform(x)
    return Reducer(model, stream, mean, comps, Embedding(np.asarray(coords, dtype=np.float64), meta, stream))


def procrustes_align(moving: np.ndarray, fixed: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Similarity transform (rotation or reflection, uniform scale, translation) taking ``moving`` onto ``fixed``
    in the least-squares sense (matched rows).

    Returns ``(rotation [2,2], scale, moving_mean, fixed_mean)``; apply with
    ``scale * (y - moving_mean) @ rotation + fixed_mean``.
    """
    mu_m, mu_f = moving.mean(0), fixed.mean(0)
    a, b = moving - mu_m, fixed - mu_f
    u, s, vt = np.linalg.svd(a.T @ b)
    rot = u @ vt
    denom = float((a ** 2).sum())
    scale = float(s.sum() / denom) if denom > 0 else 1.0
    return rot, scale, mu_m, mu_f


# ---------------------------------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------------------------------
def _balanced_halves(f_s: np.ndarray, f_t: np.ndarray, seed: int, max_samples: int | None):
    rng = np.random.default_rng(seed)
    n = min(len(f_s), len(f_t))
    if max_samples is not None:
        n = min(n, int(max_samples))
    if n < 2:
        raise ValueError(f"each domain needs at least 2 samples, got {len(f_s)} and {len(f_t)}")
    s = f_s[rng.choice(len(f_s), n, replace=False)]
    t = f_t[rng.choice(len(f_t), n, replace=False)]
    h = n // 2  # stratified halves: each domain split in two, so both halves stay balanced
    x_tr = np.concatenate([s[:h], t[:h]])
    y_tr = np.r_[np.zeros(h), np.ones(h)]
    x_te = np.concatenate([s[h:], t[h:]])
    y_te = np.r_[np.zeros(n - h), np.ones(n - h)]
    return x_tr, y_tr, x_te, y_te


def domain_classifier_accuracy(f_s: Any, f_t: Any, seed: int = 0, C: float = 1.0,
                               max_samples: int | None = 5000) -> float:
    """Held-out accuracy of an L2 logistic-regression domain classifier (source vs target).

    A balanced sample (``min(n_s, n_t, max_samples)`` per domain, seeded) is split into two stratified halves;
    the classifier is trained on the first (features standardised with its statistics, lbfgs, deterministic) and
    tested on the second. 0.5 = chance.
    """
    from sklearn.linear_model import LogisticRegression

    x_tr, y_tr, x_te, y_te = _balanced_halves(_as_array(f_s).astype(np.float64), _as_array(f_t).astype(np.float64),
                                              seed, max_samples)
    mu, sd = x_tr.mean(0), x_tr.std(0)
    sd[sd < 1e-12] = 1.0
    clf = LogisticRegression(C=C, max_iter=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit((x_tr - mu) / sd, y_tr)
    return float((clf.predict((x_te - mu) / sd) == y_te).mean())


def proxy_a_distance(f_s: Any, f_t: Any, seed: int = 0, C: float = 1.0, max_samples: int | None = 5000) -> float:
    """Proxy A-distance ``2 (1 - 2 err)`` with ``err`` the held-out error of :func:`domain_classifier_accuracy`'s
    classifier, capped at 0.5 (so PAD is in ``[0, 2]``: 0 indistinguishable, 2 separable)."""
    err = 1.0 - domain_classifier_accuracy(f_s, f_t, seed=seed, C=C, max_samples=max_samples)
    return 2.0 * (1.0 - 2.0 * min(err, 0.5))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return losses.pairwise_sq_dists(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _median_sigma(pooled: np.ndarray, rng: np.random.Generator, n_max: int = 1000) -> float:
    if len(pooled) > n_max:
        pooled = pooled[rng.choice(len(pooled), n_max, replace=False)]
    d2 = _sq_dists(pooled, pooled)[np.triu_indices(len(pooled), 1)]
    d2 = d2[d2 > 0]
    return float(np.sqrt(np.median(d2))) if len(d2) else 1.0


def mmd(f_s: Any, f_t: Any, kernel: str = "rbf", bandwidth: str | float | Sequence[float] = "median",
        max_samples: int | None = 2000, seed: int = 0) -> float:
    """Unbiased estimate of the squared MMD between two samples (Gretton et al. 2012, Eq. 3).

    ``MMD^2_u = mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j)``; it can be slightly
    negative when the distributions are equal.

    Args:
        kernel: ``"rbf"`` (``k = exp(-|x - y|^2 / (2 sigma^2))``) or ``"linear"`` (``k = x . y``).
        bandwidth: for ``"rbf"``: ``"median"`` (sigma = median pairwise distance of the pooled sample, on at most 1000
            points), ``"multi"`` (the average of the kernels at sigma_median x {1/4, 1/2, 1, 2, 4}), a float sigma, or
            a sequence of sigmas (kernels averaged).
        max_samples: at most this many samples per domain (seeded subsample) to bound the O(n^2) cost.
    """
    x = _as_array(f_s).astype(np.float64)
    y = _as_array(f_t).astype(np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"MMD needs at least 2 samples per side, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    if max_samples is not None:
        if len(x) > max_samples:
            x = x[rng.choice(len(x), max_samples, replace=False)]
        if len(y) > max_samples:
            y = y[rng.choice(len(y), max_samples, replace=False)]
    if kernel == "linear":
        value = losses.mmd(torch.from_numpy(x), torch.from_numpy(y), kernel="linear", unbiased=True)
    elif kernel == "rbf":
        if isinstance(bandwidth, str):
            if bandwidth not in ("median", "multi"):
                raise ValueError(f"unknown bandwidth {bandwidth!r}; use 'median', 'multi', a float or floats")
            sigma = _median_sigma(np.concatenate([x, y]), rng)
            sigmas = [sigma] if bandwidth == "median" else [sigma * c for c in (0.25, 0.5, 1.0, 2.0, 4.0)]
        elif np.ndim(bandwidth) == 0:
            sigmas = [float(bandwidth)]
        else:
            sigmas = [float(s) for s in bandwidth]
        # k = mean_s exp(-d^2 / (2 s^2)): fer_lab.losses' Gaussian kernels with gamma = 2 s^2, averaged
        value = losses.mmd(torch.from_numpy(x), torch.from_numpy(y), bandwidths=[2.0 * s * s for s in sigmas],
                           reduction="mean", unbiased=True)
    else:
        raise ValueError(f"unknown kernel {kernel!r}; use 'rbf' or 'linear'")
    return float(value)


def classwise_mmd(f_s: Any, y_s: Any, f_t: Any, y_t: Any, min_count: int = 2, class_names: Sequence[str] = EXPRESSIONS,
                  **mmd_kwargs: Any) -> dict[str, float]:
    """MMD^2 (:func:`mmd`) between the source and target samples of each class.

    Rows with label -1 are ignored; a class enters only when both sides have at least ``min_count`` (>= 2) samples.
    Keys are class names, in class order.
    """
    x, y = _as_array(f_s), _as_array(f_t)
    ys, yt = np.asarray(y_s).reshape(-1), np.asarray(y_t).reshape(-1)
    out: dict[str, float] = {}
    for c, name in enumerate(class_names):
        a, b = x[ys == c], y[yt == c]
        if len(a) >= max(min_count, 2) and len(b) >= max(min_count, 2):
            out[name] = mmd(a, b, **mmd_kwargs)
    return out


def alignment_report(source: FeatureSet, target: FeatureSet, streams: Sequence[str] | None = None, seed: int = 0,
                     max_samples: int | None = 2000, target_labels: str = "true", kernel: str = "rbf",
                     bandwidth: str | float | Sequence[float] = "median") -> dict[str, dict[str, Any]]:
    """Every alignment number, per stream: ``{stream: {"pad", "domain_acc", "mmd", "classwise_mmd": {class: v},
    "mean_classwise_mmd", "n_source", "n_target"}}``.

    Args:
        target_labels: ``"true"`` (target rows with a known label; evaluation only, never for model selection in an
            unsupervised protocol) or ``"pred"`` (the model's predictions as pseudo-labels).
        max_samples: per-domain cap for the MMD estimates and the domain classifier.
    """
    if target_labels not in ("true", "pred"):
        raise ValueError(f"target_labels must be 'true' or 'pred', got {target_labels!r}")
    streams = list(streams) if streams is not None else [s for s in source.features if s in target.features]
    yt = target.labels if target_labels == "true" else target.predictions
    out: dict[str, dict[str, Any]] = {}
    for s in streams:
        fs, ft = source.stream(s), target.stream(s)
        acc = domain_classifier_accuracy(fs, ft, seed=seed, max_samples=max_samples)
        cw = classwise_mmd(fs, source.labels, ft, yt, kernel=kernel, bandwidth=bandwidth, max_samples=max_samples,
                           seed=seed)
        out[s] = {
            "pad": 2.0 * (1.0 - 2.0 * min(1.0 - acc, 0.5)),
            "domain_acc": acc,
            "mmd": mmd(fs, ft, kernel=kernel, bandwidth=bandwidth, max_samples=max_samples, seed=seed),
            "classwise_mmd": cw,
            "mean_classwise_mmd": float(np.mean(list(cw.values()))) if cw else float("nan"),
            "n_source": len(fs),
            "n_target": len(ft),
        }
    return out


def report_frame(report: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """:func:`alignment_report` as a table: one row per stream, scalar numbers and ``mmd_<class>`` columns."""
    rows = {}
    for stream, r in report.items():
        row = {k: v for k, v in r.items() if not isinstance(v, Mapping)}
        row.update({f"mmd_{c}": v for c, v in r.get("classwise_mmd", {}).items()})
        rows[stream] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("stream")


# ---------------------------------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------------------------------
def _name(names: Sequence[str], i: int) -> str:
    return names[i] if 0 <= i < len(names) else ("unknown" if i < 0 else str(i))


def _hover(meta: FeatureSet | None, n: int, class_names: Sequence[str]):
    if meta is None:
        return None, "(%{x:.2f}, %{y:.2f})<extra></extra>"
    custom = np.stack([
        meta.indices.astype(object),
        np.array([_name(class_names, int(i)) for i in meta.labels], dtype=object),
        np.array([_name(class_names, int(i)) for i in meta.predictions], dtype=object),
        meta.domain_labels.astype(object),
        meta.probs.max(1).round(3).astype(object) if meta.probs.size else np.full(n, "", dtype=object),
    ], axis=1)
    template = ("index %{customdata[0]}<br>label %{customdata[1]}<br>prediction %{customdata[2]} "
                "(p=%{customdata[4]})<br>domain %{customdata[3]}<extra></extra>")
    return custom, template


def _groups(meta: FeatureSet | None, n: int, color_by: str, class_names: Sequence[str]):
    """(name, row mask, colour) per trace."""
    if color_by == "domain":
        if meta is None:
            return [("samples", np.ones(n, bool), DOMAIN_COLORS[0])]
        return [(name, meta.domains == d, DOMAIN_COLORS[d % len(DOMAIN_COLORS)])
                for d, name in enumerate(meta.domain_names) if (meta.domains == d).any()]
    if meta is None:
        raise ValueError(f"color_by={color_by!r} needs the FeatureSet (labels / predictions) of the embedding")
    if color_by in ("class", "prediction"):
        y = meta.labels if color_by == "class" else meta.predictions
        out = [(name, y == c, CLASS_COLORS[c % len(CLASS_COLORS)]) for c, name in enumerate(class_names)
               if (y == c).any()]
        if (y < 0).any():
            out.append(("unknown", y < 0, CORRECT_COLORS["unknown"]))
        return out
    if color_by == "correct":
        known = meta.labels >= 0
        out = [("correct", meta.correct, CORRECT_COLORS["correct"]),
               ("incorrect", known & ~meta.correct, CORRECT_COLORS["incorrect"]),
               ("unknown", ~known, CORRECT_COLORS["unknown"])]
        return [g for g in out if g[1].any()]
    raise ValueError(f"unknown color_by {color_by!r}; use 'domain', 'class', 'prediction' or 'correct'")


def _scatter_traces(coords: np.ndarray, meta: FeatureSet | None, color_by: str, class_names: Sequence[str],
                    marker_size: float, opacity: float, webgl: bool | None, showlegend: bool = True,
                    legend_prefix: str = "") -> list:
    n = len(coords)
    webgl = n > 3000 if webgl is None else webgl
    cls = go.Scattergl if webgl else go.Scatter
    custom, template = _hover(meta, n, class_names)
    traces = []
    for name, mask, color in _groups(meta, n, color_by, class_names):
        marker: dict[str, Any] = dict(size=marker_size, color=color, opacity=opacity)
        if meta is not None and color_by != "domain" and len(meta.domain_names) > 1:
            marker["symbol"] = [DOMAIN_SYMBOLS[d % len(DOMAIN_SYMBOLS)] for d in meta.domains[mask]]
        traces.append(cls(x=coords[mask, 0], y=coords[mask, 1], mode="markers", name=legend_prefix + name,
                          legendgroup=name, showlegend=showlegend, marker=marker,
                          customdata=None if custom is None else custom[mask], hovertemplate=template))
    return traces


def umap_figure(embedding: Embedding | np.ndarray, color_by: str = "domain", features: FeatureSet | None = None,
                title: str | None = None, marker_size: float = 5, opacity: float = 0.75, webgl: bool | None = None,
                class_names: Sequence[str] = EXPRESSIONS, height: int = 520) -> go.Figure:
    """Interactive scatter of a 2-D embedding, one trace per group (toggle them in the legend).

    Args:
        embedding: an :class:`Embedding` (from :func:`fit_reducer` / :meth:`Reducer.transform`) or ``[N, 2]``
            coordinates with ``features`` giving the samples' metadata.
        color_by: ``"domain"``, ``"class"`` (true label; unknown labels grey), ``"prediction"`` or ``"correct"``.
            When colouring by anything other than the domain, the marker symbol shows the domain.
        webgl: use ``Scattergl`` (default: when there are more than 3000 points).

    Hover shows the dataset index, label, prediction (and its probability) and domain.
    """
    if isinstance(embedding, Embedding):
        coords, meta = embedding.coords, features if features is not None else embedding.meta
        stream = embedding.stream
    else:
        coords, meta, stream = np.asarray(embedding), features, ""
    if meta is not None and len(meta) != len(coords):
        raise ValueError(f"{len(coords)} points but {len(meta)} samples of metadata")
    fig = go.Figure(_scatter_traces(coords, meta, color_by, class_names, marker_size, opacity, webgl))
    if title is None:
        title = f"UMAP of {stream or 'features'}" + (f" ({meta.name})" if meta is not None and meta.name else "")
    fig.update_layout(title=title, height=height, legend_title_text=color_by, template="plotly_white",
                      xaxis_title="UMAP 1", yaxis_title="UMAP 2")
    return fig


def _source_target(fs: FeatureSet, source_domain: int | str) -> tuple[FeatureSet, FeatureSet]:
    d = fs.domain_names.index(source_domain) if isinstance(source_domain, str) else int(source_domain)
    return fs.subset(fs.domains == d), fs.subset(fs.domains != d)


def _panel_numbers(fs: FeatureSet, stream: str, source_domain: int | str, seed: int,
                   max_samples: int | None) -> dict[str, float]:
    src, tgt = _source_target(fs, source_domain)
    out: dict[str, float] = {}
    if len(src) >= 2 and len(tgt) >= 2:
        acc = domain_classifier_accuracy(src.stream(stream), tgt.stream(stream), seed=seed, max_samples=max_samples)
        out["pad"] = 2.0 * (1.0 - 2.0 * min(1.0 - acc, 0.5))
        out["mmd"] = mmd(src.stream(stream), tgt.stream(stream), max_samples=max_samples, seed=seed)
    known = tgt.labels >= 0
    if known.any():
        out["target_acc"] = float((tgt.predictions[known] == tgt.labels[known]).mean())
    return out


def _match_rows(a: FeatureSet, b: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs holding the same sample (same domain name and dataset index) in ``a`` and ``b``."""
    key_a = {(n, int(i)): r for r, (n, i) in enumerate(zip(a.domain_labels, a.indices))}
    pairs = [(key_a[(n, int(i))], r) for r, (n, i) in enumerate(zip(b.domain_labels, b.indices)) if (n, int(i)) in key_a]
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ia, ib = np.array(pairs, dtype=np.int64).T
    return ia, ib


def before_after_figure(before: FeatureSet, after: FeatureSet, stream: str = "fused",
                        titles: Sequence[str] | None = None, source_domain: int | str = 0, align: bool = True,
                        reducer_kwargs: Mapping[str, Any] | None = None, seed: int = 0,
                        metrics_max_samples: int | None = 2000, marker_size: float = 5, opacity: float = 0.75,
                        webgl: bool | None = None, height: int = 500) -> go.Figure:
    """Two models' features side by side (e.g. source-only vs DANN), coloured by domain, on the same axis ranges,
    with PAD, MMD^2 and target accuracy of each model in the subplot titles.

    Each argument is one model's FeatureSet holding the source AND target samples (:func:`concat_features`).

    How the panels are made comparable: the two models' features live in different spaces (different weights;
    coordinate ``k`` of one model has nothing to do with coordinate ``k`` of the other), so a joint UMAP of the
    stacked features would mostly separate the models from each other, and ``fit on before, transform after``
    would push the after-features through a map learnt on another space. Instead each model gets its own UMAP
    (same seed and settings), and, with ``align=True``, the "after" embedding is mapped onto the "before" one by a
    similarity transform (rotation/reflection, uniform scale, translation; :func:`procrustes_align`) fitted on the
    samples present in both (matched by domain name and dataset index; extract both from the same data). UMAP
    layouts are only defined up to such transforms, so this changes nothing about either layout's structure; it
    only removes the arbitrary orientation and scale so the panels share axes. Without matching samples the
    embeddings are only centred and scaled to unit RMS. The numbers are computed on the raw ``stream`` features of
    each model, not on the 2-D embeddings. ``fig.layout.meta`` holds them as ``{"before": {...}, "after": {...}}``.

    Args:
        titles: panel titles (default: each set's ``name``, else "before" / "after").
        source_domain: which domain (id or name) is the source; every other domain counts as target.
        reducer_kwargs: passed to :func:`fit_reducer` (``n_neighbors``, ``min_dist``, ``pca_dim``...).
    """
    kw = dict(reducer_kwargs or {})
    kw.setdefault("seed", seed)
    emb_b = fit_reducer(before, stream=stream, **kw).embedding.coords
    emb_a = fit_reducer(after, stream=stream, **kw).embedding.coords
    ia, ib = _match_rows(before, after)
    if align and len(ia) >= 3:
        rot, scale, mu_m, mu_f = procrustes_align(emb_a[ib], emb_b[ia])
        emb_a = scale * (emb_a - mu_m) @ rot + mu_f
    else:
        def standard(c: np.ndarray) -> np.ndarray:
            c = c - c.mean(0)
            rms = float(np.sqrt((c ** 2).sum(1).mean()))
            return c / rms if rms > 0 else c

        emb_b, emb_a = standard(emb_b), standard(emb_a)
    names = list(titles) if titles is not None else [before.name or "before", after.name or "after"]
    if len(names) != 2:
        raise ValueError(f"titles needs two entries, got {len(names)}")
    numbers = [_panel_numbers(fs, stream, source_domain, seed, metrics_max_samples) for fs in (before, after)]

    def title(name: str, num: dict[str, float]) -> str:
        parts = []
        if "pad" in num:
            parts.append(f"PAD {num['pad']:.2f}")
            parts.append(f"MMD² {num['mmd']:.3f}")
        if "target_acc" in num:
            parts.append(f"target acc {100 * num['target_acc']:.1f}%")
        return f"{name}: " + ", ".join(parts) if parts else name

    fig = make_subplots(rows=1, cols=2, subplot_titles=[title(n, v) for n, v in zip(names, numbers)],
                        horizontal_spacing=0.06)
    for col, (coords, fs) in enumerate(((emb_b, before), (emb_a, after)), start=1):
        for tr in _scatter_traces(coords, fs, "domain", EXPRESSIONS, marker_size, opacity, webgl,
                                  showlegend=col == 1):
            fig.add_trace(tr, row=1, col=col)
    src_name = source_domain if isinstance(source_domain, str) else _name(before.domain_names, int(source_domain))
    both = np.concatenate([emb_b, emb_a])
    lo, hi = both.min(0), both.max(0)
    pad = 0.05 * np.maximum(hi - lo, 1e-9)
    xr = [float(lo[0] - pad[0]), float(hi[0] + pad[0])]
    yr = [float(lo[1] - pad[1]), float(hi[1] + pad[1])]
    fig.update_xaxes(range=xr, title_text="UMAP 1")
    fig.update_yaxes(range=yr, title_text="UMAP 2")
    fig.update_layout(height=height, template="plotly_white", legend_title_text="domain",
                      title=f"{stream} features (source: {src_name})",
                      meta={"before": numbers[0], "after": numbers[1], "aligned": bool(align and len(ia) >= 3)})
    return fig
