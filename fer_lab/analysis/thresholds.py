"""Confidence thresholds: histograms, precision / coverage trade-offs, dynamic threshold curves, and an
interactive explorer.

Pseudo-labelling methods accept a target prediction when its confidence (max softmax probability) reaches a
threshold, fixed or per class and dynamic. These tools show what a threshold keeps and how precise that is:

* :func:`precision_coverage`: for each threshold ``t``, ``coverage(t)`` = fraction of samples with
  ``max prob >= t`` and ``precision(t)`` = accuracy of those accepted samples (NaN when none is accepted).
* :func:`threshold_curves_figure`: per-class thresholds logged during training.
* :class:`ThresholdExplorer`: a slider that updates per-class accepted counts and precision (in a live kernel;
  an exported HTML report shows it as a static figure at the threshold it was left at, and says so).

Inputs are probabilities ``[N, C]`` (rows summing to 1; use :func:`to_probs` on logits) as numpy arrays or
tensors, and labels ``[N]`` with -1 for unknown. Figures are returned, never shown.
"""

from __future__ import annotations

import html
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from fer_lab.labels import EXPRESSIONS

__all__ = [
    "ThresholdExplorer",
    "confidence_histogram_figure",
    "confidences",
    "precision_coverage",
    "precision_coverage_figure",
    "threshold_curves_figure",
    "to_probs",
]

