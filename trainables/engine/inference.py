"""A downloaded checkpoint back into a model, for inference.

``caviar best ID --download DIR`` (or ``GET .../trials/{trial}/checkpoint``) leaves Tune's
checkpoint files and ``caviar.json`` (the trainable's name and the trial's whole config) in DIR::

    python -c "from trainables.engine import load_model; model = load_model('DIR'); print(model)"

gives the trained ``torch.nn.Module`` in eval mode on the CPU; ``model(x).argmax(1)`` predicts
classes for standardized inputs shaped like the dataset's. The trainable must be installed where
this runs (a plug-in's package too): the model is rebuilt by name, never unpickled from code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from trainables.datasets import Dataset, load_dataset
from trainables.registry import TrainableSpec, get_trainable
from trainables.report import load_state

MANIFEST = "caviar.json"


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a Caviar checkpoint (download one with `caviar best ID --download DIR`)")
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def _trial(directory: str | os.PathLike[str]) -> tuple[TrainableSpec, Any]:
    """The checkpoint's trainable and its trial's config model."""
    manifest = read_manifest(directory)
    spec = get_trainable(manifest["trainable"])
    return spec, spec.config(manifest["config"])


def load_model(directory: str | os.PathLike[str], data: Dataset | None = None) -> nn.Module:
    """The checkpoint's trained model in eval mode on the CPU. ``data`` (the trial's dataset, loaded
    once when not given) supplies the input shape and the number of classes."""
    spec, cfg = _trial(directory)
    build = spec.load_model_builder()
    if build is None:
        raise ValueError(f"trainable '{spec.name}' declares no model builder: its checkpoints cannot be loaded as a model")
    data = data if data is not None else load_dataset(cfg.dataset)
    model: nn.Module = build(cfg, data.input_shape, data.n_classes)
    model.load_state_dict(load_state(directory)["model"])
    model.eval()
    return model


def load_data(directory: str | os.PathLike[str]) -> Dataset:
    """The dataset the checkpoint's trial trained on (same split, same standardization)."""
    _, cfg = _trial(directory)
    return load_dataset(cfg.dataset)
