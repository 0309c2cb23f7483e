"""mdmflow's own metrics, in Prometheus text format.

Process-local: the API/relay serves its figures at ``GET /metrics``; the worker serves
its own on a small endpoint beside the Temporal SDK's (:func:`serve`). Label values
always come from a fixed set given when a metric is declared, never from request data:
a value outside the set is counted as ``other``, so a forged webhook cannot add series.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from mdmflow.temporal_calls.visibility import fleet_runs_by_status

if TYPE_CHECKING:
    from temporalio.client import Client
    from temporalio.runtime import Runtime

# Plain counters by name (without the ``mdmflow_`` prefix), as ``mdmflow_<name>``.
counters: Counter[str] = Counter()

OTHER = "other"
# Seconds: from a local hand-over (a few ms) to an MDM server or Temporal that is slow.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


def inc(name: str, amount: int = 1) -> None:
    counters[name] += amount


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Family:
    """A metric with at most one label whose values are fixed when it is declared."""

    kind = ""

    def __init__(self, name: str, help_text: str, label: str | None, values: Iterable[str]):
        self.name = name
        self.help = help_text
        self.label = label
        self.values: tuple[str, ...] = tuple(dict.fromkeys([*values, OTHER])) if label else ("",)
        # Shown from the first event on, then with every label value: a process that
        # imports a metric's module without doing its work (the worker, the relay's)
        # shows no figures that cannot move.
        self.used = False

    def key(self, value: str | None) -> str:
        if self.label is None:
            return ""
        return value if value in self.values else OTHER

    def labels(self, value: str, extra: str = "") -> str:
        pairs = [f'{self.label}="{_escape(value)}"'] if self.label else []
        if extra:
            pairs.append(extra)
        return "{" + ",".join(pairs) + "}" if pairs else ""

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:
        raise NotImplementedError


class LabelledCounter(_Family):
    kind = "counter"

    def __init__(self, name: str, help_text: str, label: str, values: Iterable[str]) -> None:
        super().__init__(name, help_text, label, values)
        self.counts: dict[str, int] = dict.fromkeys(self.values, 0)

    def inc(self, value: str, amount: int = 1) -> None:
        self.used = True
        self.counts[self.key(value)] += amount

    def get(self, value: str) -> int:
        return self.counts[self.key(value)]

    def lines(self) -> list[str]:
        # every declared value at once: rate() sees the first event of each too
        return [
            *self.header(),
            *(f"{self.name}{self.labels(v)} {self.counts[v]}" for v in self.values),
        ]


class _Buckets:
    def __init__(self, bounds: Sequence[float]) -> None:
        self.counts = [0] * len(bounds)  # per bucket, not cumulative; +Inf is ``count``
        self.sum = 0.0
        self.count = 0


class Histogram(_Family):
    """Fixed buckets (upper bounds, seconds); rendered cumulative with ``+Inf``."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        buckets: Sequence[float] = LATENCY_BUCKETS,
        label: str | None = None,
        values: Iterable[str] = (),
    ) -> None:
        super().__init__(name, help_text, label, values)
        if list(buckets) != sorted(set(buckets)):
            raise ValueError(f"{name}: buckets must be increasing and distinct")
        self.bounds = tuple(float(b) for b in buckets)
        self.series = {v: _Buckets(self.bounds) for v in self.values}

    def observe(self, seconds: float, value: str | None = None) -> None:
        self.used = True
        series = self.series[self.key(value)]
        series.sum += seconds
        series.count += 1
        for i, bound in enumerate(self.bounds):
            if seconds <= bound:
                series.counts[i] += 1
                break

    @contextlib.contextmanager
    def time(self, value: str | None = None) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.observe(time.monotonic() - started, value)

    def lines(self) -> list[str]:
        out = self.header()
        for value, series in self.series.items():
            cumulative = 0
            for bound, n in zip(self.bounds, series.counts, strict=True):
                cumulative += n
                le = f'le="{_number(bound)}"'
                out.append(f"{self.name}_bucket{self.labels(value, le)} {cumulative}")
            inf = 'le="+Inf"'
            out.append(f"{self.name}_bucket{self.labels(value, inf)} {series.count}")
            out.append(f"{self.name}_sum{self.labels(value)} {_number(round(series.sum, 6))}")
            out.append(f"{self.name}_count{self.labels(value)} {series.count}")
        return out


_families: dict[str, _Family] = {}


def labelled_counter(
    name: str, help_text: str, label: str, values: Iterable[str]
) -> LabelledCounter:
    """Declare (once; later calls return the same) ``mdmflow_<name>{<label>=...}``."""
    family = _families.setdefault(
        name, LabelledCounter("mdmflow_" + name, help_text, label, values)
    )
    assert isinstance(family, LabelledCounter)
    return family


