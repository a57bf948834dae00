import numpy as np
import pytest
import torch

from fer_lab.analysis import alignment as al
from fer_lab.labels import EXPRESSIONS, STREAMS
from fer_lab.methods import build_method

from conftest import synth_pair


@pytest.fixture(scope="module")
def data():
    return synth_pair(n=64, seed=5)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    a = build_method("source_only", {"feat_dim": 16})
    torch.manual_seed(1)
    b = build_method("source_only", {"feat_dim": 16})
    return a, b


@pytest.fixture(scope="module")
def feats(data, models):
    src, tgt = data
    out = []
    for m, name in zip(models, ("before", "after")):
        fs = al.extract_features(m, src, domain_name="lab", name=name, batch_size=48)
        ft = al.extract_features(m, tgt, domain_name="wild", name=name)
        out.append((fs, ft))
    return out


def gaussians(n=150, d=8, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[:, 0] += shift
    return x


# -- features -------------------------------------------------------------------------------------------------------
def test_extract_features_shapes_mode_and_subset(data, models):
    src, _ = data
    m = models[0]
    m.train()
    fs = al.extract_features(m, src, domain_name="lab")
    assert m.training  # mode restored
    assert set(fs.features) == set(STREAMS) and fs.stream("fused").shape == (64, 96)
    assert fs.features["nose"].dtype == np.float32
    assert np.array_equal(fs.labels, src.labels.numpy()) and np.array_equal(fs.indices, np.arange(64))
    assert np.allclose(fs.probs.sum(1), 1, atol=1e-5) and np.array_equal(fs.predictions, fs.probs.argmax(1))
    assert fs.domain_names == ["lab"] and (fs.domains == 0).all()
    assert all(p.grad is None for p in m.parameters())
    sub = al.extract_features(m, src, streams=["global"], max_samples=20, seed=3)
    assert set(sub.features) == {"global"} and len(sub) == 20 and np.all(np.diff(sub.indices) > 0)
    full_rows = {int(i): r for r, i in enumerate(fs.indices)}
    rows = [full_rows[int(i)] for i in sub.indices]
    np.testing.assert_allclose(sub.stream("global"), fs.stream("global")[rows], rtol=1e-5, atol=1e-6)
    again = al.extract_features(m, src, streams=["global"], max_samples=20, seed=3)
    assert np.array_equal(again.indices, sub.indices)


def test_concat_features_renumbers_domains(feats):
    fs, ft = feats[0]
    both = al.concat_features([fs, ft])
    assert both.domain_names == ["lab", "wild"] and len(both) == 128
    assert (both.domains[:64] == 0).all() and (both.domains[64:] == 1).all()
    assert list(both.domain_labels[[0, 127]]) == ["lab", "wild"]
    named = al.concat_features({"S": fs, "T": ft})
    assert named.domain_names == ["S", "T"]
    nested = al.concat_features([both, ft])
    assert nested.domain_names == ["lab", "wild", "wild"] and nested.domains.max() == 2
    with pytest.raises(ValueError):
        al.concat_features([both, ft], domain_names=["a", "b"])
    assert both.domain("wild").indices.tolist() == ft.indices.tolist()


# -- numbers --------------------------------------------------------------------------------------------------------
def test_mmd_same_vs_shifted():
    a, b = gaussians(seed=0), gaussians(seed=1)
    far = gaussians(shift=3.0, seed=2)
    for kw in ({}, {"bandwidth": "multi"}, {"bandwidth": 2.0}, {"bandwidth": [1.0, 4.0]}):
        same = al.mmd(a, b, **kw)
        shifted = al.mmd(a, far, **kw)
        assert abs(same) < 0.02, (kw, same)
        assert shifted > 0.1 and shifted > 20 * abs(same), (kw, same, shifted)
    assert abs(al.mmd(a, b, kernel="linear")) < 0.3 < 8.0 < al.mmd(a, far, kernel="linear")  # ~ shift^2 = 9
    assert al.mmd(a, far) == al.mmd(a, far)  # deterministic
    with pytest.raises(ValueError):
        al.mmd(a, b, kernel="poly")


def test_proxy_a_distance_identical_and_separable():
    a, b = gaussians(200, seed=0), gaussians(200, seed=1)
    far = gaussians(200, shift=8.0, seed=2)
    assert al.proxy_a_distance(a, b) < 0.4
    assert al.proxy_a_distance(a, a.copy()) < 0.4
    assert al.proxy_a_distance(a, far) > 1.9
    acc = al.domain_classifier_accuracy(a, far)
    assert acc > 0.97 and 0.0 <= al.proxy_a_distance(a, b) <= 2.0
    assert al.proxy_a_distance(a, far, seed=4) == al.proxy_a_distance(a, far, seed=4)


def test_classwise_mmd_keys():
    x, z = gaussians(40, seed=0), gaussians(40, seed=1)
    ys = np.repeat([0, 1, 3, 4], 10)
    yt = np.repeat([0, 1, 3, -1], 10)
    yt[-9:] = 6  # class 6 only on the target side, class 4 only on the source side
    out = al.classwise_mmd(x, ys, z, yt)
    assert list(out) == [EXPRESSIONS[0], EXPRESSIONS[1], EXPRESSIONS[3]]
    assert all(np.isfinite(v) for v in out.values())
    assert list(al.classwise_mmd(x, ys, z, yt, min_count=11)) == []


def test_alignment_report_and_frame(feats):
    fs, ft = feats[0]
    rep = al.alignment_report(fs, ft, streams=["global", "fused"])
    assert list(rep) == ["global", "fused"]
    r = rep["fused"]
    assert {"pad", "domain_acc", "mmd", "classwise_mmd", "mean_classwise_mmd", "n_source", "n_target"} <= set(r)
    assert 0 <= r["pad"] <= 2 and 0 <= r["domain_acc"] <= 1 and r["n_source"] == 64
    assert set(r["classwise_mmd"]) <= set(EXPRESSIONS) and r["classwise_mmd"]
    frame = al.report_frame(rep)
    assert list(frame.index) == ["global", "fused"] and "pad" in frame and "mmd_" + next(iter(r["classwise_mmd"])) in frame
    pred = al.alignment_report(fs, ft, streams=["global"], target_labels="pred")
    assert "classwise_mmd" in pred["global"]


# -- reducer ----------------------------------------------------------------------------------------------------------
def test_exact_knn_matches_brute_force():
    x = gaussians(60, 5, seed=3)
    idx = al.ExactKNNIndex(x)
    i, d = idx.neighbor_graph(6)
    full = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    assert (i[:, 0] == np.arange(60)).all() and np.allclose(d[:, 0], 0)
    np.testing.assert_allclose(d, np.sort(full, 1)[:, :6], atol=1e-5)
    q = gaussians(7, 5, seed=4)
    qi, qd = idx.query(q, 4)
    qfull = np.sqrt(((q[:, None] - x[None]) ** 2).sum(-1))
    assert (qi == np.argsort(qfull, 1)[:, :4]).all()


def test_reducer_deterministic_and_transforms(feats):
    (fs, ft), _ = feats
    both = al.concat_features([fs, ft])
    r1 = al.fit_reducer(both, stream="fused", n_neighbors=10, pca_dim=20, seed=0)
    r2 = al.fit_reducer(both, stream="fused", n_neighbors=10, pca_dim=20, seed=0)
    assert r1.embedding.coords.shape == (128, 2)
    assert np.array_equal(r1.embedding.coords, r2.embedding.coords)
    assert r1.components.shape == (20, 96)
    e1, e2 = r1.transform(ft), r2.transform(ft)
    assert e1.coords.shape == (64, 2) and e1.meta is ft and np.isfinite(e1.coords).all()
    assert np.array_equal(e1.coords, e2.coords)
    # transformed training points land near their own fitted position (same space, same reducer)
    spread = np.ptp(r1.embedding.coords, 0).max()
    assert np.median(np.linalg.norm(e1.coords - r1.embedding.coords[64:], axis=1)) < 0.25 * spread
    raw = al.fit_reducer(fs.stream("global"), pca_dim=None, n_neighbors=8)
    assert raw.components is None and raw.transform(ft.stream("global")).coords.shape == (64, 2)


def test_procrustes_recovers_similarity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2))
    th = 0.7
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @ np.diag([1, -1])
    y = 2.5 * x @ rot + np.array([3.0, -1.0])
    r, s, mm, mf = al.procrustes_align(y, x)
    np.testing.assert_allclose(s * (y - mm) @ r + mf, x, atol=1e-9)


