"""Parsing a submitted definition's body (JSON or YAML) within bounds, off the event loop.

A body is at most 1 MiB (``limits``), but YAML can make a small body expensive: a long flow
sequence costs the pure-Python loader seconds, and aliases can expand a few hundred bytes into
gigabytes ("billion laughs"). So YAML is parsed with libyaml's C loader, its events are counted
first (a document of more than ``MAX_NODES`` nodes is refused before it is built) and aliases are
refused: a study definition never needs them. JSON is parsed by the standard library's C parser,
with NaN and infinities refused. The route runs ``parse_body`` in a worker thread.

Every other route's JSON body is FastAPI's to parse, and Python's parser reads NaN, infinities and
numbers past a double's range (1e999 as inf), which JSON cannot write back and PostgreSQL refuses to
store: ``StrictJSONRoute``, the route class of the routers that take bodies, refuses them first
with a 422 naming the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

import yaml
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

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


# what a JSON body must hold for Python's parser to read a number that is not finite: NaN, Infinity,
# or a number past a double's range (an exponent of 100 or more, or 309 digits: 1e999 reads as inf)
_MAYBE_NON_FINITE = re.compile(rb"NaN|Infinity|[eE]\+?0*[1-9][0-9]{2}|[0-9]{309}")


def non_finite_path(raw: bytes) -> tuple[str, ...] | None:
    """Where a JSON body holds a number that is not finite (NaN, an infinity, 1e999): the field's path
    (() for the body itself), or None when it holds none or is not JSON (its parser reports that)."""
    if _MAYBE_NON_FINITE.search(raw) is None:  # the common case: one scan of the bytes, no parse
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:  # depth first, in the body's order
        value, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path
        children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        stack.extend(reversed([(v, (*path, str(k))) for k, v in children]))
    return None


def _json_content(content_type: str | None) -> bool:
    """Whether FastAPI reads a body of this type as JSON: none given, application/json or application/*+json."""
    if not content_type:
        return True
    kind = content_type.split(";")[0].strip().lower()
    return kind.startswith("application/") and (kind == "application/json" or kind.endswith("+json"))


class StrictJSONRoute(APIRoute):
    """FastAPI's route with NaN, infinities and numbers past a double's range refused in a JSON body: 422 problem details naming the
    field ("changes.lr: Input should be a finite number ..."), before the route runs or stores anything."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            if request.method in ("POST", "PUT", "PATCH") and _json_content(request.headers.get("content-type")):
                path = non_finite_path(await request.body())  # Starlette keeps the body: the route reads it again
                if path is not None:
                    raise RequestValidationError([{
                        "type": "finite_number", "loc": ("body", *path), "input": None,
                        "msg": "Input should be a finite number: JSON has no NaN or Infinity"}])
            return await handler(request)

        return strict
