"""Scenario 5: duplicated, reordered and forged webhooks.

Duplicates and reorders come from the simulator's seeded fault injection: every run must
complete with its own device's answer applied once. Forgeries are posted by hand: a bad
or missing HMAC is refused (401); a correctly signed report that carries device B's
enrollment ID for device A's CommandUUID reaches B's run, which ignores it, and never
completes A's command; a report for B signalled straight to A's run is rejected by the
step engine.
"""

from __future__ import annotations

import asyncio
import plistlib
import time
from collections.abc import Callable
from typing import Any

from bench.chaos.common import (
    answered_per_device,
    check_all_completed,
    set_offline,
    sim_counts,
    until,
)
from bench.chaos.forge import headers, report_webhook
from bench.stack import DEVINFOLOG, HMAC_KEY, Stack
from protocol import routing
from protocol.results import parse_report

FAKE = {"QueryResponses": {"SerialNumber": "FORGED00001", "DeviceName": "forged"}}


async def _state(stack: Stack, eid: str) -> dict[str, Any]:
    handle = stack.client.get_workflow_handle(routing.workflow_id(DEVINFOLOG, eid))
    return dict(await handle.query("state"))


async def _state_until(
    stack: Stack, eid: str, check: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not check(state := await _state(stack, eid)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"state of {eid} never matched: {state}")
        await asyncio.sleep(0.05)
    return state


async def _logged_serials(stack: Stack, eid: str) -> list[str]:
    entries = (await stack.http.get("/v1/devinfolog", params={"id": eid})).json()
    return [str(e["query_responses"].get("SerialNumber")) for e in entries]


async def _duplicates_and_reorders(stack: Stack, n: int, seed: int) -> dict[str, Any]:
    ids = await stack.enroll(n)
    stack.fleet.set_faults(duplicate_rate=0.5, reorder_rate=0.3, seed=seed)
    try:
        instance = await stack.start_runs(ids)
        await stack.wait_closed(instance, n, timeout=120)
        await stack.fleet.wait_idle(timeout=30)
    finally:
        stack.fleet.set_faults(duplicate_rate=0.0, reorder_rate=0.0)
    statuses = await check_all_completed(stack, ids)
    per_device = answered_per_device(stack, ids)
    assert per_device == {1: n}, f"answers per device: {dict(per_device)}"
    misrouted = 0
    for eid in ids:
        serials = await _logged_serials(stack, eid)
        if serials != [stack.fleet.device_state(eid)["serial_number"]]:
            misrouted += 1
    assert misrouted == 0, f"{misrouted} runs logged another device's or no/two answers"
    ignored = sum([(await _state(stack, e))["ignored_reports"] for e in ids])
    faults = stack.fleet.fault_log
    return {
        "runs": n,
        "statuses": statuses,
        "faults_injected": {
            "duplicate": sum(1 for _, f in faults if f == "duplicate"),
            "reorder": sum(1 for _, f in faults if f == "reorder"),
        },
        "duplicate_reports_ignored_by_runs": ignored,
        "runs_with_wrong_or_double_log": misrouted,
        "answers_per_device": dict(per_device),
    }


async def _forgeries(stack: Stack) -> dict[str, Any]:
    a, b = await stack.enroll(2)
    set_offline(stack, [a, b], True)
    await stack.start_runs([a, b])
    await until("A's command queued", lambda: bool(stack.fleet.device_state(a)["queue"]))
    await until("B's command queued", lambda: bool(stack.fleet.device_state(b)["queue"]))
    uuid_a = stack.fleet.device_state(a)["queue"][0]["command_uuid"]
    genuine = report_webhook(a, uuid_a, "DeviceInformation", **FAKE)
    answers: dict[str, int] = {}
    for label, key in (("bad_hmac", "not-the-key"), ("no_hmac", None)):
        resp = await stack.http.post("/webhook", content=genuine, headers=headers(key, genuine))
        answers[label] = resp.status_code
    assert answers == {"bad_hmac": 401, "no_hmac": 401}, answers

    crossed = report_webhook(b, uuid_a, "DeviceInformation", **FAKE)
    resp = await stack.http.post("/webhook", content=crossed, headers=headers(HMAC_KEY, crossed))
    answers["b_id_with_a_uuid"] = resp.status_code
    assert resp.status_code == 200, resp.text
    state_b = await _state_until(stack, b, lambda s: s["ignored_reports"] == 1)

    raw = plistlib.dumps(
        {"CommandUUID": uuid_a, "RequestType": "DeviceInformation", "Status": "Acknowledged",
         "UDID": b, **FAKE}
    )
    handle_a = stack.client.get_workflow_handle(routing.workflow_id(DEVINFOLOG, a))
    await handle_a.signal("command_report", parse_report(raw, b))
    state_a = await _state_until(stack, a, lambda s: s["rejected_reports"] == 1)
    assert not state_a["steps"][0]["commands"][0]["answered"], "a forged report completed A"
    assert not state_b["steps"][0]["commands"][0]["answered"]

    set_offline(stack, [a, b], False)
    await check_all_completed(stack, [a, b])
    for eid in (a, b):
        serials = await _logged_serials(stack, eid)
        assert serials == [stack.fleet.device_state(eid)["serial_number"]], serials
    return {
        "http_answers": answers,
        "b_run_ignored_reports": state_b["ignored_reports"],
        "a_run_rejected_reports": state_a["rejected_reports"],
        "forged_serial_logged": False,
    }


async def run(stack: Stack, n: int, seed: int = 7) -> dict[str, Any]:
    faults = await _duplicates_and_reorders(stack, n, seed)
    forged = await _forgeries(stack)
    return {
        "killed": "nothing: webhooks duplicated/reordered (seeded) and forged by hand",
        **faults,
        "forged": forged,
        **sim_counts(stack),
    }
