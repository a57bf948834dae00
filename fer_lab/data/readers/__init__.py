"""Readers for the licence-gated FER datasets, one module each, registered in :data:`READERS`."""

from fer_lab.data.readers.base import READERS, Dropped, Manifest, Reader, ReaderError, Record, read_image

__all__ = ["READERS", "Dropped", "Manifest", "Reader", "ReaderError", "Record", "read_image"]
