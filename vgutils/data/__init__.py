"""Datasets: manifest with checksums, loaders with explicit box formats, validation,
and the embedded sample sets."""

from vgutils.data.images import load_image
from vgutils.data.loaders import load_dataset, read_dataset, resolve_dataset
from vgutils.data.manifest import DataError, data_root
from vgutils.data.rows import Problem, Sample

__all__ = [
    "DataError",
    "Problem",
    "Sample",
    "data_root",
    "load_dataset",
    "load_image",
    "read_dataset",
    "resolve_dataset",
]
