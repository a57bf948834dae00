"""Analysis for notebooks: feature alignment (UMAP, PAD, MMD), confidence thresholds, and attributions.

Submodules are imported lazily by attribute access, so ``import fer_lab.analysis`` stays cheap (UMAP / numba and
Captum are only loaded when used)::

    from fer_lab.analysis import alignment, thresholds, attribution
    from fer_lab.analysis.alignment import extract_features, fit_reducer, umap_figure
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["alignment", "attribution", "disentangle", "gallery", "thresholds"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
