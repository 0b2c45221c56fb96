"""Trainables by name. The network carries names, never code.

Built-ins are registered here; users add their own with an entry point in the
``caviar.trainables`` group whose object is a :class:`TrainableSpec`::

    [project.entry-points."caviar.trainables"]
    my_net = "my_package.caviar:MY_NET_SPEC"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

from trainables import builtin
from trainables.config import BusyWorkConfig, CNNConfig, MLPConfig
from trainables.engine import ModelBuilder
from trainables.models import build_cnn, build_mlp

ENTRY_POINT_GROUP = "caviar.trainables"


@dataclass(frozen=True)
class TrainableSpec:
    """A trainable: the function Tune runs, the config model it accepts, and (optionally) how to
    rebuild its model from a checkpoint for held-out test metrics."""

    name: str
    train: Callable[[dict[str, Any]], None]
    config_model: type[BaseModel]
    description: str = ""
    build_model: ModelBuilder | None = None

    def knobs(self) -> dict[str, Any]:
        """Knob name -> default (the dataset spec shown by name)."""
        out: dict[str, Any] = {}
        for name, field in self.config_model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            out[name] = default.model_dump() if isinstance(default, BaseModel) else default
        return out


BUILTIN = {
    spec.name: spec
    for spec in (
        TrainableSpec("mlp_bn_softmax", builtin.mlp_bn_softmax, MLPConfig, builtin.mlp_bn_softmax.__doc__ or "", build_mlp),
        TrainableSpec("cnn_bn_softmax", builtin.cnn_bn_softmax, CNNConfig, builtin.cnn_bn_softmax.__doc__ or "", build_cnn),
        TrainableSpec("busy_work", builtin.busy_work, BusyWorkConfig, builtin.busy_work.__doc__ or ""),
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
