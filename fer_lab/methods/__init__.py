"""One module per paper or baseline, each registered in :data:`METHODS`."""

from fer_lab.methods.base import METHODS, Hparams, Method, build_method
from fer_lab.methods import aglrls, cdan, dann, gen_fer, iwdan, source_only  # noqa: F401  (registration)

__all__ = ["METHODS", "Hparams", "Method", "build_method"]
