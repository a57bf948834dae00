"""One module per paper or baseline, each registered in :data:`METHODS`.

Every module in this folder is imported here, so a new method only needs its file (``@METHODS.register``).
"""

import importlib
import pkgutil

from fer_lab.methods.base import METHODS, Hparams, Method, build_method

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "Hparams", "Method", "build_method"]
