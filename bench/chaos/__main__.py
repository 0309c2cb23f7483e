"""``make chaos``: the seven chaos scenarios, long versions; prints what broke and what counted.

    .venv/bin/python -m bench.chaos [--only worker_kill ...] [--scale 1.0]

Results (one entry per scenario) go to bench/results/chaos.json; the exit code is 1 if
any scenario found a run lost, duplicated or stuck, or a 5xx.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.chaos import (
    fuzz_api,
    mdm_outage,
    relay_outage,
    temporal_inbox,
    temporal_kill,
    webhook_faults,
    worker_kill,
)
from bench.report import write
from bench.stack import Stack, StackOptions
from mdmflow import eventloop

Scenario = Callable[[Stack], Awaitable[dict[str, Any]]]


def scenarios(scale: float) -> dict[str, tuple[StackOptions, Scenario]]:
    def n(x: int) -> int:
        return max(4, int(x * scale))

    procs = StackOptions(processes=True, connect_latency=0.05)
    inproc = StackOptions(connect_latency=0.05)
    return {
        "worker_kill": (procs, lambda s: worker_kill.run(s, n(500))),
        "temporal_kill": (procs, lambda s: temporal_kill.run(s, n(200), down_s=10.0)),
        "mdm_outage": (inproc, lambda s: mdm_outage.run(s, n(200), refused_s=30, errors_s=10)),
        "relay_outage": (
            procs,
            lambda s: relay_outage.run(s, recover=n(100), expire=n(20), down_s=30, repush_s=20),
        ),
        "webhook_faults": (inproc, lambda s: webhook_faults.run(s, n(500), seed=11)),
        "fuzz_api": (inproc, lambda s: fuzz_api.run(s, max_examples=50)),
        "temporal_inbox": (
            procs,
            lambda s: temporal_inbox.run(s, n(500), down_s=60.0, rotate=n(50)),
        ),
    }


async def main_async(only: list[str] | None, scale: float) -> int:
    results: dict[str, Any] = {}
    failed = []
    for name, (options, scenario) in scenarios(scale).items():
        if only and name not in only:
            continue
        print(f"== {name} ...", flush=True)
        t = time.monotonic()
        try:
            async with Stack(options) as stack:
                report = await scenario(stack)
            report["seconds"] = round(time.monotonic() - t, 1)
            print(f"   killed:  {report.pop('killed')}")
            print(f"   counted: {json.dumps(report, default=str)}", flush=True)
            results[name] = {"ok": True, **report}
        except (AssertionError, TimeoutError) as exc:
            failed.append(name)
            print(f"   FAILED: {exc}", flush=True)
            results[name] = {"ok": False, "error": str(exc)[:4000]}
    write("chaos", results)
    print(f"\n{len(results) - len(failed)}/{len(results)} scenarios held", end="")
    print(f"; failed: {', '.join(failed)}" if failed else "")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description="chaos scenarios, long versions")
    parser.add_argument("--only", nargs="*", help="scenario names to run")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply run counts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # expected during outages: failed activity attempts are retried, not news
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    return eventloop.run(main_async(args.only, args.scale))


if __name__ == "__main__":
    sys.exit(main())