def histogram(
    name: str,
    help_text: str,
    label: str | None = None,
    values: Iterable[str] = (),
    buckets: Sequence[float] = LATENCY_BUCKETS,
) -> Histogram:
    """Declare (once; later calls return the same) the histogram ``mdmflow_<name>``."""
    family = _families.setdefault(
        name, Histogram("mdmflow_" + name, help_text, buckets, label, values)
    )
    assert isinstance(family, Histogram)
    return family


def render() -> str:
    lines = []
    for name in sorted(counters):
        metric = "mdmflow_" + name
        lines.append(f"# TYPE {metric} counter")
        lines.append(f"{metric} {counters[name]}")
    for name in sorted(_families):
        if _families[name].used:
            lines += _families[name].lines()
    return "\n".join(lines) + "\n"


def render_gauge(name: str, help_text: str, label: str, values: dict[str, int]) -> str:
    """A labelled gauge computed at scrape time (the values' keys are a fixed set)."""
    lines = [f"# HELP mdmflow_{name} {help_text}", f"# TYPE mdmflow_{name} gauge"]
    lines += [f'mdmflow_{name}{{{label}="{_escape(k)}"}} {v}' for k, v in values.items()]
    return "\n".join(lines) + "\n"


# ---- runs by status, from Temporal's visibility ----------------------------------------

FLEET_WORKFLOW_TYPE = "mdmflow.fleet.v1"
RUN_STATUSES = (
    "Running", "Completed", "Failed", "Canceled", "Terminated", "ContinuedAsNew", "TimedOut",
)  # fmt: skip
# Scrapes within this many seconds share one count: Temporal is asked at most this often.
RUNS_CACHE_SECONDS = 15.0
_runs_cache: dict[int, tuple[float, dict[str, int]]] = {}


async def runs_by_status(client: Client) -> dict[str, int]:
    """Fleet runs (chunks) per execution status, as Temporal's visibility counts them.

    Cached for ``RUNS_CACHE_SECONDS``. Every status of ``RUN_STATUSES`` is present (0 when
    none). Raises what the count raises (Temporal unreachable, a visibility store
    without GROUP BY); the caller leaves the gauge out then.
    """
    now = time.monotonic()
    cached = _runs_cache.get(id(client))
    if cached is not None and now - cached[0] < RUNS_CACHE_SECONDS:
        return cached[1]
    counted = await fleet_runs_by_status(client, timedelta(seconds=2))
    by_status = dict.fromkeys(RUN_STATUSES, 0)
    for status, count in counted.items():
        key = status if status in by_status else OTHER
        by_status[key] = by_status.get(key, 0) + count
    _runs_cache.clear()  # one client per process: keep one entry
    _runs_cache[id(client)] = (now, by_status)
    return by_status


# ---- where the figures are served ------------------------------------------------------

_OFF = ("", "off", "none", "false", "no")


def address_setting(name: str, default: str | None) -> str | None:
    """A ``host:port`` setting; unset gives ``default``, empty or ``off`` gives None."""
    value = os.environ.get(name)
    if value is None:
        return default
    value = value.strip()
    return None if value.lower() in _OFF else value


def next_port(address: str) -> str:
    """``host:port`` with the port one higher: where the worker serves mdmflow's figures."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return f"{host}:{int(port) + 1}"


def sdk_metrics_runtime(address: str | None, setting: str, log: logging.Logger) -> Runtime | None:
    """The runtime serving the Temporal SDK's metrics at ``address``; without them when
    it cannot bind (metrics are worth a warning, not the process)."""
    from mdmflow.temporal_client import sdk_runtime  # imports the SDK: only when asked

    if address is None:
        return sdk_runtime()
    try:
        runtime = sdk_runtime(address)
    except ValueError as exc:
        log.warning(
            "SDK metrics not served (%s=%s: %s); running without them", setting, address, exc
        )
        return sdk_runtime()
    log.info("SDK metrics at http://%s/metrics", address)
    return runtime


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
        if request.startswith(b"GET ") and path.split(b"?")[0] in (b"/metrics", b"/"):
            body, status = render().encode(), b"200 OK"
        else:
            body, status = b"not found: GET /metrics\n", b"404 Not Found"
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )
        await writer.drain()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve(address: str) -> asyncio.Server:
    """Serve :func:`render` at ``http://<address>/metrics`` (HTTP/1.1, one answer per
    connection). The worker runs this beside the SDK's endpoint, which it cannot add to.
    Raises ``OSError`` when the address is taken and ``ValueError`` when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return await asyncio.start_server(_answer, host.strip("[]") or None, int(port))
