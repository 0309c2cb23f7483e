"""``make bench``: every benchmark in turn, a JSON file each in bench/results/, a summary.

    .venv/bin/python bench/run.py [--devices 10000] [--workflows 300] [--only NAME ...]
        [--with-simulator]

Benchmarks: engine_overhead, relay, step_latency, fleet, settings (see bench/README.md).
``--with-simulator`` also runs the simulator's own benchmark (bench/sim_bench.py).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NAMES = (
    "engine_overhead",
    "relay",
    "step_latency",
    "fleet",
    "settings",
    "scale_out",
    "estop",
)


def _jobs(args: argparse.Namespace) -> dict[str, Callable[[], Awaitable[dict[str, Any]]]]:
    from bench import engine_overhead, estop, fleet, relay, scale_out, settings, step_latency

    return {
        "engine_overhead": lambda: engine_overhead.run(args.workflows),
        "relay": lambda: relay.run(rate=200, seconds=10, burst=1000),
        "step_latency": lambda: step_latency.run(100),
        "fleet": lambda: fleet.run(args.devices),
        "settings": lambda: settings.run(150),
        # needs PostgreSQL (MDMFLOW_TEST_PG_URL); 1,000 devices whatever --devices says
        "scale_out": lambda: scale_out.run(1000),
        # 1,000 running runs whatever --devices says
        "estop": lambda: estop.run(1000),
    }


def _summary(results: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if e := results.get("engine_overhead"):
        rows += [
            ("floor (bare Temporal), workflows/s", f"{e['floor']['workflows_per_s']}"),
            ("mdmflow devinfolog (fleet runs), devices/s", f"{e['mdmflow']['workflows_per_s']}"),
            ("mdmflow / floor ratio", f"{e['ratio']}"),
            ("ratio, worker + API as processes", f"{e['processes']['ratio']}"),
        ]
    if x := results.get("estop"):
        rows += [
            (
                f"emergency stop, {x['runs']} running runs: all halted after (s)",
                f"{x['halted_after_s']['all_s']} (p50 {x['halted_after_s']['p50_ms']} ms)",
            ),
            ("  all halted within 5 s", f"{x['all_halted_within_5_s']}"),
            ("  start while engaged: HTTP status", f"{x['start_while_engaged_status']}"),
            ("  InstallProfile sent while halted", f"{x['installs_sent_while_halted']}"),
            (
                "  after release: completed, each command exactly once",
                f"{x['completed_after_release']}, {x['devices_with_each_command_exactly_once']}",
            ),
        ]
    if r := results.get("relay"):
        c, b, s = r["command_reports"], r["checkin_burst"], r["raw_client_signal"]
        rows += [
            (
                f"relay reports @ {c['offered_per_s']}/s offered: achieved/s",
                f"{c['achieved_per_s']}",
            ),
            ("relay reports p50 / p99 ms", f"{c['p50_ms']} / {c['p99_ms']}"),
            ("raw client.signal p50 / p99 ms", f"{s['p50_ms']} / {s['p99_ms']}"),
            (f"check-in burst of {b['webhooks']}: answered/s", f"{b['answered_per_s']}"),
            ("check-in burst p50 / p99 ms", f"{b['p50_ms']} / {b['p99_ms']}"),
            ("check-in burst status codes", f"{b['status_codes']}"),
        ]
    if s := results.get("step_latency"):
        sig, close = s["enqueue_to_result_signal"], s["enqueue_to_run_closed"]
        rows += [
            ("step: enqueue -> result signal p50 / p99 ms", f"{sig['p50_ms']} / {sig['p99_ms']}"),
            ("step: enqueue -> run closed p50 / p99 ms", f"{close['p50_ms']} / {close['p99_ms']}"),
        ]
    if f := results.get("fleet"):
        for size in f["sizes"].values():
            m, rss = size["mdmflow"], size["mdmflow"]["peak_rss_mib"]
            rows += [
                (
                    f"fleet inventory, {size['devices']} devices: devices/s, seconds",
                    f"{m['devices_per_s']}, {m['seconds']} s ({m['fleet_runs']} fleet runs)",
                ),
                (
                    f"floor, {size['devices']} bare workflows: devices/s",
                    f"{size['floor']['devices_per_s']}",
                ),
                (f"fleet / floor devices/s, {size['devices']} (aim >= 5)", f"{size['ratio']}"),
                (
                    f"fleet {size['devices']}: peak RSS MiB worker / relay / Temporal",
                    f"{rss['worker']} / {rss['relay']} / {rss['temporal']}",
                ),
                (
                    f"fleet {size['devices']}: largest history (events)",
                    f"{m['largest_history_events']}",
                ),
            ]
    if so := results.get("scale_out"):
        steady, kill, rss = so["steady"], so["kill"], so["steady"]["peak_rss_mib"]
        rows += [
            (
                f"scale-out 2 workers + 2 relays, PostgreSQL: {steady['devices']} devices/s",
                f"{steady['devices_per_s']}",
            ),
            (
                "scale-out peak RSS MiB workers / relays",
                f"{rss['worker-1']} + {rss['worker-2']} / {rss['relay-1']} + {rss['relay-2']}",
            ),
            (
                f"scale-out kill: {kill['devices']} runs",
                f"{kill['statuses']} in {kill['seconds']} s",
            ),
            (
                "scale-out kill: reports lost / commands re-issued",
                f"{kill['reports_failed_at_front']} / {kill['commands_reissued']}",
            ),
        ]
    if st := results.get("settings"):
        for name, c in st["configs"].items():
            rows.append(
                (
                    f"settings: {name}",
                    f"floor {c['floor_wf_per_s']}, mdmflow "
                    f"{c['mdmflow_wf_per_s']}, ratio {c['ratio']}",
                )
            )
    return rows


async def main_async(args: argparse.Namespace) -> int:
    from bench.report import RESULTS, machine, write

    write("machine", machine())
    results: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for name, job in _jobs(args).items():
        if args.only and name not in args.only:
            continue
        print(f"== {name} ...", flush=True)
        t = time.monotonic()
        try:
            results[name] = await job()
        except Exception as exc:  # one failing benchmark must not hide the others
            failed.append(name)
            print(f"   FAILED: {exc!r}", flush=True)
            continue
        results[name]["wall_seconds"] = round(time.monotonic() - t, 1)
        path = write(name, results[name])
        print(f"   done in {results[name]['wall_seconds']}s -> {path.relative_to(ROOT)}")
    rows = _summary(results)
    width = max((len(k) for k, _ in rows), default=10)
    table = ["figure".ljust(width) + " | value", "-" * width + "-+-" + "-" * 40]
    table += [key.ljust(width) + " | " + value for key, value in rows]
    print("\n" + "\n".join(table))
    if not args.only:  # a partial run would leave the file half stale
        (RESULTS / "summary.txt").write_text("\n".join(table) + "\n")
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--devices", type=int, default=10_000, help="fleet size (10,000; 1,000 is run too)"
    )
    parser.add_argument("--workflows", type=int, default=300, help="runs per side, bench 1")
    parser.add_argument("--only", nargs="*", choices=NAMES, help="run only these")
    parser.add_argument("--with-simulator", action="store_true", help="also bench/sim_bench.py")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from mdmflow import eventloop

    code = eventloop.run(main_async(args))
    if args.with_simulator:
        code |= subprocess.call([sys.executable, str(ROOT / "bench" / "sim_bench.py")])
    return code


if __name__ == "__main__":
    sys.exit(main())
