"""Parsing a submitted definition's body (JSON or YAML) within bounds, off the event loop.

A body is at most 1 MiB (``limits``), but YAML can make a small body expensive: a long flow
sequence costs the pure-Python loader seconds, and aliases can expand a few hundred bytes into
gigabytes ("billion laughs"). So YAML is parsed with libyaml's C loader, its events are counted
first (a document of more than ``MAX_NODES`` nodes is refused before it is built) and aliases are
refused: a study definition never needs them. JSON is parsed by the standard library's C parser,
with NaN and infinities refused. The route runs ``parse_body`` in a worker thread.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
MAX_NODES = 100_000  # scalars + collections; a definition has a few hundred
MAX_DEPTH = 64
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class BodyError(ValueError):
    """The body cannot be a definition: ``status`` 422 (malformed) or 413 (too much work)."""

    def __init__(self, status: int, detail: str) -> None:
        self.status, self.detail = status, detail
        super().__init__(detail)


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


def _check_yaml_events(raw: bytes) -> None:
    nodes = depth = 0
    for event in yaml.parse(raw, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            mark = event.start_mark
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise BodyError(422, f"YAML aliases (*{event.anchor}) are not accepted in a definition{where}")
        if isinstance(event, (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            nodes += 1
            if nodes > MAX_NODES:
                raise BodyError(413, f"the body has more than {MAX_NODES:,} YAML nodes; a definition needs far fewer")
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise BodyError(422, f"the body is nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def parse_body(raw: bytes, content_type: str) -> dict[str, Any]:
    """The body as a mapping, or BodyError."""
    is_yaml = content_type in YAML_TYPES
    try:
        if is_yaml:
            _check_yaml_events(raw)
            data = yaml.load(raw, Loader=_Loader)
        else:
            data = json.loads(raw or b"null", parse_constant=_no_constants)
    except yaml.MarkedYAMLError as exc:
        where = f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})" if exc.problem_mark else ""
        raise BodyError(422, f"the body is not valid YAML: {exc.problem or exc.context}{where}") from None
    except (ValueError, yaml.YAMLError) as exc:
        if isinstance(exc, BodyError):
            raise
        raise BodyError(422, f"the body is not valid {'YAML' if is_yaml else 'JSON'}: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise BodyError(422, "the body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BodyError(422, "the body must be a mapping (a study definition)")
    try:  # what JSON can carry, as UTF-8: YAML dates, binary, non-string keys and lone surrogates are refused here
        json.dumps(data, sort_keys=True, ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise BodyError(422, f"the body must hold only JSON values (strings, finite numbers, booleans, null, lists, "
                             f"mappings with string keys): {str(exc)[:200]}") from None
    return data
