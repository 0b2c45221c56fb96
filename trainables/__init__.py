"""Caviar's trainables: training functions chosen by name.

This package's top level is torch-free: the registry of names (:mod:`trainables.registry`), each
trainable's config model (:mod:`trainables.config`), the dataset specs (:mod:`trainables.datasets`)
and the one reporting helper (:mod:`trainables.report`). The PyTorch training loop, models and
built-in functions are in :mod:`trainables.engine`, imported only where training runs.

Each trainable is a plain function ``train(config: dict) -> None`` that reports one line of
metrics per epoch through :mod:`trainables.report`, inside Ray Tune or standalone
(``python -m trainables NAME --dataset D --epochs N --config '{...}'``).
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
