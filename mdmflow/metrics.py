"""Process-local counters, served in Prometheus text format at ``GET /metrics``."""

from __future__ import annotations

from collections import Counter

counters: Counter[str] = Counter()


def inc(name: str, amount: int = 1) -> None:
    counters[name] += amount


def render() -> str:
    lines = []
    for name in sorted(counters):
        metric = "mdmflow_" + name
        lines.append(f"# TYPE {metric} counter")
        lines.append(f"{metric} {counters[name]}")
    return "\n".join(lines) + "\n"
