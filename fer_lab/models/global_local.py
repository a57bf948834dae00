"""Global + landmark-patch features of the CD-FER benchmark (seven streams).

The benchmark (Chen et al., TPAMI 2022; HCPLab-SYSU/CD-FER-Benchmark ``ResNet.py`` / ``Dataset.py``, reused by
AGLRLS) builds, on an IR-50 at 112 px:

* a global feature: layer4 map (512 x 7 x 7) -> conv3x3 to 64 -> ReLU -> GAP (64-d);
* five local features: 7 x 7 windows of the stage-2 map (128 x 28 x 28) centred on the five landmarks, each
  through its own "CropNet" (IR units 128->256 x2, 256->512 x2, conv3x3 to 64, ReLU, GAP; 64-d);
* the fused concatenation (384-d).

Here the windows are cut for the whole batch with ONE :func:`torchvision.ops.roi_align` call
(:func:`crop_patches`) instead of the reference per-sample, per-landmark Python loop
(:func:`crop_patches_loop`, kept for tests and the benchmark); with integral boxes the two are exactly equal.

Patch geometry (the benchmark's): a landmark at pixel ``(x, y)`` of the image (pixel ``(i, j)`` covers
``[j, j+1) x [i, i+1)``) falls in feature-map cell ``(floor(x / stride), floor(y / stride))``; the window is
``patch_cells x patch_cells`` cells starting ``patch_cells // 2`` cells before that cell (centred for odd sizes).
By default the centre cell is clamped to ``[half, size - patch_cells + half]`` per axis, which keeps the window
inside the map (for 7 x 7 on a 28 grid that is the benchmark's clamp to ``[3, 24]``); with ``clamp=False``
(or a map smaller than the window) cells outside the map read as zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from fer_lab.labels import LANDMARKS, NUM_LANDMARKS, STREAMS
from fer_lab.models.backbones import Backbone, BottleneckIR, build_backbone, ir_units

__all__ = [
    "CropNet",
    "GlobalHead",
    "GlobalLocalExtractor",
    "LocalHead",
    "build_extractor",
    "crop_patches",
    "crop_patches_loop",
    "landmark_cells",
]


# ---------------------------------------------------------------------------------------------------------------------
# patch cropping
# ---------------------------------------------------------------------------------------------------------------------
def _clamp_range(size: int, patch_cells: int) -> tuple[int, int] | None:
    """Allowed centre cells ``[lo, hi]`` keeping the window inside a map of ``size`` cells (None if impossible)."""
    half = patch_cells // 2
    lo, hi = half, size - patch_cells + half
    return (lo, hi) if hi >= lo else None


def landmark_cells(landmarks: Tensor, stride: float, size: tuple[int, int], patch_cells: int,
                   clamp: bool = True) -> Tensor:
    """Feature-map cell of each landmark.

    Args:
        landmarks: ``[B, K, 2]`` pixel ``(x, y)``.
        stride: pixels per feature-map cell.
        size: ``(height, width)`` of the feature map in cells.
        patch_cells: window size (only used for the clamp range).
        clamp: clamp each coordinate to ``[half, size - patch_cells + half]`` (skipped on an axis where the map is
            smaller than the window).

    Returns:
        ``int64 [B, K, 2]`` cells ``(cx, cy)``.
    """
    pts = landmarks.detach()
    if pts.dtype != torch.float64:
        pts = pts.float()  # (no float64 on some devices; strides are powers of two, so the division is exact)
    cells = torch.floor(pts / stride).to(torch.int64)
    if clamp:
        for axis, n in ((0, size[1]), (1, size[0])):
            rng = _clamp_range(n, patch_cells)
            if rng is not None:
                cells[..., axis] = cells[..., axis].clamp(rng[0], rng[1])
    return cells


def crop_patches(feature_map: Tensor, landmarks: Tensor, stride: float, patch_cells: int = 7,
                 clamp: bool = True) -> Tensor:
    """Cut a ``patch_cells x patch_cells`` window around every landmark with one batched RoIAlign call.

    The boxes have integer cell corners ``[c - half, c - half + patch_cells]`` and are pooled with
    ``aligned=True, sampling_ratio=1`` and one bin per cell, so every sample lands exactly on a cell centre and the
    result equals the naive integer crop (:func:`crop_patches_loop`). When a window can leave the map
    (``clamp=False`` or a map smaller than the window) the map is zero-padded by one cell first: RoIAlign reads a
    sample up to one cell outside the map as the border value, and anything further as zero, so one zero ring makes
    every outside cell read as zero.

    Args:
        feature_map: ``[B, C, H, W]``.
        landmarks: ``[B, K, 2]`` pixel ``(x, y)`` in the image the map was computed from (K = 5 in fer-lab).
        stride: pixels per cell (``image size / map size``; :attr:`Backbone.mid_stride`).
        patch_cells: window size in cells (the benchmark: 7).
        clamp: see :func:`landmark_cells`.

    Returns:
        ``[B, K, C, patch_cells, patch_cells]``; differentiable w.r.t. ``feature_map``.
    """
    if feature_map.dim() != 4 or landmarks.dim() != 3 or landmarks.shape[-1] != 2:
        raise ValueError(f"expected feature_map [B,C,H,W] and landmarks [B,K,2], got "
                         f"{tuple(feature_map.shape)} and {tuple(landmarks.shape)}")
    b, c, h, w = feature_map.shape
    if landmarks.shape[0] != b:
        raise ValueError(f"batch mismatch: feature map {b}, landmarks {landmarks.shape[0]}")
    k = landmarks.shape[1]
    p = int(patch_cells)
    cells = landmark_cells(landmarks, stride, (h, w), p, clamp)
    start = cells - p // 2  # top-left cell (x0, y0)
    inside = clamp and _clamp_range(h, p) is not None and _clamp_range(w, p) is not None
    if not inside:
        feature_map = F.pad(feature_map, (1, 1, 1, 1))
        start = start + 1
    # Half-precision maps are cropped in float32: box coordinates and batch indices must stay exact integers
    # (bfloat16 cannot hold batch index 257), and the crop itself is a copy, so nothing is lost.
    dtype = feature_map.dtype
    work = feature_map if dtype in (torch.float32, torch.float64) else feature_map.float()
    start = start.to(device=work.device, dtype=work.dtype).reshape(b * k, 2)
    batch_idx = torch.arange(b, device=work.device, dtype=work.dtype).repeat_interleave(k)
    boxes = torch.cat([batch_idx[:, None], start, start + p], dim=1)  # [B*K, 5]: (b, x1, y1, x2, y2)
    out = roi_align(work, boxes, output_size=(p, p), spatial_scale=1.0, sampling_ratio=1, aligned=True)
    return out.view(b, k, c, p, p).to(dtype)


def crop_patches_loop(feature_map: Tensor, landmarks: Tensor, stride: float, patch_cells: int = 7,
                      clamp: bool = True) -> Tensor:
    """Reference implementation of :func:`crop_patches`: a per-sample, per-landmark Python loop with slicing and
    :func:`torch.nn.functional.pad`, as the CD-FER benchmark's ``crop_featureMap``. Slow; for tests and the
    benchmark only. Same arguments and result as :func:`crop_patches`."""
    b, c, h, w = feature_map.shape
    p = int(patch_cells)
    half = p // 2
    rng_x, rng_y = _clamp_range(w, p), _clamp_range(h, p)
    pts = landmarks.detach().to("cpu", torch.float64).tolist()
    per_landmark = []
    for i in range(landmarks.shape[1]):
        grids = []
        for j in range(b):
            cx = int(math.floor(pts[j][i][0] / stride))
            cy = int(math.floor(pts[j][i][1] / stride))
            if clamp and rng_x is not None:
                cx = min(max(cx, rng_x[0]), rng_x[1])
            if clamp and rng_y is not None:
                cy = min(max(cy, rng_y[0]), rng_y[1])
            x0, y0 = cx - half, cy - half
            x1, y1 = x0 + p, y0 + p  # exclusive
            mx0, my0, mx1, my1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            if mx1 <= mx0 or my1 <= my0:  # window entirely outside the map
                grids.append(feature_map.new_zeros(c, p, p))
                continue
            grid = feature_map[j, :, my0:my1, mx0:mx1]
            grids.append(F.pad(grid, (mx0 - x0, x1 - mx1, my0 - y0, y1 - my1)))
        per_landmark.append(torch.stack(grids, 0))
    return torch.stack(per_landmark, 1)


# ---------------------------------------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------------------------------------
class GlobalHead(nn.Sequential):
    """Global feature (benchmark ``output_layer``): conv3x3(in -> feat_dim) - ReLU - pool - flatten.

    ``grid = 1`` is the benchmark's global average pooling (``[B, in, h, w] -> [B, feat_dim]``). ``grid = g > 1``
    average-pools to a ``g x g`` grid and flattens it (``[B, in, h, w] -> [B, feat_dim * g * g]``), keeping where on
    the map a feature fired; with ``g`` equal to the map size it is the plain flattened map of the DANN paper's
    digit network. Global pooling discards that layout, and on the digits known-answer shift a domain discriminator
    on pooled features barely adapts (``benchmarks/bench_digits.py``)."""

    def __init__(self, in_channels: int, feat_dim: int = 64, grid: int = 1) -> None:
        if grid < 1:
            raise ValueError(f"global grid must be >= 1, got {grid}")
        super().__init__(nn.Conv2d(in_channels, feat_dim, 3, 1, 1), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(grid), nn.Flatten(1))
        self.out_dim = feat_dim * grid * grid


class LocalHead(nn.Sequential):
    """Light per-landmark head (fer-lab default, ~10x cheaper than :class:`CropNet`):
    conv3x3(in -> width) - BN - ReLU, conv3x3(width -> width, stride 2) - BN - ReLU, conv3x3(width -> feat_dim) -
    ReLU - GAP - flatten. ``[B, in, P, P] -> [B, feat_dim]``."""

    def __init__(self, in_channels: int, feat_dim: int = 64, width: int = 128) -> None:
        super().__init__(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, feat_dim, 3, 1, 1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
        )


class CropNet(nn.Sequential):
    """The benchmark's per-landmark CropNet: IR units in->256 (x2, first stride 2), 256->512 (x2, first stride 2),
    conv3x3(512 -> feat_dim) - ReLU - GAP - flatten. ``[B, in, P, P] -> [B, feat_dim]``."""

    def __init__(self, in_channels: int, feat_dim: int = 64) -> None:
        units: list[BottleneckIR] = ir_units(in_channels, 256, 2) + ir_units(256, 512, 2)
        super().__init__(*units, nn.Conv2d(512, feat_dim, 3, 1, 1), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


# ---------------------------------------------------------------------------------------------------------------------
# extractor
# ---------------------------------------------------------------------------------------------------------------------
class GlobalLocalExtractor(nn.Module):
    """CD-FER benchmark features: one global and five landmark-patch features plus their concatenation.

    Global: ``last`` map -> :class:`GlobalHead`. Local: the ``mid`` map is cut around each landmark with
    :func:`crop_patches` (one batched RoIAlign call for all ``B * 5`` boxes) and each patch goes through its own
    head (:class:`LocalHead` by default, the benchmark's :class:`CropNet` with ``heavy_heads=True``). Fused: the
    concatenation in :data:`fer_lab.labels.STREAMS` order.

    Args:
        backbone: a :class:`Backbone`.
        feat_dim: dimension of each global / local feature (benchmark: 64).
        patch_cells: window size in ``mid`` cells (benchmark: 7 on a 28 x 28 map).
        heavy_heads: use the benchmark's IR-unit CropNet instead of the light head.
        clamp_landmarks: clamp windows inside the map (benchmark behaviour); otherwise zero padding.
        head_width: width of the light head (default: ``mid_channels`` clipped to [32, 256]).
        global_grid: pool the global map to a ``g x g`` grid instead of one cell (:class:`GlobalHead`); the global
            stream then has ``feat_dim * g * g`` dimensions. Default 1, the benchmark's global average pooling.

    Shapes:
        ``forward(images [B,3,H,W] in [0,1], landmarks [B,5,2] pixel (x, y))`` ->
        ``{"global": [B, d g^2], "left_eye": [B, d], ..., "mouth_right": [B, d], "fused": [B, d g^2 + 5d]}``.
    """

    def __init__(self, backbone: Backbone, feat_dim: int = 64, patch_cells: int = 7, heavy_heads: bool = False,
                 clamp_landmarks: bool = True, head_width: int | None = None, global_grid: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.feat_dim = int(feat_dim)
        self.patch_cells = int(patch_cells)
        self.heavy_heads = bool(heavy_heads)
        self.clamp_landmarks = bool(clamp_landmarks)
        self.streams: tuple[str, ...] = STREAMS
        cin = backbone.mid_channels
        width = head_width if head_width is not None else min(max(cin, 32), 256)
        self.global_head = GlobalHead(backbone.out_channels, feat_dim, int(global_grid))
        self.local_heads = nn.ModuleList(
            CropNet(cin, feat_dim) if heavy_heads else LocalHead(cin, feat_dim, width) for _ in range(NUM_LANDMARKS)
        )

    def stream_dim(self, name: str) -> int:
        """Feature dimension of a stream: ``feat_dim`` for a patch, ``feat_dim * g^2`` for ``"global"`` (``g`` the
        global grid, 1 by default) and their sum over the six streams for ``"fused"``."""
        if name not in self.streams:
            raise KeyError(f"unknown stream {name!r}; streams: {', '.join(self.streams)}")
        if name == "fused":
            return self.global_head.out_dim + self.feat_dim * NUM_LANDMARKS
        return self.global_head.out_dim if name == "global" else self.feat_dim

    def patches(self, mid: Tensor, landmarks: Tensor) -> Tensor:
        """The landmark windows of a ``mid`` map: ``[B, 5, C, P, P]``."""
        return crop_patches(mid, landmarks, self.backbone.mid_stride, self.patch_cells, self.clamp_landmarks)

    def forward(self, images: Tensor, landmarks: Tensor) -> dict[str, Tensor]:
        if landmarks.shape[-2:] != (NUM_LANDMARKS, 2):
            raise ValueError(f"landmarks must be [B, {NUM_LANDMARKS}, 2], got {tuple(landmarks.shape)}")
        mid, last = self.backbone(images)
        out = {"global": self.global_head(last)}
        patches = self.patches(mid, landmarks)
        for k, (name, head) in enumerate(zip(LANDMARKS, self.local_heads)):
            out[name] = head(patches[:, k])
        out["fused"] = torch.cat([out[s] for s in self.streams[:-1]], dim=1)
        return out


def build_extractor(backbone: str | Backbone = "smallcnn", feat_dim: int = 64, weights: str | None = None,
                    backbone_kwargs: dict | None = None, **kw) -> GlobalLocalExtractor:
    """Build a backbone by name (optionally loading local ``weights``) and wrap it in a
    :class:`GlobalLocalExtractor`; ``**kw`` go to the extractor (``patch_cells``, ``heavy_heads``, ...)."""
    if isinstance(backbone, str):
        backbone = build_backbone(backbone, weights=weights, **(backbone_kwargs or {}))
    elif weights is not None:
        backbone.load_weights(weights)
    return GlobalLocalExtractor(backbone, feat_dim=feat_dim, **kw)
