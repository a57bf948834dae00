import numpy as np
import pytest
import torch

from fer_lab.analysis import attribution as at
from fer_lab.labels import EXPRESSIONS, LANDMARKS
from fer_lab.methods import build_method

from conftest import synth_pair


@pytest.fixture(scope="module")
def data():
    return synth_pair(n=32, seed=7)


@pytest.fixture(scope="module")
def method(data):
    torch.manual_seed(0)
    m = build_method("source_only", {"feat_dim": 16, "lr": 0.05})
    b = data[0].batch(torch.arange(16))
    for i in range(10):  # a few steps: non-trivial logits and BN statistics
        m.update(b, None, i / 10)
    m.optimizer.zero_grad(set_to_none=True)
    return m


@pytest.fixture
def batch(data):
    return data[0].batch(torch.arange(4))


def no_grads(m):
    return all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("algorithm", at.ALGORITHMS)
def test_shapes_mode_and_no_leftover_grads(method, batch, algorithm):
    method.train()
    a = at.attribute(method, batch, algorithm=algorithm, n_steps=8)
    assert a.shape == (4, 32, 32) and a.dtype == torch.float32 and not a.requires_grad
    assert (a >= 0).all() and a.sum() > 0 and torch.isfinite(a).all()
    assert method.training and no_grads(method) and all(p.requires_grad for p in method.parameters())
    method.eval()
    at.attribute(method, batch, algorithm=algorithm, n_steps=8, target=2)
    assert not method.training and no_grads(method)
    method.train()


def test_gradcam_layers_and_baselines(method, batch):
    mid = at.attribute(method, batch, algorithm="gradcam", layer="mid")
    last = at.attribute(method, batch, algorithm="gradcam", layer="last")
    named = at.attribute(method, batch, algorithm="gradcam", layer="extractor.backbone.stage3")
    assert mid.shape == last.shape == named.shape == (4, 32, 32)
    assert not torch.allclose(mid, last)
    with pytest.raises(ValueError):
        at.attribute(method, batch, algorithm="gradcam", layer="no.such.layer")
    with pytest.raises(ValueError):
        at.attribute(method, batch, algorithm="lime")
    x = batch["images"]
    for name in ("black", "blur", "mean", 0.5):
        base = at.make_baseline(x, name)
        assert base.shape == x.shape
    assert torch.equal(at.make_baseline(x, "black"), torch.zeros_like(x))
    assert torch.allclose(at.make_baseline(x, "mean")[:, :, 0, 0], x.mean((2, 3)))
    for baseline in ("blur", "mean"):
        assert at.attribute(method, batch, baseline=baseline, n_steps=8).shape == (4, 32, 32)


def test_integrated_gradients_completeness(method, batch):
    method.eval()
    with torch.no_grad():   # per face, the class whose score moves most between the black baseline and the face
        fx_all = method.predict(batch)
        fb_all = method.predict({**batch, "images": torch.zeros_like(batch["images"])})
        target = (fx_all - fb_all).abs().argmax(1)
    signed, delta = at.attribute(method, batch, target=target, absolute=False, return_delta=True, n_steps=128)
    diff = (fx_all - fb_all).gather(1, target[:, None])[:, 0]
    total = signed.sum((1, 2))
    assert diff.abs().min() > 0.05  # the check is not vacuous
    assert torch.allclose(total, diff, rtol=0.05, atol=1e-3), (total, diff)
    assert delta.shape == (4,) and (delta.abs() <= 0.05 * diff.abs() + 1e-3).all()
    assert no_grads(method)


