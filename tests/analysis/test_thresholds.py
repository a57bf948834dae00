import numpy as np
import pytest
import torch

from fer_lab.analysis import thresholds as th
from fer_lab.labels import EXPRESSIONS


def row(*p):
    return list(p) + [0.0] * (7 - len(p))


# conf / pred / label / correct:
#   s0 .9 / 0 / 0 / yes    s1 .7 / 1 / 1 / yes    s2 .6 / 0 / 1 / no    s3 .8 / 2 / 0 / no    s4 .5 / 0 / -1 / ?
PROBS = np.array([row(0.9, 0.1), row(0.2, 0.7, 0.1), row(0.6, 0.4), row(0.1, 0.1, 0.8), row(0.5, 0.3, 0.2)])
LABELS = np.array([0, 1, 1, 0, -1])


def test_confidences_and_to_probs():
    conf, pred = th.confidences(PROBS)
    np.testing.assert_allclose(conf, [0.9, 0.7, 0.6, 0.8, 0.5])
    assert pred.tolist() == [0, 1, 0, 2, 0]
    logits = torch.randn(6, 7)
    np.testing.assert_allclose(th.to_probs(logits), torch.softmax(logits.double(), 1).numpy(), atol=1e-12)
    with pytest.raises(ValueError):
        th.confidences(logits)  # logits are not probabilities


def test_precision_coverage_exact_values():
    t = [0.0, 0.55, 0.65, 0.7, 0.75, 0.85, 0.95]
    df = th.precision_coverage(PROBS, LABELS, t)
    assert list(df.columns) == ["threshold", "coverage", "precision", "n_accepted", "n_correct"]
    np.testing.assert_allclose(df["coverage"], [1.0, 0.8, 0.6, 0.6, 0.4, 0.2, 0.0])
    np.testing.assert_allclose(df["precision"][:6], [0.5, 0.5, 2 / 3, 2 / 3, 0.5, 1.0])
    assert np.isnan(df["precision"].iloc[6])
    assert df["n_accepted"].tolist() == [5, 4, 3, 3, 2, 1, 0]
    assert df["n_correct"].tolist() == [2, 2, 2, 2, 1, 1, 0]


