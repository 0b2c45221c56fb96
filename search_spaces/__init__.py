"""Caviar's search-space language: declare each tunable parameter once.

Public API::

    space = resolve_space(["seven_key", "batchnorm"])       # presets and/or inline mappings
    space = parse_space({"lr": {"type": "float", "low": 1e-4, "high": 1, "log": True}})
    fn = define_by_run(space, fixed={"epochs": 30})          # for Ray Tune's OptunaSearch
    space.distributions(); space.grid(max_points=10_000)
    narrowed = narrow(space, top_k_configs)                  # coarse to fine
"""

from search_spaces._model import (
    DEFAULT_MAX_GRID_POINTS,
    MAX_PARAMETERS,
    CategoricalParam,
    FloatParam,
    IntParam,
    SearchSpace,
    SearchSpaceError,
    field_errors,
    parse_space,
)
from search_spaces._optuna import (
    IMPORTANCE_EVALUATOR,
    SAMPLERS,
    TPE_OPTIONS,
    TPE_SAMPLERS,
    FastTPESampler,
    define_by_run,
    importance,
    make_sampler,
    scipy_log_ndtr,
    suggest,
)
from search_spaces._presets import list_presets, load_preset, preset_description, resolve_space
from search_spaces._refine import narrow

__all__ = [
    "DEFAULT_MAX_GRID_POINTS",
    "IMPORTANCE_EVALUATOR",
    "MAX_PARAMETERS",
    "SAMPLERS",
    "TPE_OPTIONS",
    "TPE_SAMPLERS",
    "CategoricalParam",
    "FastTPESampler",
    "FloatParam",
    "IntParam",
    "SearchSpace",
    "SearchSpaceError",
    "define_by_run",
    "field_errors",
    "importance",
    "list_presets",
    "load_preset",
    "make_sampler",
    "narrow",
    "parse_space",
    "preset_description",
    "resolve_space",
    "scipy_log_ndtr",
    "suggest",
]