# -- figures ----------------------------------------------------------------------------------------------------------
def test_umap_figure_traces(feats):
    (fs, ft), _ = feats
    both = al.concat_features([fs, ft])
    emb = al.fit_reducer(both, n_neighbors=10, pca_dim=20).embedding
    fig = al.umap_figure(emb, color_by="domain")
    assert [t.name for t in fig.data] == ["lab", "wild"] and sum(len(t.x) for t in fig.data) == 128
    assert fig.data[0].customdata.shape == (64, 5) and "index" in fig.data[0].hovertemplate
    fig = al.umap_figure(emb, color_by="class")
    present = [EXPRESSIONS[c] for c in range(7) if (both.labels == c).any()]
    assert [t.name for t in fig.data] == present
    assert set(fig.data[0].marker.symbol) <= {"circle", "x"}
    fig = al.umap_figure(emb, color_by="correct")
    assert {t.name for t in fig.data} <= {"correct", "incorrect"} and sum(len(t.x) for t in fig.data) == 128
    fig = al.umap_figure(emb.coords, features=both, color_by="prediction", webgl=True)
    assert fig.data[0].type == "scattergl"
    with pytest.raises(ValueError):
        al.umap_figure(emb, color_by="nope")


def test_before_after_figure_shares_axes(feats):
    before = al.concat_features(list(feats[0]), name="source-only")
    after = al.concat_features(list(feats[1]), name="dann")
    fig = al.before_after_figure(before, after, reducer_kwargs={"n_neighbors": 10, "pca_dim": 20})
    assert [t.name for t in fig.data] == ["lab", "wild", "lab", "wild"]
    assert [t.showlegend for t in fig.data] == [True, True, False, False]
    assert fig.data[0].xaxis == "x" and fig.data[2].xaxis == "x2"
    assert tuple(fig.layout.xaxis.range) == tuple(fig.layout.xaxis2.range)
    assert tuple(fig.layout.yaxis.range) == tuple(fig.layout.yaxis2.range)
    for t in fig.data:  # every point inside the shared ranges
        assert fig.layout.xaxis.range[0] <= min(t.x) and max(t.x) <= fig.layout.xaxis.range[1]
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0].startswith("source-only: PAD ") and "MMD²" in titles[1] and "target acc" in titles[1]
    meta = fig.layout.meta
    assert meta["aligned"] and f"{meta['before']['pad']:.2f}" in titles[0]
    assert f"{meta['after']['mmd']:.3f}" in titles[1]
