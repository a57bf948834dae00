"""fer-lab: a notebook-centred workbench for cross-domain facial expression recognition."""

from fer_lab.labels import EXPRESSIONS, LANDMARKS, NUM_CLASSES

__version__ = "0.1.0"
__all__ = ["EXPRESSIONS", "LANDMARKS", "NUM_CLASSES", "__version__"]