def test_precision_coverage_per_class():
    df = th.precision_coverage(PROBS, LABELS, [0.0, 0.55, 0.85], per_class=True)
    assert list(df.columns[:2]) == ["threshold", "class"] and len(df) == 3 * 7
    c0 = df[df["class"] == EXPRESSIONS[0]].reset_index(drop=True)  # predicted 0: s0 (ok), s2 (wrong), s4 (unknown)
    np.testing.assert_allclose(c0["coverage"], [1.0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(c0["precision"], [0.5, 0.5, 1.0])
    c2 = df[df["class"] == EXPRESSIONS[2]].reset_index(drop=True)
    np.testing.assert_allclose(c2["coverage"][:2], [1.0, 1.0])
    assert c2["precision"][0] == 0.0 and np.isnan(c2["precision"][2])
    c3 = df[df["class"] == EXPRESSIONS[3]]  # never predicted
    assert c3["coverage"].isna().all() and (c3["n_accepted"] == 0).all()


def test_coverage_monotone_and_unlabelled():
    rng = np.random.default_rng(0)
    p = th.to_probs(rng.normal(size=(300, 7)) * 2)
    y = rng.integers(-1, 7, 300)
    df = th.precision_coverage(p, y)
    assert len(df) == 100 and df["coverage"].iloc[0] == 1.0
    assert (np.diff(df["coverage"]) <= 0).all()
    per = th.precision_coverage(p, y, per_class=True)
    for _, g in per.groupby("class"):
        cov = g["coverage"].dropna().to_numpy()
        assert (np.diff(cov) <= 0).all()
    none = th.precision_coverage(p, None, [0.0, 0.5])
    assert none["precision"].isna().all() and none["coverage"].iloc[0] == 1.0


def test_figures():
    fig = th.precision_coverage_figure(PROBS, LABELS)
    assert [t.name for t in fig.data] == ["precision", "coverage"] and len(fig.data[0].x) == 100
    fig = th.precision_coverage_figure(PROBS, LABELS, per_class=True)
    assert len(fig.data) == 14 and [t.name for t in fig.data[:2]] == [EXPRESSIONS[0]] * 2
    fig = th.confidence_histogram_figure(PROBS, LABELS, bins=10)
    assert len(fig.data) == 7 * 3 and {t.name for t in fig.data} == {"correct", "incorrect", "unlabelled"}
    assert sum(sum(t.y) for t in fig.data) == 5
    correct = sum(sum(t.y) for t in fig.data if t.name == "correct")
    assert correct == 2
    fig = th.confidence_histogram_figure(PROBS, by_class=False)
    assert [t.name for t in fig.data] == ["unlabelled"] and sum(fig.data[0].y) == 5


def test_threshold_curves_formats():
    flat = [{"step": s, "thresholds": [0.5 + 0.01 * s] * 7} for s in (10, 20, 30)]
    fig = th.threshold_curves_figure(flat + [{"step": 30, "loss": 1.0}])  # non-threshold records skipped
    assert [t.name for t in fig.data] == list(EXPRESSIONS)
    assert list(fig.data[0].x) == [10, 20, 30] and fig.data[0].y[-1] == pytest.approx(0.8)
    multi = [{"step": s, "thresholds": {"global": np.full(7, 0.6), "fused": torch.full((7,), 0.7)}} for s in (1, 2)]
    fig = th.threshold_curves_figure(multi)
    assert len(fig.data) == 14 and [a.text for a in fig.layout.annotations] == ["global", "fused"]
    assert fig.data[7].y[0] == pytest.approx(0.7) and fig.data[7].showlegend is False
    fig = th.threshold_curves_figure({"global": [[0.5] * 7, [0.6] * 7], "nose": [{"step": 4, "thresholds": [0.1] * 7}]})
    assert len(fig.data) == 14 and list(fig.data[7].x) == [4]
    with pytest.raises(ValueError):
        th.threshold_curves_figure([{"step": 1, "loss": 0.3}])


def test_explorer_slider_updates_figure(capsys):
    ex = th.ThresholdExplorer(PROBS, LABELS, threshold=0.0)
    assert list(ex.figure.data[0].y) == [3, 1, 1, 0, 0, 0, 0]
    assert "coverage 100.0%" in ex.figure.layout.title.text and "precision 50.0%" in ex.figure.layout.title.text
    ex.slider.value = 0.8
    assert list(ex.figure.data[0].y) == [1, 0, 1, 0, 0, 0, 0]
    assert list(ex.figure.data[1].y) == [2, 1, 0, 0, 0, 0, 0]
    title = ex.figure.layout.title.text
    assert "threshold 0.80" in title and "coverage 40.0% (2/5)" in title and "precision 50.0%" in title
    assert ex.figure.data[2].y[0] == 1.0 and ex.figure.data[2].y[2] == 0.0 and ex.figure.data[2].y[1] is None
    ex.dropdown.value = EXPRESSIONS[0]
    assert f"{EXPRESSIONS[0]}: coverage 33.3%, precision 100.0%" in ex.figure.layout.title.text
    colors = list(ex.figure.data[0].marker.color)
    assert colors[0] != colors[1] and colors[1] == colors[2]
    assert ex.stats(0.0)["n_accepted"] == 5
    assert capsys.readouterr().out == ""


def test_explorer_display_bundle_carries_a_static_figure():
    """The widget's bundle holds the live view and a static copy of the current figure, with the note saying so."""
    ex = th.ThresholdExplorer(PROBS, LABELS, threshold=0.0)
    ex.slider.value = 0.8
    bundle = ex.widget._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == ex.widget.model_id
    static = bundle["text/html"]
    assert ex.static_note() in static and "threshold 0.80" in ex.static_note() and "live kernel" in static
    assert static.count('class="plotly-graph-div"') == 1 and "Plotly.newPlot" in static
    assert "plotly.js v" not in static  # the library is the page's, embedded once, not the figure's
    assert '"threshold 0.80: coverage 40.0%' in static  # the figure's current title, not the one it was built with
    ex.slider.value = 0.0
    assert '"threshold 0.00: coverage 100.0%' in ex.widget._repr_mimebundle_()["text/html"]
