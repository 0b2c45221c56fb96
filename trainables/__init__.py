"""Caviar's trainables: PyTorch training functions chosen by name.

Each is a plain function ``train(config: dict) -> None`` that reports one line of metrics per
epoch through :mod:`trainables.report`, inside Ray Tune or standalone
(``python -m trainables NAME --dataset D --epochs N --config '{...}'``). No FastAPI here.
"""

from trainables.datasets import DATASET_NAMES, DatasetError, data_dir, load_dataset
from trainables.registry import TrainableSpec, UnknownTrainable, get_trainable, list_trainables

__all__ = [
    "DATASET_NAMES",
    "DatasetError",
    "TrainableSpec",
    "UnknownTrainable",
    "data_dir",
    "get_trainable",
    "list_trainables",
    "load_dataset",
]
