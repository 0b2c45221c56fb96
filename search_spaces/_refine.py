"""Coarse to fine: zoom in around the best region of a finished study (the seed's advice).

Numeric ranges shrink to the span of the top-k values plus a margin, measured in log space for
log parameters, never beyond the original bounds; categoricals keep only the values the top-k
used. Conditional parameters whose condition can no longer hold are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from search_spaces._model import CategoricalParam, FloatParam, IntParam, SearchSpace, SearchSpaceError


def narrow(
    space: SearchSpace,
    top_configs: Sequence[Mapping[str, Any]],
    *,
    margin: float = 0.25,
    min_width: float = 0.1,
) -> SearchSpace:
    """Return a narrowed copy of ``space`` that contains every configuration in ``top_configs``.

    ``margin`` pads the span of the top-k values by that fraction of the span on each side;
    ``min_width`` keeps at least that fraction of the original (transformed) range, so a single
    best configuration still leaves room to search around it.
    """
    if not top_configs:
        raise SearchSpaceError(None, "narrowing needs at least one configuration")
    new: dict[str, dict[str, Any]] = {}
    for name, param in space.items():
        values = [c[name] for c in top_configs if name in c]
        spec = param.model_dump(exclude_none=True)
        if not values:
            new[name] = spec  # never active among the best: leave it as it was
            continue
        if isinstance(param, CategoricalParam):
            spec["choices"] = [c for c in param.choices if any(param.contains(v) and v == c and type(v) is type(c) for v in values)]
        elif isinstance(param, (FloatParam, IntParam)):
            spec["low"], spec["high"] = _narrow_range(param, [float(v) for v in values], margin, min_width)
        new[name] = spec
    _prune_conditions(new)
    return SearchSpace.model_validate(new)


def _narrow_range(param: FloatParam | IntParam, values: list[float], margin: float, min_width: float) -> tuple[Any, Any]:
    fwd = math.log if param.log else (lambda x: x)
    inv = math.exp if param.log else (lambda x: x)
    lo0, hi0 = fwd(param.low), fwd(param.high)
    lo_v, hi_v = fwd(min(values)), fwd(max(values))
    pad = max((hi_v - lo_v) * margin, (hi0 - lo0) * min_width / 2)
    lo, hi = max(lo0, lo_v - pad), min(hi0, hi_v + pad)
    low, high = inv(lo), inv(hi)
    step = param.step
    if isinstance(param, IntParam):
        s = step or 1
        low = param.low + math.floor((low - param.low) / s + 1e-9) * s
        high = param.low + math.ceil((high - param.low) / s - 1e-9) * s
        low, high = max(param.low, int(low)), min(param.high, int(high))
        if low == high:  # widen by one step inside the original bounds
            low, high = (low - s, high) if low - s >= param.low else (low, high + s)
        return low, high
    if step is not None:
        low = param.low + math.floor((low - param.low) / step + 1e-9) * step
        high = param.low + math.ceil((high - param.low) / step - 1e-9) * step
        low, high = max(param.low, low), min(param.high, high)
        if high - low < step / 2:
            low, high = (low - step, high) if low - step >= param.low - 1e-12 else (low, high + step)
        # keep the grid anchored: (high - low) must stay a multiple of step
        return round(low, 12), round(high, 12)
    # exact bounds of the originals stay exact (exp(log(x)) can drift by an ulp)
    low = param.low if lo == lo0 else min(low, min(values))
    high = param.high if hi == hi0 else max(high, max(values))
    return low, high


def _prune_conditions(params: dict[str, dict[str, Any]]) -> None:
    """Drop `when` values that no longer occur, and parameters whose condition can never hold."""
    changed = True
    while changed:
        changed = False
        for name in list(params):
            when = params[name].get("when")
            if not when:
                continue
            for parent, wanted in list(when.items()):
                parent_spec = params.get(parent)
                if parent_spec is None:
                    keep: list[Any] = []
                elif parent_spec["type"] == "categorical":
                    keep = [v for v in wanted if any(v == c and type(v) is type(c) for c in parent_spec["choices"])]
                else:
                    keep = [v for v in wanted if parent_spec["low"] <= v <= parent_spec["high"]]
                if not keep:
                    del params[name]
                    changed = True
                    break
                when[parent] = keep
