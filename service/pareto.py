"""Several objectives at once: dominance, non-dominated sorting, crowding, hypervolume. Pure Python,
shared by the runner (multi-objective ASHA, ``service.runner.schedulers``), the API (``GET
.../pareto``) and the benchmarks.

Points are tuples in *minimization* form: ``minimized`` turns a trial's metrics and the objectives'
modes into one (a ``max`` metric is negated; a missing or non-finite value is +inf, the worst).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Point = tuple[float, ...]


def minimized(metrics: Mapping[str, Any], objectives: Sequence[tuple[str, str]]) -> Point:
    """The point of ``metrics`` for ``objectives`` ((metric, mode) pairs), to be minimized."""
    out = []
    for metric, mode in objectives:
        v = metrics.get(metric)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        out.append((-float(v) if mode == "max" else float(v)) if ok else math.inf)  # type: ignore[arg-type]
    return tuple(out)


def dominates(a: Point, b: Point) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def front(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points (the first front), in input order. Points that are equal
    are all on it. Sweeps in lexicographic order: only an earlier point can dominate a later one."""
    kept: list[int] = []
    for i in sorted(range(len(points)), key=lambda i: points[i]):
        if not any(dominates(points[j], points[i]) for j in kept):
            kept.append(i)
    return sorted(kept)


def ranks(points: Sequence[Point]) -> list[int]:
    """Non-dominated sorting: 0 for the first front, 1 for the front of what remains, and so on.
    A point's front is the length of the longest chain of points dominating one another that ends
    at it; in lexicographic order every dominator comes first, so one pass finds each (numpy, about
    50 ms for 2,000 points)."""
    n = len(points)
    if n == 0:
        return []
    p = np.nan_to_num(np.asarray(points, dtype=float).reshape(n, -1), nan=math.inf)
    lex = np.lexsort(p.T[::-1])
    rank = np.zeros(n, dtype=int)
    for k in range(1, n):
        i, before = lex[k], lex[:k]
        q = p[before]
        dom = np.all(q <= p[i], axis=1) & np.any(q < p[i], axis=1)
        if dom.any():
            rank[i] = int(rank[before[dom]].max()) + 1
    return [int(r) for r in rank]


def crowding(points: Sequence[Point]) -> list[float]:
    """NSGA-II's crowding distance within one set of points (the ends of each objective: infinite)."""
    n = len(points)
    if n <= 2:
        return [math.inf] * n
    dist = [0.0] * n
    for m in range(len(points[0])):
        idx = sorted(range(n), key=lambda i: points[i][m])
        lo, hi = points[idx[0]][m], points[idx[-1]][m]
        dist[idx[0]] = dist[idx[-1]] = math.inf
        span = hi - lo
        if not math.isfinite(span) or span <= 0:
            continue
        for k in range(1, n - 1):
            dist[idx[k]] += (points[idx[k + 1]][m] - points[idx[k - 1]][m]) / span
    return dist


def keys(points: Sequence[Point]) -> list[tuple[int, float]]:
    """Each point's place in the order, (front, -crowding distance within its front): smaller is better."""
    rank = ranks(points)
    members: dict[int, list[int]] = {}
    for i, r in enumerate(rank):
        members.setdefault(r, []).append(i)
    crowd = [0.0] * len(points)
    for group in members.values():
        for i, c in zip(group, crowding([points[i] for i in group]), strict=True):
            crowd[i] = c
    return [(rank[i], -crowd[i]) for i in range(len(points))]


def order(points: Sequence[Point]) -> list[int]:
    """Indices best first: by front, then within a front by crowding distance (most isolated first,
    as NSGA-II's selection), then by input order."""
    k = keys(points)
    return sorted(range(len(points)), key=lambda i: (k[i], i))


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """The area (2 objectives) dominated by ``points`` and bounded by ``reference`` (minimization);
    points not better than the reference in both objectives add nothing."""
    if len(reference) != 2:
        raise ValueError("hypervolume is computed for 2 objectives")
    inside = sorted(p for p in points if p[0] < reference[0] and p[1] < reference[1])
    area, best_y = 0.0, reference[1]
    for x, y in inside:  # by the first objective: each point adds the strip below the best second value so far
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area
