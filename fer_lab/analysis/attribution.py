"""Pixel attributions of a method's prediction (Captum) and how much of them falls on each landmark patch.

* :func:`attribute`: integrated gradients, occlusion, saliency or Grad-CAM maps ``[B, H, W]`` for a batch. The
  model input seen by Captum is the image; the batch's landmarks are held fixed (they are passed as an additional
  forward argument, which Captum expands along integrated gradients' interpolation steps).
* :func:`patch_attribution`: the share of each map's mass inside each landmark window (+ the rest).
* :func:`patch_attribution_table`: mean shares per class or per domain over a dataset.
* :func:`overlay_figure`, :func:`patch_bar_figure`: plotly figures (returned, never shown).

Attribution never changes the method: it runs in eval mode with the parameters' ``requires_grad`` switched off
(so no ``.grad`` is written to them; gradients only flow to the input image), and restores both afterwards.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor, nn

from fer_lab.data.loading import Batch, FaceTensors, to_device
from fer_lab.evaluate import eval_mode
from fer_lab.labels import EXPRESSIONS, LANDMARKS

__all__ = [
    "ALGORITHMS",
    "DEFAULT_RADIUS",
    "REGIONS",
    "attribute",
    "make_baseline",
    "overlay_figure",
    "patch_attribution",
    "patch_attribution_samples",
    "patch_attribution_table",
    "patch_bar_figure",
    "window_radius",
]

ALGORITHMS = ("integrated_gradients", "occlusion", "saliency", "gradcam")
#: Columns of :func:`patch_attribution`: the five landmark windows, then the mass outside all of them.
REGIONS: tuple[str, ...] = LANDMARKS + ("rest",)
#: Half-side of the default window: 7 cells x stride 4 / 2 (the extractor's patch on the smallcnn / IR backbones).
DEFAULT_RADIUS = 14.0
REGION_COLORS = ("#1f77b4", "#aec7e8", "#2ca02c", "#d62728", "#ff9896", "#7f7f7f")


class _ImageToLogits(nn.Module):
    """``images [B,3,H,W], landmarks [B,5,2] -> method.predict({"images", "landmarks"})``."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: Tensor, landmarks: Tensor) -> Tensor:
        return self.method.predict({"images": images, "landmarks": landmarks})


