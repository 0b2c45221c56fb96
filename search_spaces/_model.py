"""The search-space language: each parameter declared once, validated once.

A search space is a mapping of parameter name to a parameter declaration, discriminated by
``type`` (``float``, ``int``, ``categorical``). Any parameter may carry ``when``, which makes it
conditional on the values of other parameters (all listed parents must match).

Per-parameter rules are checked by constructing the matching Optuna distribution, so our rules
and the sampler's can never disagree; the few rules Optuna does not have (``low < high``, unique
choices, the name pattern, the parameter count, ``when`` references and cycles) are ours. Every
message starts with the parameter's name and states the rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, model_validator

MAX_PARAMETERS = 64
DEFAULT_MAX_GRID_POINTS = 10_000
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")

MAX_INT = 2**53  # integers beyond this do not survive JSON round trips (and no knob needs them)
MAX_STEPS = 1e9
ChoiceValue = bool | int | float | str  # bool first: pydantic must not coerce True to 1


class SearchSpaceError(ValueError):
    """A search space breaks a rule. ``parameter`` names the offender (None for the whole space)."""

    def __init__(self, parameter: str | None, rule: str) -> None:
        self.parameter = parameter
        self.rule = rule
        super().__init__(f"{parameter}: {rule}" if parameter else rule)


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    when: dict[str, list[ChoiceValue]] | None = Field(
        default=None,
        description="Sample this parameter only when every named parent has one of the listed values.",
        examples=[{"optimizer": ["momentum", "nesterov"]}],
    )

    def distribution(self) -> BaseDistribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def grid_size(self) -> int:
        return len(self.grid_values())

    def grid_values(self) -> list[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def contains(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


class FloatParam(_Param):
    """A real number in [low, high]; ``log`` samples uniformly in log space; ``step`` discretizes."""

    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low and high must be finite (got low={self.low}, high={self.high})")
        if not self.low < self.high:
            raise ValueError(f"low must be < high (got low={self.low}, high={self.high})")
        if self.log and self.step is not None:
            raise ValueError("log and step are mutually exclusive")
        if self.step is not None and not (math.isfinite(self.step) and self.step > 0):
            raise ValueError(f"step must be a finite number > 0 (got {self.step})")
        if self.step is not None and (self.high - self.low) / self.step > MAX_STEPS:
            raise ValueError(f"step is too small: (high - low) / step must be at most {MAX_STEPS:.0e}")
        self.distribution()  # Optuna's own checks: log needs low > 0
        return self

    def grid_size(self) -> int:
        if self.step is None:
            raise ValueError("grid sampling needs a finite parameter: give this float a step")
        return math.floor((self.high - self.low) / self.step + 1e-9) + 1

    def distribution(self) -> FloatDistribution:
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def grid_values(self) -> list[Any]:
        if self.step is None:
            raise ValueError("grid sampling needs a finite parameter: give this float a step")
        n = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + i * self.step, 12) for i in range(n)]

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (
            self.low - 1e-12 <= float(value) <= self.high + 1e-12
        )


class IntParam(_Param):
    """An integer in [low, high], both inclusive; ``log`` samples uniformly in log space."""

    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False
    step: int | None = None

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if max(abs(self.low), abs(self.high)) > MAX_INT:
            raise ValueError(f"low and high must be within ±2**53 (got low={self.low}, high={self.high})")
        if self.step is not None and self.step < 1:
            raise ValueError(f"step must be >= 1 (got {self.step})")
        if not self.low < self.high:
            raise ValueError(f"low must be < high (got low={self.low}, high={self.high})")
        if self.log and self.step is not None:
            raise ValueError("log and step are mutually exclusive")
        self.distribution()  # Optuna's own checks: log needs low >= 1, step > 0
        return self

    def distribution(self) -> IntDistribution:
        return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)

    def grid_size(self) -> int:
        return (self.high - self.low) // (self.step or 1) + 1

    def grid_values(self) -> list[Any]:
        return list(range(self.low, self.high + 1, self.step or 1))

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


class CategoricalParam(_Param):
    """One of ``choices`` (strings, integers, floats or booleans)."""

    type: Literal["categorical"] = "categorical"
    choices: list[ChoiceValue]

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        if not self.choices:
            raise ValueError("choices must not be empty")
        if any(isinstance(c, float) and not math.isfinite(c) for c in self.choices):
            raise ValueError("choices must be finite numbers (no NaN or infinity)")
        seen: list[tuple[type, Any]] = []
        for choice in self.choices:
            key = (type(choice), choice)
            if key in seen:
                raise ValueError(f"choices must be unique ({choice!r} appears twice)")
            seen.append(key)
        return self

    def distribution(self) -> CategoricalDistribution:
        return CategoricalDistribution(self.choices)

    def grid_values(self) -> list[Any]:
        return list(self.choices)

    def contains(self, value: Any) -> bool:
        return any(type(value) is type(c) and value == c for c in self.choices)


Parameter = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class SearchSpace(RootModel[dict[str, Parameter]]):
    """A validated search space: parameter name -> declaration, in declaration order."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="after")
    def _check_space(self) -> SearchSpace:
        params = self.root
        if len(params) > MAX_PARAMETERS:
            raise ValueError(f"a search space has at most {MAX_PARAMETERS} parameters (got {len(params)})")
        for name, param in params.items():
            if not NAME_PATTERN.fullmatch(name):
                raise ValueError(f"{name}: parameter names must match [a-z][a-z0-9_]{{0,63}}")
            for parent, values in (param.when or {}).items():
                if parent not in params:
                    raise ValueError(f"{name}: when names unknown parameter '{parent}'")
                if parent == name:
                    raise ValueError(f"{name}: when forms a cycle ({name} -> {name})")
                if not values:
                    raise ValueError(f"{name}: when.{parent} must list at least one value")
                for v in values:
                    if not params[parent].contains(v):
                        raise ValueError(
                            f"{name}: when.{parent} value {v!r} can never occur in '{parent}'"
                        )
        self._topological_order()  # raises on cycles
        return self

    # -- structure ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self.root)

    def __len__(self) -> int:
        return len(self.root)

    def __getitem__(self, name: str) -> _Param:
        return self.root[name]

    def items(self) -> Iterator[tuple[str, _Param]]:
        return iter(self.root.items())

    def _topological_order(self) -> list[str]:
        order: list[str] = []
        state: dict[str, int] = {}  # 1 = visiting, 2 = done

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join([*path[path.index(name):], name])
                raise ValueError(f"{name}: when forms a cycle ({cycle})")
            state[name] = 1
            for parent in self.root[name].when or {}:
                visit(parent, [*path, name])
            state[name] = 2
            order.append(name)

        for name in self.root:
            visit(name, [])
        return order

    def order(self) -> list[str]:
        """Parameter names with every parent before its children (declaration order otherwise)."""
        return self._topological_order()

    def is_active(self, name: str, config: Mapping[str, Any]) -> bool:
        """Whether ``name`` is sampled given the (partial) configuration of its parents."""
        when = self.root[name].when
        if not when:
            return True
        for parent, values in when.items():
            if parent not in config or not self.is_active(parent, config):
                return False
            if not any(type(config[parent]) is type(v) and config[parent] == v for v in values):
                return False
        return True

    def active_names(self, config: Mapping[str, Any]) -> list[str]:
        return [n for n in self.order() if self.is_active(n, config)]

    def fit(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """What of ``config`` (an earlier study's trial) this space can run: its values that this
        space contains, for parameters active given them. What is left out the sampler fills in."""
        kept: dict[str, Any] = {}
        for name in self.order():
            if name in config and self.is_active(name, kept) and self.root[name].contains(config[name]):
                kept[name] = config[name]
        return kept

    def check_config(self, config: Mapping[str, Any]) -> None:
        """Raise SearchSpaceError unless ``config`` holds exactly the active parameters, in range."""
        for name in self.order():
            active = self.is_active(name, config)
            if active and name not in config:
                raise SearchSpaceError(name, "is active but missing from the configuration")
            if not active and name in config:
                raise SearchSpaceError(name, "is present although its `when` condition is false")
            if active and not self.root[name].contains(config[name]):
                raise SearchSpaceError(name, f"value {config[name]!r} is outside the declared space")

    # -- translation ----------------------------------------------------------------------

    def distributions(self) -> dict[str, BaseDistribution]:
        """The Optuna distribution of every parameter (conditional ones included)."""
        return {name: param.distribution() for name, param in self.root.items()}

    def grid(self, max_points: int = DEFAULT_MAX_GRID_POINTS) -> dict[str, list[Any]]:
        """Values per parameter for grid sampling; refuses continuous parameters and huge grids."""
        points = 1
        for name, param in self.root.items():  # count first: a huge range is never materialized
            try:
                points *= param.grid_size()
            except ValueError as exc:
                raise SearchSpaceError(name, str(exc)) from None
        if points > max_points:
            raise SearchSpaceError(
                None, f"the grid has {points} points, more than the limit of {max_points}"
            )
        return {name: param.grid_values() for name, param in self.root.items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {n: p.model_dump(exclude_none=True, exclude_defaults=False) for n, p in self.root.items()}


def field_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(dotted field path, message) pairs of a pydantic error, without discriminator tags."""
    out = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"] if p not in ("float", "int", "categorical")]
        msg = err["msg"].removeprefix("Value error, ")
        out.append((".".join(loc), msg))
    return out


def parse_space(data: Any) -> SearchSpace:
    """Validate a raw mapping into a SearchSpace.

    Raises SearchSpaceError whose message names the first offending parameter and the rule,
    e.g. ``lr: low must be < high (got low=1.0, high=0.1)``.
    """
    if not isinstance(data, Mapping):
        raise SearchSpaceError(None, "a search space must be a mapping of parameter name to declaration")
    if not data:
        raise SearchSpaceError(None, "a search space needs at least one parameter")
    try:
        return SearchSpace.model_validate(dict(data))
    except ValidationError as exc:
        field, msg = field_errors(exc)[0]
        name = field.split(".")[0] if field else None
        if name is None and (m := re.match(r"([^\s:]+): (.*)", msg)):
            name, msg = m.group(1), m.group(2)
        rest = field.split(".", 1)[1] if "." in field else ""
        raise SearchSpaceError(name, f"{rest}: {msg}" if rest else msg) from None
