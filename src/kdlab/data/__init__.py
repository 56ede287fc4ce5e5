"""The data layer: dataset readers (no downloads), splits, and batch sources on the training device.

``build_data(data_section, runtime)`` returns a :class:`DataBundle` whose ``train``/``val``/``test`` are
:class:`BatchSource` objects yielding normalized :class:`Batch` es. Registered datasets: see
:func:`list_datasets`.
"""

from kdlab.data import domains
from kdlab.data.batch import Batch, BatchSource
from kdlab.data.build import DataBundle, build_data
from kdlab.data.catalog import DATASETS, list_datasets
from kdlab.data.errors import DatasetFormatError, DatasetNotFoundError
from kdlab.data.facts import DataFacts
from kdlab.data.stream_source import StreamBatchSource
from kdlab.data.user import DataInput, UserData, build_user_data

__all__ = [
    "DATASETS",
    "Batch",
    "BatchSource",
    "DataBundle",
    "DataFacts",
    "DataInput",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "StreamBatchSource",
    "UserData",
    "build_data",
    "build_user_data",
    "domains",
    "list_datasets",
]