def test_patch_attribution_constructed_maps():
    h = w = 32
    lm = torch.tensor([[[8.0, 8.0], [24.0, 8.0], [16.0, 16.0], [8.0, 26.0], [24.0, 26.0]]])
    r = 3.0  # 6 x 6 windows, disjoint
    nose = torch.zeros(1, h, w)
    nose[0, 14:17, 15:18] = 1.0  # inside the nose window [13, 19) x [13, 19)
    shares = at.patch_attribution(nose, lm, radius=r)
    assert shares.shape == (1, 6)
    np.testing.assert_allclose(shares[0].numpy(), [0, 0, 1, 0, 0, 0], atol=1e-7)
    uniform = torch.ones(2, h, w)
    shares = at.patch_attribution(uniform, lm.expand(2, 5, 2), radius=r)
    area = (2 * r) ** 2 / (h * w)
    np.testing.assert_allclose(shares[:, :5].numpy(), area, rtol=1e-6)
    np.testing.assert_allclose(shares[:, 5].numpy(), 1 - 5 * area, rtol=1e-6)
    # a window clipped by the border covers only its part inside the image
    corner = torch.tensor([[[1.0, 1.0], [24.0, 8.0], [16.0, 16.0], [8.0, 26.0], [24.0, 26.0]]])
    s = at.patch_attribution(torch.ones(1, h, w), corner, radius=r)
    assert s[0, 0].item() == pytest.approx(4 * 4 / (h * w))
    # overlapping windows: "count" counts shared pixels twice, "nearest" splits them
    big = at.patch_attribution(torch.ones(1, h, w), lm, radius=10.0)
    assert big[0].sum() > 1.0
    split = at.patch_attribution(torch.ones(1, h, w), lm, radius=10.0, overlap="nearest")
    assert split[0].sum().item() == pytest.approx(1.0, abs=1e-6) and (split[0, :5] < big[0, :5]).any()
    assert at.patch_attribution(torch.zeros(1, h, w), lm, radius=r).isnan().all()
    with pytest.raises(ValueError):
        at.patch_attribution(-torch.ones(1, h, w), lm, radius=r)
    assert at.DEFAULT_RADIUS == 14.0 and at.REGIONS == LANDMARKS + ("rest",)


def test_window_radius(method):
    assert at.window_radius(method) == 7 * 4 / 2


def test_patch_attribution_tables(method, data):
    src, tgt = data
    samples = at.patch_attribution_samples(method, {"lab": src, "wild": tgt}, n=8, algorithm="saliency",
                                           batch_size=8)
    assert len(samples) == 16 and list(samples.columns[:4]) == ["domain", "index", "label", "prediction"]
    by_domain = at.patch_attribution_table(method, None, per="domain", samples=samples)
    assert list(by_domain.index) == ["lab", "wild"] and by_domain.index.name == "domain"
    assert list(by_domain.columns) == list(at.REGIONS) + ["n"] and by_domain["n"].tolist() == [8, 8]
    by_class = at.patch_attribution_table(method, src, per="class", n=12, algorithm="gradcam", batch_size=6)
    assert by_class.index.name == "class" and set(by_class.index) <= set(EXPRESSIONS)
    assert by_class["n"].sum() == 12
    order = [EXPRESSIONS.index(c) for c in by_class.index]
    assert order == sorted(order)
    vals = by_class[list(at.REGIONS)].to_numpy()
    assert np.isfinite(vals).all() and (vals >= 0).all() and (vals <= 1).all()
    by_pred = at.patch_attribution_table(method, None, per="class", label="pred", samples=samples)
    assert by_pred["n"].sum() == 16
    fig = at.patch_bar_figure(by_domain)
    assert [t.name for t in fig.data] == ["lab (n=8)", "wild (n=8)"] and list(fig.data[0].x) == list(at.REGIONS)


def test_overlay_figure(method, batch):
    a = at.attribute(method, batch, algorithm="saliency")
    fig = at.overlay_figure(batch["images"], a, batch["landmarks"], titles=list("abcd"), radius=at.window_radius(method),
                            cols=2)
    assert len(fig.data) == 3 * 4 and [t.type for t in fig.data[:3]] == ["image", "heatmap", "scatter"]
    assert len(fig.layout.shapes) == 5 * 4 and [x.text for x in fig.layout.annotations] == list("abcd")
    assert fig.data[1].zmax == 1 and np.asarray(fig.data[1].z).max() == pytest.approx(1.0)
    assert tuple(fig.layout.yaxis.range) == (32, 0)