DEFAULT_THRESHOLDS = np.linspace(0.0, 0.99, 100)
CLASS_COLORS: tuple[str, ...] = ("#1f77b4", "#9467bd", "#8c564b", "#2ca02c", "#17becf", "#d62728", "#7f7f7f")
CORRECT, INCORRECT, UNLABELLED = "#2ca02c", "#d62728", "#7f7f7f"


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def to_probs(logits: Any) -> np.ndarray:
    """Softmax of logits ``[N, C]`` (float64 numpy)."""
    z = _np(logits).astype(np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _check_probs(probs: Any) -> np.ndarray:
    p = _np(probs).astype(np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {p.shape}")
    if len(p) and (p.min() < -1e-6 or not np.allclose(p.sum(1), 1.0, atol=1e-3)):
        raise ValueError("probs rows must be probabilities summing to 1 (pass logits through to_probs first)")
    return p


def _labels(labels: Any, n: int) -> np.ndarray:
    if labels is None:
        return np.full(n, -1, dtype=np.int64)
    y = _np(labels).astype(np.int64).reshape(-1)
    if len(y) != n:
        raise ValueError(f"{len(y)} labels for {n} samples")
    return y


def confidences(probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence, prediction)``: the max probability and its class for each row."""
    p = _check_probs(probs)
    return p.max(1), p.argmax(1)


def precision_coverage(probs: Any, labels: Any, thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
                       per_class: bool = False, class_names: Sequence[str] = EXPRESSIONS) -> pd.DataFrame:
    """Precision and coverage of "accept the prediction when ``max prob >= t``" for each threshold ``t``.

    Overall (``per_class=False``), one row per threshold: ``threshold``, ``coverage`` (accepted / all samples),
    ``precision`` (correct / accepted labelled samples; NaN when none), ``n_accepted``, ``n_correct``.

    Per class (``per_class=True``), one row per (threshold, predicted class) with an extra ``class`` column; the
    class is the PREDICTED class (what a pseudo-label would be): ``coverage`` = accepted / samples predicted as that
    class, ``precision`` = correct / accepted labelled samples predicted as that class.

    Samples with label -1 count for coverage, not for precision (``labels=None``: precision is NaN).
    """
    conf, pred = confidences(probs)
    y = _labels(labels, len(conf))
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    known = y >= 0
    ok = (pred == y) & known
    acc = conf[None, :] >= t[:, None]                     # [T, N]

    def rows(mask: np.ndarray) -> dict[str, np.ndarray]:
        a = acc & mask[None, :]
        n_acc = a.sum(1)
        n_lab = (a & known[None, :]).sum(1)
        n_ok = (a & ok[None, :]).sum(1)
        total = int(mask.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = n_acc / total if total else np.full(len(t), np.nan)
            prec = np.where(n_lab > 0, n_ok / np.maximum(n_lab, 1), np.nan)
        return {"threshold": t, "coverage": cov, "precision": prec, "n_accepted": n_acc, "n_correct": n_ok}

    if not per_class:
        return pd.DataFrame(rows(np.ones(len(conf), bool)))
    n_classes = _check_probs(probs).shape[1]
    frames = []
    for c in range(n_classes):
        df = pd.DataFrame(rows(pred == c))
        df.insert(1, "class", class_names[c] if c < len(class_names) else str(c))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def precision_coverage_figure(probs: Any = None, labels: Any = None,
                              thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS, per_class: bool = False,
                              table: pd.DataFrame | None = None, title: str | None = None,
                              class_names: Sequence[str] = EXPRESSIONS, height: int | None = None) -> go.Figure:
    """Precision and coverage against the threshold (from ``probs``/``labels`` or a precomputed ``table`` of
    :func:`precision_coverage`).

    Overall: one panel, traces ``precision`` and ``coverage``. Per class: two panels (precision on top, coverage
    below), one trace per predicted class in each, legend shared.
    """
    if table is None:
        table = precision_coverage(probs, labels, thresholds, per_class=per_class, class_names=class_names)
    per_class = "class" in table.columns
    if not per_class:
        fig = go.Figure([
            go.Scatter(x=table["threshold"], y=table["precision"], name="precision", mode="lines",
                       customdata=table["n_accepted"],
                       hovertemplate="t=%{x:.2f}<br>precision %{y:.3f}<br>accepted %{customdata}<extra></extra>"),
            go.Scatter(x=table["threshold"], y=table["coverage"], name="coverage", mode="lines",
                       line=dict(dash="dash"),
                       hovertemplate="t=%{x:.2f}<br>coverage %{y:.3f}<extra></extra>"),
        ])
        fig.update_layout(height=height or 420)
        fig.update_yaxes(range=[0, 1.02], title_text="fraction")
        fig.update_xaxes(title_text="confidence threshold")
    else:
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                            subplot_titles=["precision of accepted (per predicted class)", "coverage (per predicted class)"])
        for i, (name, df) in enumerate(table.groupby("class", sort=False)):
            color = CLASS_COLORS[i % len(CLASS_COLORS)]
            for row, col in ((1, "precision"), (2, "coverage")):
                fig.add_trace(go.Scatter(x=df["threshold"], y=df[col], name=str(name), legendgroup=str(name),
                                         showlegend=row == 1, mode="lines", line=dict(color=color),
                                         customdata=df["n_accepted"],
                                         hovertemplate=f"{name}<br>t=%{{x:.2f}}<br>{col} %{{y:.3f}}"
                                                       "<br>accepted %{customdata}<extra></extra>"),
                              row=row, col=1)
        fig.update_yaxes(range=[0, 1.02])
        fig.update_xaxes(title_text="confidence threshold", row=2, col=1)
        fig.update_layout(height=height or 650)
    fig.update_layout(title=title or "precision and coverage of confidence thresholding", template="plotly_white")
    return fig


def confidence_histogram_figure(probs: Any, labels: Any = None, by_class: bool = True, bins: int = 20,
                                class_names: Sequence[str] = EXPRESSIONS, cols: int = 4,
                                title: str | None = None) -> go.Figure:
    """Histograms of the confidence (max probability), one panel per PREDICTED class (or one panel with
    ``by_class=False``), stacked as correct / incorrect where labels are known (samples with label -1, or all with
    ``labels=None``, form an ``unlabelled`` group).

    Counts are computed here (numpy, ``bins`` equal bins over [0, 1]) and drawn as bars, so the figure's data are
    the exact counts.
    """
    conf, pred = confidences(probs)
    y = _labels(labels, len(conf))
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    groups = [("correct", (pred == y) & (y >= 0), CORRECT), ("incorrect", (pred != y) & (y >= 0), INCORRECT),
              ("unlabelled", y < 0, UNLABELLED)]
    groups = [g for g in groups if g[1].any()] or [("unlabelled", y < 0, UNLABELLED)]
    n_classes = _check_probs(probs).shape[1]
    panels = [(class_names[c] if c < len(class_names) else str(c), pred == c) for c in range(n_classes)] \
        if by_class else [("all classes", np.ones(len(conf), bool))]
    ncols = min(cols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[f"{n} (n={int(m.sum())})" for n, m in panels],
                        shared_xaxes=True, horizontal_spacing=0.05, vertical_spacing=0.12)
    for k, (pname, pmask) in enumerate(panels):
        r, c = divmod(k, ncols)
        for gname, gmask, color in groups:
            counts, _ = np.histogram(conf[pmask & gmask], bins=edges)
            fig.add_trace(go.Bar(x=centres, y=counts, width=edges[1] - edges[0], name=gname, legendgroup=gname,
                                 showlegend=k == 0, marker_color=color,
                                 hovertemplate=f"{pname}<br>{gname}<br>conf %{{x:.2f}}: %{{y}}<extra></extra>"),
                          row=r + 1, col=c + 1)
    fig.update_xaxes(range=[0, 1])
    fig.update_layout(barmode="stack", bargap=0, template="plotly_white", height=280 * nrows + 80,
                      title=title or "confidence (max probability) per predicted class")
    return fig


def _history_frame(history: Any, class_names: Sequence[str]) -> pd.DataFrame:
    """Long table ``step, stream, class, threshold`` from the supported history layouts."""
    recs: list[dict[str, Any]] = []

    def add(step: int, stream: str, values: Any) -> None:
        v = _np(values).astype(np.float64).reshape(-1)
        for c, x in enumerate(v):
            recs.append({"step": int(step), "stream": stream,
                         "class": class_names[c] if c < len(class_names) else str(c), "threshold": float(x)})

    if isinstance(history, Mapping):
        # {stream: [{"step", "thresholds": [...]}, ...]}  or  {stream: [[...], ...]} (one list per logged step)
        for stream, seq in history.items():
            for i, rec in enumerate(seq):
                if isinstance(rec, Mapping):
                    if "thresholds" in rec:
                        add(rec.get("step", i), str(stream), rec["thresholds"])
                else:
                    add(i, str(stream), rec)
    else:
        for i, rec in enumerate(history):
            if not isinstance(rec, Mapping) or "thresholds" not in rec:
                continue  # e.g. loss / eval records of a RunResult.history
            th = rec["thresholds"]
            step = rec.get("step", i)
            if isinstance(th, Mapping):
                for stream, v in th.items():
                    add(step, str(stream), v)
            else:
                add(step, "", th)
    if not recs:
        raise ValueError("no thresholds found in the history (records need a 'thresholds' entry)")
    return pd.DataFrame(recs)


def threshold_curves_figure(history: Any, class_names: Sequence[str] = EXPRESSIONS, title: str | None = None,
                            cols: int = 2) -> go.Figure:
    """Per-class dynamic thresholds over training.

    ``history`` is a list of records ``{"step": int, "thresholds": [C floats]}``, or for multi-stream methods
    ``{"step": int, "thresholds": {stream: [C floats]}}``; a mapping ``{stream: [records or C-lists]}`` is accepted
    too. Records without ``"thresholds"`` are skipped, so a trainer history can be passed as is. One line per
    class; one panel per stream (a single panel when there are no streams).
    """
    df = _history_frame(history, class_names)
    streams = list(dict.fromkeys(df["stream"]))
    ncols = min(cols, len(streams))
    nrows = -(-len(streams) // ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[s for s in streams] if streams != [""] else None,
                        shared_yaxes=True, vertical_spacing=0.12 if nrows > 1 else 0.1)
    classes = list(dict.fromkeys(df["class"]))
    for k, stream in enumerate(streams):
        r, c = divmod(k, ncols)
        sub = df[df["stream"] == stream]
        for i, cls in enumerate(classes):
            d = sub[sub["class"] == cls].sort_values("step")
            fig.add_trace(go.Scatter(x=d["step"], y=d["threshold"], mode="lines", name=cls, legendgroup=cls,
                                     showlegend=k == 0, line=dict(color=CLASS_COLORS[i % len(CLASS_COLORS)]),
                                     hovertemplate=f"{stream + ' ' if stream else ''}{cls}<br>step %{{x}}"
                                                   "<br>threshold %{y:.3f}<extra></extra>"),
                          row=r + 1, col=c + 1)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="threshold", col=1)
    fig.update_layout(title=title or "per-class thresholds over training", template="plotly_white",
                      height=320 * nrows + 100)
    return fig


STATIC_NOTE = ("Static view at threshold {threshold:.2f}: the slider and the class menu need a live kernel. "
               "Open the notebook in JupyterLab (bash scripts/lab.sh) and run it to explore.")


@lru_cache(maxsize=1)
def _explorer_box_class():
    """A ``VBox`` whose display bundle also carries a static HTML view of its explorer (built lazily: ipywidgets
    is imported only when an explorer is made)."""
    import ipywidgets as widgets

    class ExplorerBox(widgets.VBox):
        """The explorer's controls and figure. Its display bundle holds the live widget view and, beside it, a
        ``text/html`` copy of the current figure with a note: JupyterLab shows the widget, while an exported HTML
        report (which has no kernel to answer the slider) falls back to the static copy."""

        explorer: "ThresholdExplorer | None" = None

        def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
            bundle = super()._repr_mimebundle_(**kwargs)
            if bundle is not None and self.explorer is not None:
                bundle["text/html"] = self.explorer.static_html()
            return bundle

    return ExplorerBox


def _figure_widget_class():
    """``go.FigureWidget`` when it can be built (plotly >= 6 needs ``anywidget``), else ``None``."""
    try:
        go.FigureWidget()
    except Exception:  # ImportError: anywidget missing (or an incompatible widget stack)
        return None
    return go.FigureWidget


class ThresholdExplorer:
    """Interactive threshold explorer for a notebook (ipywidgets).

    A ``FloatSlider`` picks the confidence threshold and a ``Dropdown`` highlights one class. The figure has two
    panels over the predicted classes: accepted / rejected counts (stacked bars) and the precision of the accepted
    samples; its title gives the overall coverage and precision at the threshold (and the selected class's).

    ``explorer.figure`` is a ``go.FigureWidget`` when plotly can build one (it needs the ``anywidget`` package since
    plotly 6), otherwise a plain ``go.Figure`` re-displayed in an ``ipywidgets.Output`` on every change; either way
    it holds the current state, so the logic is testable without a browser::

        ex = ThresholdExplorer(probs, labels)
        ex.slider.value = 0.8          # updates ex.figure.data and its title
        ex                             # in a notebook: displays the controls and the figure
    """

    def __init__(self, probs: Any, labels: Any = None, threshold: float = 0.5,
                 class_names: Sequence[str] = EXPRESSIONS, use_figure_widget: bool | None = None) -> None:
        import ipywidgets as widgets

        self.probs = _check_probs(probs)
        self.conf, self.pred = self.probs.max(1), self.probs.argmax(1)
        self.labels = _labels(labels, len(self.conf))
        n_classes = self.probs.shape[1]
        self.class_names = [class_names[c] if c < len(class_names) else str(c) for c in range(n_classes)]
        self.slider = widgets.FloatSlider(value=float(threshold), min=0.0, max=1.0, step=0.01, description="threshold",
                                          continuous_update=True, readout_format=".2f")
        self.dropdown = widgets.Dropdown(options=["all"] + self.class_names, value="all", description="class")
        fw = _figure_widget_class() if use_figure_widget in (None, True) else None
        if use_figure_widget and fw is None:
            raise ImportError("go.FigureWidget is unavailable (plotly >= 6 needs the anywidget package)")
        self.uses_figure_widget = fw is not None
        fig = self._build_figure()
        self.figure = fw(fig) if fw is not None else fig
        self.output = None if fw is not None else widgets.Output()
        self.slider.observe(self._on_change, names="value")
        self.dropdown.observe(self._on_change, names="value")
        self.update()
        self.widget = _explorer_box_class()([widgets.HBox([self.slider, self.dropdown]),
                                             self.figure if fw is not None else self.output])
        self.widget.explorer = self

    # -- state -----------------------------------------------------------------------------------------------
    def stats(self, threshold: float | None = None) -> dict[str, Any]:
        """Counts and precision at ``threshold`` (default: the slider's), overall and per predicted class."""
        t = self.slider.value if threshold is None else float(threshold)
        acc = self.conf >= t
        known = self.labels >= 0
        ok = (self.pred == self.labels) & known
        k = len(self.class_names)
        accepted = np.bincount(self.pred[acc], minlength=k)
        total = np.bincount(self.pred, minlength=k)
        lab = np.bincount(self.pred[acc & known], minlength=k)
        cor = np.bincount(self.pred[acc & ok], minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = np.where(lab > 0, cor / np.maximum(lab, 1), np.nan)
        n_lab = int((acc & known).sum())
        return {
            "threshold": t, "accepted": accepted, "rejected": total - accepted, "precision": prec,
            "coverage": float(acc.mean()) if len(acc) else float("nan"),
            "overall_precision": float(ok[acc].sum() / n_lab) if n_lab else float("nan"),
            "n_accepted": int(acc.sum()),
        }

    def _build_figure(self) -> go.Figure:
        fig = make_subplots(rows=1, cols=2, subplot_titles=["accepted / rejected per predicted class",
                                                            "precision of accepted"], horizontal_spacing=0.1)
        zeros = np.zeros(len(self.class_names))
        fig.add_trace(go.Bar(x=self.class_names, y=zeros, name="accepted"), row=1, col=1)
        fig.add_trace(go.Bar(x=self.class_names, y=zeros, name="rejected", marker_color="#cccccc"), row=1, col=1)
        fig.add_trace(go.Bar(x=self.class_names, y=zeros, name="precision", showlegend=False), row=1, col=2)
        fig.update_yaxes(range=[0, 1.02], row=1, col=2)
        fig.update_layout(barmode="stack", template="plotly_white", height=420)
        return fig

    def title_text(self, s: dict[str, Any]) -> str:
        def pct(v: float) -> str:
            return "n/a" if v != v else f"{100 * v:.1f}%"

        text = (f"threshold {s['threshold']:.2f}: coverage {pct(s['coverage'])} ({s['n_accepted']}/{len(self.conf)}), "
                f"precision {pct(s['overall_precision'])}")
        sel = self.dropdown.value
        if sel != "all":
            c = self.class_names.index(sel)
            n = s["accepted"][c] + s["rejected"][c]
            text += (f" | {sel}: coverage {pct(s['accepted'][c] / n if n else float('nan'))}, "
                     f"precision {pct(s['precision'][c])}")
        return text

    def update(self) -> None:
        """Recompute everything for the current slider / dropdown values and refresh the figure."""
        s = self.stats()
        sel = self.dropdown.value
        colors = [CLASS_COLORS[i % len(CLASS_COLORS)] if sel in ("all", name) else "#dddddd"
                  for i, name in enumerate(self.class_names)]
        with self.figure.batch_update():
            self.figure.data[0].y = s["accepted"].tolist()
            self.figure.data[0].marker.color = colors
            self.figure.data[1].y = s["rejected"].tolist()
            self.figure.data[2].y = [None if v != v else float(v) for v in s["precision"]]
            self.figure.data[2].marker.color = colors
            self.figure.layout.title.text = self.title_text(s)
        self._redisplay()

    def static_note(self) -> str:
        """What the static copy of the explorer says about itself (an exported report has no kernel)."""
        return STATIC_NOTE.format(threshold=self.slider.value)

    def static_html(self) -> str:
        """The current figure as HTML with :meth:`static_note` above it, for a page without a kernel. The figure
        is a plotly div that expects ``Plotly`` on the page (``fer_lab.notebooks.export_html`` embeds plotly.js
        once per report), so it stays interactive for hover and zoom."""
        fig = go.Figure(self.figure)
        div = fig.to_html(full_html=False, include_plotlyjs=False, default_width="100%")
        return (f'<div class="fer-lab-static-explorer"><p class="fer-lab-static-note"><em>'
                f"{html.escape(self.static_note())}</em></p>{div}</div>")

    def _on_change(self, change: dict[str, Any]) -> None:
        self.update()

    def _redisplay(self) -> None:
        if self.output is None:
            return
        try:
            from IPython import get_ipython
        except ImportError:  # pragma: no cover - IPython ships with ipywidgets
            return
        ip = get_ipython()
        if ip is None or getattr(ip, "kernel", None) is None:  # no kernel: no Output to draw into (never print)
            return
        from IPython.display import clear_output, display

        with self.output:
            clear_output(wait=True)
            display(self.figure)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        self._redisplay()
        display(self.widget)
