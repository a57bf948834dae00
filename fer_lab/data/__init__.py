"""Datasets: the embedded SynthFER, real-dataset readers, the cached store, and loading."""

from fer_lab.data.store import FaceArrays
from fer_lab.data.spec import DATASETS, DatasetSpec, load_dataset, parse_spec

__all__ = ["DATASETS", "DatasetSpec", "FaceArrays", "load_dataset", "parse_spec"]
