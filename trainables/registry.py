"""Trainables by name, torch-free. The network carries names, never code.

A :class:`TrainableSpec` declares a trainable: its config model (every knob with a default), the
metrics it reports each epoch (what a study may optimise and what the service records), and where
its training function and model builder live, as ``"module:attribute"`` references that are
imported only where training runs. The API validates a study against specs without importing
PyTorch.

Built-ins are registered here; users add their own with an entry point in the
``caviar.trainables`` group whose object is a :class:`TrainableSpec`::

    [project.entry-points."caviar.trainables"]
    my_net = "my_package.caviar:MY_NET_SPEC"

The module the entry point names is imported by the API too: keep it light (declarations only,
with ``train`` as a reference string to the module that imports torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

from trainables.config import BusyWorkConfig, CNNConfig, MLPConfig

ENTRY_POINT_GROUP = "caviar.trainables"
TrainFn = Callable[[dict[str, Any]], None]

# what the built-in PyTorch trainables report each epoch (besides `epoch` and, on divergence, `diverged`);
# param_count and latency_ms (a forward pass over 256 validation examples) are what a multi-objective
# study trades accuracy against
CLASSIFIER_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_confidence", "lr", "samples_per_s", "param_count", "latency_ms")


def _resolve(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class TrainableSpec:
    """A trainable: the function Tune runs, the config model it accepts, the metrics it reports and
    (optionally) how to rebuild its model from a checkpoint for held-out test metrics.

    ``train`` and ``build_model`` are callables or ``"module:attribute"`` references, resolved on
    first use (in a Ray worker or the study's driver, never in the API).
    """

    name: str
    train: str | TrainFn
    config_model: type[BaseModel]
    metrics: tuple[str, ...]
    description: str = ""
    build_model: str | Callable[..., Any] | None = None
    # knobs a person may change while a trial runs (panda mode: POST .../trials/{id}/adjust); the
    # trainable applies them at its next epoch boundary (trainables.report: Reporter.adjustments)
    adjustable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.metrics:
            raise ValueError(f"trainable {self.name}: declare at least one metric it reports")
        for reserved in ("epoch", "diverged"):
            if reserved in self.metrics:
                raise ValueError(f"trainable {self.name}: '{reserved}' is reported by every trainable; do not declare it")
        unknown = [k for k in self.adjustable if k not in self.config_model.model_fields]
        if unknown:
            raise ValueError(f"trainable {self.name}: adjustable {unknown} are not knobs of {self.config_model.__name__}")

    def load_train(self) -> TrainFn:
        return _resolve(self.train)

    def load_model_builder(self) -> Callable[..., Any] | None:
        return _resolve(self.build_model) if self.build_model is not None else None

    def config(self, values: dict[str, Any]) -> Any:
        """A trial's config as this trainable's config model (keys it does not declare are ignored:
        a stored trial config also holds what the service adds)."""
        knobs = self.config_model.model_fields
        return self.config_model.model_validate({k: v for k, v in values.items() if k in knobs})

    def knobs(self) -> dict[str, Any]:
        """Knob name -> default (the dataset spec shown by name)."""
        out: dict[str, Any] = {}
        for name, field in self.config_model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            out[name] = default.model_dump() if isinstance(default, BaseModel) else default
        return out


ADJUSTABLE = ("lr", "weight_decay", "dropout")  # what the built-in loop applies mid-run (trainables.engine.loop)

BUILTIN = {
    spec.name: spec
    for spec in (
        TrainableSpec("mlp_bn_softmax", "trainables.engine.builtin:mlp_bn_softmax", MLPConfig, CLASSIFIER_METRICS,
                      "A multilayer perceptron with BatchNorm and a softmax classifier.", "trainables.engine.models:build_mlp", ADJUSTABLE),
        TrainableSpec("cnn_bn_softmax", "trainables.engine.builtin:cnn_bn_softmax", CNNConfig, CLASSIFIER_METRICS,
                      "A small BatchNorm CNN for 1-D signals (MNIST-1D) and 8x8 images (digits).", "trainables.engine.models:build_cnn",
                      ADJUSTABLE),
        TrainableSpec("busy_work", "trainables.busy_work:busy_work", BusyWorkConfig, ("train_loss", "val_loss", "val_accuracy"),
                      "For benchmarks and cluster checks: fixed CPU work per epoch and a score of x and y only "
                      "(best at x=0.3, y=0.7). No data, no model."),
    )
}


class UnknownTrainable(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@cache
def _plugins() -> dict[str, TrainableSpec]:
    found: dict[str, TrainableSpec] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        spec = ep.load()
        if not isinstance(spec, TrainableSpec):
            raise TypeError(f"entry point {ep.name} in {ENTRY_POINT_GROUP} must be a TrainableSpec")
        found[ep.name] = spec
    return found


def list_trainables() -> dict[str, TrainableSpec]:
    return {**_plugins(), **BUILTIN}  # a plug-in cannot shadow a built-in


def get_trainable(name: str) -> TrainableSpec:
    specs = list_trainables()
    if name not in specs:
        raise UnknownTrainable(f"unknown trainable '{name}' (known: {', '.join(sorted(specs))})")
    return specs[name]
