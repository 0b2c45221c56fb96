"""A plug-in trainable, as a user's package would ship one: declared here (torch-free, what the
API imports through the entry point), trained in ``train.py`` (imported only where trials run).

It reports a metric no built-in knows, ``val_f1`` (macro F1 on the validation split), which a
study can optimise."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from trainables import TrainableSpec
from trainables.datasets import DatasetSpec, DigitsSpec


class SoftmaxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: DatasetSpec = Field(default_factory=lambda: DigitsSpec(name="digits"))
    epochs: int = Field(10, ge=1, le=1000)
    lr: float = Field(0.1, gt=0.0, le=10.0)
    l2: float = Field(0.0, ge=0.0, le=1.0)
    seed: int = Field(0, ge=0)


SPEC = TrainableSpec(
    name="softmax_f1",
    train="caviar_f1_plugin.train:softmax_f1",
    config_model=SoftmaxConfig,
    metrics=("val_f1", "val_accuracy", "train_loss"),
    description="NumPy softmax regression; reports macro F1 on the validation split.",
)
