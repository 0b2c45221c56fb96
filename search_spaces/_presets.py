"""Preset search spaces: YAML files next to this module, loadable by name.

A preset file has ``description``, ``parameters`` and optionally ``include`` (presets merged first,
in order) and ``exclude`` (parameter names dropped after including). Later declarations of the
same name replace earlier ones, so a preset can narrow one parameter of the preset it includes.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from search_spaces._model import SearchSpace, SearchSpaceError, parse_space

PRESET_DIR = Path(__file__).with_name("presets")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


@cache
def _raw(name: str) -> dict[str, Any]:
    if name not in list_presets():
        raise SearchSpaceError(
            None, f"unknown search-space preset '{name}' (known: {', '.join(list_presets())})"
        )
    data = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text())
    return data if isinstance(data, dict) else {}


def preset_description(name: str) -> str:
    return str(_raw(name).get("description", "")).strip()


def _preset_parameters(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if name in seen:
        raise SearchSpaceError(None, f"preset include cycle: {' -> '.join((*seen, name))}")
    raw = _raw(name)
    params: dict[str, Any] = {}
    for included in raw.get("include", []):
        params.update(_preset_parameters(included, (*seen, name)))
    for dropped in raw.get("exclude", []):
        params.pop(dropped, None)
    params.update(raw.get("parameters", {}))
    return params


def load_preset(name: str) -> SearchSpace:
    return parse_space(_preset_parameters(name))


SpaceSpec = str | list[Any] | dict[str, Any]


def resolve_space(spec: SpaceSpec) -> SearchSpace:
    """Turn a study's ``search_space`` into a SearchSpace.

    ``spec`` is a preset name (``seven_key``), an inline mapping of parameters, or a list of
    both, merged left to right (``[seven_key, batchnorm, {lr: {...}}]``: later entries replace
    parameters of the same name).
    """
    parts = spec if isinstance(spec, list) else [spec]
    if not parts:
        raise SearchSpaceError(None, "a search space needs at least one preset or parameter")
    merged: dict[str, Any] = {}
    for part in parts:
        if isinstance(part, str):
            merged.update(_preset_parameters(part))
        elif isinstance(part, dict):
            merged.update(part)
        else:
            raise SearchSpaceError(None, "each entry must be a preset name or a mapping of parameters")
    return parse_space(merged)
