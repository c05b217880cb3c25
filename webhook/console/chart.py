"""The overview's charts as geometry for a server-drawn SVG: the last 24 hours of events by state, and the
webhook-to-Genesys latency of the applied ones. Pure: no Flask, no SQL."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

HOURS = 24
WIDTH, HEIGHT = 720.0, 180.0
LEFT, BOTTOM, TOP = 44.0, 22.0, 8.0
STACK = ("applied", "dry_run", "no_call", "skipped", "expired", "failed", "invalid", "unfinished")


@dataclass(frozen=True)
class Bar:
    """One rectangle: a state's share of one hour."""

    x: float
    y: float
    width: float
    height: float
    state: str
    count: int
    hour: str


@dataclass(frozen=True)
class Tick:
    """An axis label at a position."""

    x: float
    y: float
    text: str


@dataclass(frozen=True)
class Chart:
    """What the template draws: bars or polylines, axis ticks, and the plot's size."""

    bars: tuple[Bar, ...]
    lines: tuple[tuple[str, str], ...]  # (series name, SVG points "x,y x,y ...")
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    width: float = WIDTH
    height: float = HEIGHT
    empty: bool = False


def hour_keys(now: datetime) -> list[str]:
    """Return the 24 hours ending with the current one, oldest first, as "YYYY-MM-DD HH" (UTC)."""
    top = now.replace(minute=0, second=0, microsecond=0)
    return [(top - timedelta(hours=HOURS - 1 - n)).strftime("%Y-%m-%d %H") for n in range(HOURS)]


def states_by_hour(rows: Iterable[tuple[str, str, int]], now: datetime) -> Chart:
    """Stack each hour's events by state (received and processing together as "unfinished")."""
    keys = hour_keys(now)
    counts: dict[str, dict[str, int]] = {k: {} for k in keys}
    for hour, state, count in rows:
        if hour in counts:
            name = state if state in STACK else "unfinished"
            counts[hour][name] = counts[hour].get(name, 0) + count
    top = _nice(max((sum(c.values()) for c in counts.values()), default=0))
    slot = (WIDTH - LEFT) / HOURS
    bars: list[Bar] = []
    for n, key in enumerate(keys):
        base = HEIGHT - BOTTOM
        for state in STACK:
            count = counts[key].get(state, 0)
            if count:
                height = count / top * (HEIGHT - BOTTOM - TOP)
                base -= height
                bars.append(Bar(LEFT + n * slot + 1, base, slot - 2, height, state, count, key))
    return Chart(tuple(bars), (), _x_ticks(keys, slot), _y_ticks(top, ""), empty=not bars)


def latency_by_hour(samples: Iterable[tuple[datetime, float]], now: datetime) -> Chart:
    """Draw each hour's p50 and p95 of webhook-to-Genesys seconds (receipt to the applied state) as two lines."""
    keys = hour_keys(now)
    per_hour: dict[str, list[float]] = {k: [] for k in keys}
    for received_at, seconds in samples:
        key = received_at.strftime("%Y-%m-%d %H")
        if key in per_hour:
            per_hour[key].append(seconds * 1000)
    p50 = {k: percentile(v, 50) for k, v in per_hour.items() if v}
    p95 = {k: percentile(v, 95) for k, v in per_hour.items() if v}
    top = _nice(max(p95.values(), default=0.0))
    slot = (WIDTH - LEFT) / HOURS
    lines = []
    for name, values in (("p50", p50), ("p95", p95)):
        points = [f"{LEFT + (n + 0.5) * slot:.1f},{HEIGHT - BOTTOM - values[k] / top * (HEIGHT - BOTTOM - TOP):.1f}"
                  for n, k in enumerate(keys) if k in values]
        if len(points) == 1:  # one hour of data: a short flat stroke, so that it is visible
            x, y = points[0].split(",")
            points = [f"{float(x) - 4:.1f},{y}", f"{float(x) + 4:.1f},{y}"]
        lines.append((name, " ".join(points)))
    return Chart((), tuple(lines), _x_ticks(keys, slot), _y_ticks(top, " ms"), empty=not p50)


def percentile(values: Sequence[float], pct: float) -> float:
    """Return the nearest-rank percentile of values (not empty)."""
    ordered = sorted(values)
    rank = max(math.ceil(pct / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def _nice(value: float) -> float:
    """Round an axis maximum up to 1, 2 or 5 times a power of ten (at least 1)."""
    if value <= 1:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return float(next(step * power for step in (1, 2, 5, 10) if step * power >= value))


def _x_ticks(keys: Sequence[str], slot: float) -> tuple[Tick, ...]:
    return tuple(Tick(LEFT + (n + 0.5) * slot, HEIGHT - 6, f"{key[-2:]}h") for n, key in enumerate(keys)
                 if n % 3 == 2)


def _y_ticks(top: float, unit: str) -> tuple[Tick, ...]:
    return tuple(Tick(LEFT - 4, HEIGHT - BOTTOM - f * (HEIGHT - BOTTOM - TOP) + 4, f"{top * f:g}{unit}")
                 for f in (0.0, 0.5, 1.0))