@contextmanager
def _frozen(method: nn.Module) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` on every parameter for the duration; both restored afterwards."""
    flags = [(p, p.requires_grad) for p in method.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with eval_mode(method):
            yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def window_radius(method: nn.Module) -> float:
    """Half-side in pixels of the method's landmark patch: ``patch_cells * mid_stride / 2``."""
    ext = getattr(method, "extractor", method)
    return float(ext.patch_cells * ext.backbone.mid_stride / 2)


def make_baseline(images: Tensor, baseline: str | Tensor | float = "black") -> Tensor:
    """Reference images for integrated gradients / occlusion.

    ``"black"``: zeros (the backbones normalise internally, so this is a black image); ``"blur"``: a Gaussian
    blur with sigma = size / 16; ``"mean"``: each image's mean colour everywhere; a float: that grey level; a
    tensor: used as is (broadcast to the images).
    """
    if isinstance(baseline, Tensor):
        return baseline.to(images).expand_as(images).contiguous()
    if isinstance(baseline, (int, float)):
        return torch.full_like(images, float(baseline))
    if baseline == "black":
        return torch.zeros_like(images)
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).contiguous()
    if baseline == "blur":
        from torchvision.transforms.functional import gaussian_blur

        size = min(images.shape[-2:])
        sigma = max(size / 16.0, 0.5)
        k = min(2 * math.ceil(3 * sigma) + 1, 2 * ((size - 1) // 2) + 1)
        return gaussian_blur(images, [k, k], [sigma, sigma])
    raise ValueError(f"unknown baseline {baseline!r}; use 'black', 'blur', 'mean', a float or a tensor")


def _resolve_layer(method: nn.Module, layer: str | nn.Module) -> tuple[nn.Module, int | None]:
    """The module Grad-CAM hooks and, when its output is a tuple, which element to use."""
    if isinstance(layer, nn.Module):
        return layer, None
    backbone = method.extractor.backbone
    if layer == "mid":
        return backbone, 0  # Backbone.forward -> (mid, last)
    if layer == "last":
        return backbone, 1
    try:
        return method.get_submodule(layer), None
    except AttributeError:
        raise ValueError(f"unknown layer {layer!r}: use 'mid', 'last', an nn.Module or a dotted submodule name "
                         f"such as 'extractor.backbone.stage3'") from None


def attribute(method: nn.Module, batch: Batch, target: int | Tensor | None = None,
              algorithm: str = "integrated_gradients", baseline: str | Tensor | float = "black", n_steps: int = 32,
              internal_batch_size: int | None = None, layer: str | nn.Module = "mid",
              window: int | None = None, stride: int | None = None, absolute: bool = True,
              return_delta: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Attribution maps ``[B, H, W]`` (on the images' device, float32, detached) of the logit of ``target``.

    Args:
        method: a :class:`~fer_lab.methods.Method`; its mode and parameters are left as they were.
        batch: needs ``images [B,3,H,W]`` and ``landmarks [B,5,2]`` (held fixed).
        target: class index (int or ``[B]``); ``None`` = each sample's predicted class.
        algorithm: ``"integrated_gradients"``, ``"occlusion"``, ``"saliency"`` (|gradient|) or ``"gradcam"``.
        baseline: see :func:`make_baseline` (integrated gradients and occlusion).
        n_steps: integrated-gradients steps (Gauss-Legendre, Captum's default).
        internal_batch_size: images per forward pass for integrated gradients (default ``max(B, 64)``).
        layer: Grad-CAM layer: ``"mid"`` (the backbone map the landmark patches are cut from), ``"last"``, a dotted
            submodule name or a module. The map (ReLU'd, channel-weighted) is bilinearly upsampled to the image.
        window, stride: occlusion square side and step in pixels (default size / 8 and half of it); the occluded
            square is filled with the baseline.
        absolute: pixel methods: ``|a|`` summed over the colour channels (default); ``False``: signed channel sum.
            Grad-CAM maps are non-negative either way. Occlusion gives all three channels the same value, so its
            channel sum is three times the per-pixel effect.
        return_delta: integrated gradients only: also return Captum's convergence delta ``[B]``
            (``sum of attributions - (f(x) - f(baseline))``).
    """
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency

    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")
    if return_delta and algorithm != "integrated_gradients":
        raise ValueError("return_delta is only defined for integrated gradients")
    images = batch["images"].detach()
    landmarks = batch["landmarks"].detach().to(images.device)
    b, _, h, w = images.shape
    model = _ImageToLogits(method)
    with _frozen(method):
        if target is None:
            with torch.no_grad():
                target = model(images, landmarks).argmax(1)
        elif isinstance(target, Tensor):
            target = target.to(images.device).long().reshape(-1)
        delta = None
        if algorithm == "integrated_gradients":
            ig = IntegratedGradients(model)
            out = ig.attribute(images, baselines=make_baseline(images, baseline), target=target,
                               additional_forward_args=(landmarks,), n_steps=n_steps,
                               internal_batch_size=internal_batch_size or max(b, 64),
                               return_convergence_delta=return_delta)
            attr, delta = out if return_delta else (out, None)
        elif algorithm == "saliency":
            attr = Saliency(model).attribute(images.clone().requires_grad_(True), target=target, abs=absolute,
                                             additional_forward_args=(landmarks,))
        elif algorithm == "occlusion":
            side = window or max(2, min(h, w) // 8)
            step = stride or max(1, side // 2)
            attr = Occlusion(model).attribute(images, sliding_window_shapes=(3, side, side), strides=(3, step, step),
                                              baselines=make_baseline(images, baseline), target=target,
                                              additional_forward_args=(landmarks,))
        else:
            module, element = _resolve_layer(method, layer)
            cam = LayerGradCam(model, module).attribute(images, target=target, additional_forward_args=(landmarks,),
                                                        relu_attributions=True)
            if isinstance(cam, tuple):
                cam = cam[element or 0]
            cam = LayerAttribution.interpolate(cam, (h, w), interpolate_mode="bilinear")
            return cam.detach().float().clamp_min(0.0)[:, 0]
    attr = attr.detach().float()
    attr = attr.abs().sum(1) if absolute else attr.sum(1)
    if return_delta:
        return attr, delta.detach().float()
    return attr


# ---------------------------------------------------------------------------------------------------------------------
# landmark windows
# ---------------------------------------------------------------------------------------------------------------------
def _window_masks(landmarks: Tensor, radius: float, h: int, w: int) -> tuple[Tensor, Tensor]:
    """``inside_y [B,K,H]`` and ``inside_x [B,K,W]``: pixel rows / columns whose centre lies in
    ``[c - radius, c + radius)`` around each landmark coordinate ``c``."""
    ys = torch.arange(h, dtype=torch.float64, device=landmarks.device) + 0.5
    xs = torch.arange(w, dtype=torch.float64, device=landmarks.device) + 0.5
    lx = landmarks[..., 0:1].double()
    ly = landmarks[..., 1:2].double()
    inside_x = (xs >= lx - radius) & (xs < lx + radius)
    inside_y = (ys >= ly - radius) & (ys < ly + radius)
    return inside_y, inside_x


def patch_attribution(attr: Tensor | np.ndarray, landmarks: Tensor | np.ndarray, radius: float | None = None,
                      overlap: str = "count") -> Tensor:
    """Share of each map's total mass in each landmark window, and outside all of them: ``[B, 6]`` with columns
    :data:`REGIONS` = ``LANDMARKS + ("rest",)``.

    The window of a landmark at pixel coordinates ``(x, y)`` is the square of pixels whose centre ``(j + 0.5,
    i + 0.5)`` lies in ``[x - r, x + r) x [y - r, y + r)`` (clipped to the image; with integral ``x, y, r`` it is
    exactly the ``2r x 2r`` square). ``radius`` defaults to :data:`DEFAULT_RADIUS` (use :func:`window_radius` to get
    a method's own patch size; :func:`patch_attribution_table` does).

    Overlapping windows (frequent at small image sizes, where a 7-cell patch covers most of the face):

    * ``overlap="count"`` (default): each window counts all the mass inside it, so a pixel in two windows counts
      for both and the five landmark shares can add up to more than 1; ``rest`` is the mass outside every window.
      The row sums to 1 only when the windows are disjoint.
    * ``overlap="nearest"``: a pixel inside several windows counts only for the nearest of those landmarks
      (Euclidean distance to its centre; ties to the first in :data:`LANDMARKS` order), so each row sums to 1.

    Maps must be non-negative (``attribute(..., absolute=True)`` or Grad-CAM). A map with zero total mass gives a
    row of NaN. Fully vectorised over the batch.
    """
    a = torch.as_tensor(attr).double()
    lm = torch.as_tensor(landmarks).to(a.device)
    if a.dim() != 3 or lm.dim() != 3 or lm.shape[-1] != 2 or lm.shape[0] != a.shape[0]:
        raise ValueError(f"expected attr [B,H,W] and landmarks [B,K,2], got {tuple(a.shape)} and {tuple(lm.shape)}")
    if (a < 0).any():
        raise ValueError("patch_attribution needs non-negative maps (use absolute attributions)")
    if overlap not in ("count", "nearest"):
        raise ValueError(f"overlap must be 'count' or 'nearest', got {overlap!r}")
    r = DEFAULT_RADIUS if radius is None else float(radius)
    b, h, w = a.shape
    inside_y, inside_x = _window_masks(lm, r, h, w)
    masks = inside_y[:, :, :, None] & inside_x[:, :, None, :]                        # [B,K,H,W]
    if overlap == "nearest":
        ys = torch.arange(h, dtype=torch.float64, device=a.device) + 0.5
        xs = torch.arange(w, dtype=torch.float64, device=a.device) + 0.5
        d2 = ((xs[None, None, None, :] - lm[..., 0, None, None].double()) ** 2
              + (ys[None, None, :, None] - lm[..., 1, None, None].double()) ** 2)   # [B,K,H,W]
        d2 = torch.where(masks, d2, torch.full_like(d2, math.inf))
        nearest = d2.argmin(1, keepdim=True)                                          # first minimum on ties
        masks = masks & (torch.arange(masks.shape[1], device=a.device)[None, :, None, None] == nearest)
    mass = torch.einsum("bhw,bkhw->bk", a, masks.double())
    rest = (a * (~masks.any(1)).double()).sum((1, 2))
    total = a.sum((1, 2))
    shares = torch.cat([mass, rest[:, None]], 1) / total[:, None]
    shares[total <= 0] = float("nan")
    return shares.float()


# ---------------------------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------------------------
def _datasets(data: FaceTensors | Sequence[FaceTensors] | Mapping[str, FaceTensors]) -> list[tuple[str, FaceTensors]]:
    if isinstance(data, FaceTensors):
        return [(data.name, data)]
    if isinstance(data, Mapping):
        return [(str(k), v) for k, v in data.items()]
    return [(d.name, d) for d in data]


def patch_attribution_samples(method: nn.Module, data: FaceTensors | Sequence[FaceTensors] | Mapping[str, FaceTensors],
                              n: int | None = 128, algorithm: str = "integrated_gradients", batch_size: int = 16,
                              seed: int = 0, radius: float | None = None, overlap: str = "count",
                              device: str | torch.device = "cpu", **attr_kwargs: Any) -> pd.DataFrame:
    """Per-sample landmark shares: one row per sample with ``domain``, ``index``, ``label``, ``prediction`` and the
    :data:`REGIONS` columns. ``n`` samples per dataset (seeded subset; ``None`` = all); ``radius`` defaults to the
    method's own patch (:func:`window_radius`). Other keyword arguments go to :func:`attribute`."""
    r = window_radius(method) if radius is None else float(radius)
    frames = []
    for name, ds in _datasets(data):
        rows = np.arange(len(ds))
        if n is not None and n < len(ds):
            rows = np.sort(np.random.default_rng(seed).choice(len(ds), int(n), replace=False))
        for i in range(0, len(rows), batch_size):
            batch = to_device(ds.batch(torch.from_numpy(rows[i:i + batch_size])), device)
            with _frozen(method), torch.no_grad():
                pred = method.predict(batch).argmax(1)
            attr = attribute(method, batch, target=pred, algorithm=algorithm, **attr_kwargs)
            shares = patch_attribution(attr, batch["landmarks"], r, overlap=overlap).cpu().numpy()
            df = pd.DataFrame(shares, columns=list(REGIONS))
            df.insert(0, "domain", name)
            df.insert(1, "index", batch["index"].cpu().numpy())
            df.insert(2, "label", batch["labels"].cpu().numpy())
            df.insert(3, "prediction", pred.cpu().numpy())
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


def patch_attribution_table(method: nn.Module, data: FaceTensors | Sequence[FaceTensors] | Mapping[str, FaceTensors],
                            per: str = "class", label: str = "true", n: int | None = 128,
                            algorithm: str = "integrated_gradients", batch_size: int = 16, seed: int = 0,
                            radius: float | None = None, overlap: str = "count", device: str | torch.device = "cpu",
                            class_names: Sequence[str] = EXPRESSIONS, samples: pd.DataFrame | None = None,
                            **attr_kwargs: Any) -> pd.DataFrame:
    """Mean landmark shares (:func:`patch_attribution` of the predicted class's attribution) per class or domain.

    Args:
        data: one dataset, several, or ``{name: dataset}`` (the names label the domains).
        per: ``"class"`` or ``"domain"``.
        label: for ``per="class"``: group by the ``"true"`` label (samples with label -1 are left out) or the
            ``"pred"``-icted class.
        n: samples per dataset (seeded subset).
        samples: a precomputed :func:`patch_attribution_samples` frame (then nothing is recomputed).

    Returns:
        one row per group (index named ``class`` or ``domain``; classes in label order), columns
        :data:`REGIONS` (mean share; NaN-rows of empty maps ignored) and ``n`` (samples in the group).
    """
    if per not in ("class", "domain"):
        raise ValueError(f"per must be 'class' or 'domain', got {per!r}")
    if label not in ("true", "pred"):
        raise ValueError(f"label must be 'true' or 'pred', got {label!r}")
    if samples is None:
        samples = patch_attribution_samples(method, data, n=n, algorithm=algorithm, batch_size=batch_size, seed=seed,
                                            radius=radius, overlap=overlap, device=device, **attr_kwargs)
    df = samples
    if per == "class":
        col = "label" if label == "true" else "prediction"
        df = df[df[col] >= 0]
        key = df[col].map(lambda c: class_names[c] if c < len(class_names) else str(c))
        order = [c for c in class_names if c in set(key)] + sorted(set(key) - set(class_names))
    else:
        key = df["domain"]
        order = list(dict.fromkeys(key))
    table = df[list(REGIONS)].groupby(key.rename(per)).mean()
    table["n"] = key.value_counts()
    return table.reindex(order).rename_axis(per)


# ---------------------------------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------------------------------
_HEAT = [[0.0, "rgba(255,0,0,0)"], [0.3, "rgba(255,80,0,0.35)"], [0.7, "rgba(255,200,0,0.7)"],
         [1.0, "rgba(255,255,80,0.9)"]]


def overlay_figure(images: Tensor | np.ndarray, attr: Tensor | np.ndarray, landmarks: Tensor | np.ndarray,
                   titles: Sequence[str] | None = None, radius: float | None = None, cols: int = 4,
                   max_images: int = 16, opacity: float = 1.0, cell: int = 220) -> go.Figure:
    """Each image with its attribution as a translucent heat map, the landmarks and their windows.

    Per panel three traces (``image``, ``attribution``, ``landmarks``) and five rectangle shapes (the windows of
    :func:`patch_attribution`, half-side ``radius``, default :data:`DEFAULT_RADIUS`). Maps are scaled to [0, 1] per
    image (divided by their maximum). Pixel ``(i, j)`` is drawn over ``[j, j+1) x [i, i+1)``, so landmark
    coordinates are plotted as they are.
    """
    imgs = torch.as_tensor(images).detach().float().cpu()[:max_images]
    a = torch.as_tensor(attr).detach().float().cpu()[:max_images]
    lm = torch.as_tensor(landmarks).detach().float().cpu()[:max_images]
    b, _, h, w = imgs.shape
    r = DEFAULT_RADIUS if radius is None else float(radius)
    ncols = min(cols, b)
    nrows = -(-b // ncols)
    names = list(titles)[:b] if titles is not None else [f"#{i}" for i in range(b)]
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=names, horizontal_spacing=0.02,
                        vertical_spacing=0.06)
    rgb = (imgs.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    peak = a.flatten(1).amax(1).clamp_min(1e-12)
    heat = (a / peak[:, None, None]).clamp(0, 1).numpy()
    centres_x, centres_y = np.arange(w) + 0.5, np.arange(h) + 0.5
    for k in range(b):
        row, col = k // ncols + 1, k % ncols + 1
        fig.add_trace(go.Image(z=rgb[k], x0=0.5, y0=0.5, dx=1, dy=1, name="image", hoverinfo="skip"), row=row, col=col)
        fig.add_trace(go.Heatmap(z=heat[k], x=centres_x, y=centres_y, zmin=0, zmax=1, colorscale=_HEAT,
                                 opacity=opacity, showscale=False, name="attribution",
                                 hovertemplate="x %{x:.1f}, y %{y:.1f}<br>attribution %{z:.2f}<extra></extra>"),
                      row=row, col=col)
        fig.add_trace(go.Scatter(x=lm[k, :, 0].numpy(), y=lm[k, :, 1].numpy(), mode="markers", name="landmarks",
                                 text=list(LANDMARKS), showlegend=False,
                                 marker=dict(size=6, color=[REGION_COLORS[i] for i in range(len(LANDMARKS))],
                                             line=dict(width=1, color="white")),
                                 hovertemplate="%{text}<br>(%{x:.1f}, %{y:.1f})<extra></extra>"),
                      row=row, col=col)
        for i in range(lm.shape[1]):
            x, y = float(lm[k, i, 0]), float(lm[k, i, 1])
            fig.add_shape(type="rect", x0=max(x - r, 0), x1=min(x + r, w), y0=max(y - r, 0), y1=min(y + r, h),
                          line=dict(color=REGION_COLORS[i % len(REGION_COLORS)], width=1), row=row, col=col)
    fig.update_xaxes(range=[0, w], showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(range=[h, 0], showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(height=cell * nrows + 60, width=cell * ncols + 40, margin=dict(l=10, r=10, t=50, b=10),
                      template="plotly_white")
    return fig


def patch_bar_figure(table: pd.DataFrame, title: str | None = None, regions: Sequence[str] = REGIONS) -> go.Figure:
    """Grouped bars of a :func:`patch_attribution_table`: the regions on the x axis, one trace per group (class or
    domain; the legend gives ``n``)."""
    cols = [c for c in regions if c in table.columns]
    per = table.index.name or "group"
    traces = []
    for i, (group, row) in enumerate(table.iterrows()):
        label = f"{group} (n={int(row['n'])})" if "n" in table.columns else str(group)
        traces.append(go.Bar(x=cols, y=[float(row[c]) for c in cols], name=label,
                             hovertemplate=f"{group}<br>%{{x}}: %{{y:.3f}}<extra></extra>"))
    fig = go.Figure(traces)
    fig.update_layout(barmode="group", template="plotly_white", legend_title_text=per,
                      title=title or f"share of attribution per landmark window, per {per}",
                      yaxis_title="mean share of attribution mass", xaxis_title="region")
    return fig
