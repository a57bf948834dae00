"""Fixed (landmark-free) regions of a feature map, average-pooled to one vector per region.

:func:`fixed_regions` cuts every map of a batch with one named layout from :data:`LAYOUTS` and returns
``[B, R, C]``. A layout is a function of the map's height and width returning ``R`` boxes ``(y0, y1, x0, x1)``
(end-exclusive cell indices); add one with a single entry in :data:`LAYOUTS`.

Layouts:

* ``"overlap4"``: four overlapping square crops at the corners, each ``round(5 / 7 * side)`` cells wide (DMSRL's
  released code, ``model/vgg2.py`` ``VGG_local_global``: 5 x 5 crops ``[0:5]`` and ``[2:7]`` of the 7 x 7 VGG map,
  top-left, top-right, bottom-left, bottom-right).
* ``"quadrants"``: the four non-overlapping quadrants, top-left, top-right, bottom-left, bottom-right (LA-CMFER's
  released code, ``models/LA-CMFER.py`` ``CropNet``: ``[0:14]`` and ``[14:28]`` of the 28 x 28 stage-2 map).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["LAYOUTS", "fixed_regions", "region_boxes"]

Box = tuple[int, int, int, int]


def _quadrants(h: int, w: int) -> list[Box]:
    if h < 2 or w < 2:
        raise ValueError(f"fer_lab/models/regions.py: layout 'quadrants' needs a map of at least 2 x 2, got {h} x {w}")
    mh, mw = h // 2, w // 2
    return [(y0, y1, x0, x1) for y0, y1 in ((0, mh), (mh, h)) for x0, x1 in ((0, mw), (mw, w))]


def _overlap4(h: int, w: int) -> list[Box]:
    sh, sw = max(1, round(5 * h / 7)), max(1, round(5 * w / 7))
    return [(y, y + sh, x, x + sw) for y in (0, h - sh) for x in (0, w - sw)]


#: layout name -> ``f(height, width) -> [(y0, y1, x0, x1), ...]``
LAYOUTS: dict[str, Callable[[int, int], list[Box]]] = {
    "overlap4": _overlap4,
    "quadrants": _quadrants,
}


def region_boxes(layout: str, height: int, width: int) -> list[Box]:
    """The boxes of ``layout`` on a ``height x width`` map."""
    if layout not in LAYOUTS:
        raise ValueError(f"fer_lab/models/regions.py: unknown region layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[layout](int(height), int(width))


def fixed_regions(fmap: Tensor, layout: str) -> Tensor:
    """Average-pool each region of ``layout``: ``fmap [B, C, H, W] -> [B, R, C]`` (differentiable)."""
    if fmap.dim() != 4:
        raise ValueError(f"fer_lab/models/regions.py: expected a feature map [B, C, H, W], got {tuple(fmap.shape)}")
    boxes = region_boxes(layout, fmap.shape[2], fmap.shape[3])
    return torch.stack([fmap[:, :, y0:y1, x0:x1].mean(dim=(2, 3)) for y0, y1, x0, x1 in boxes], dim=1)
