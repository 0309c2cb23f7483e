"""Scenario 5: duplicated, reordered and forged webhooks.

Duplicates and reorders come from the simulator's seeded fault injection: every run must
complete with its own device's answer applied once. Forgeries are posted by hand: a bad
or missing HMAC is refused (401). A and B are started apart, two fleet runs of one
device: a correctly signed report that carries device B's enrollment ID for device A's
CommandUUID reaches A's run (a fleet CommandUUID names its run), which rejects it as
not one of its devices and never completes A's command; a report for B signalled
straight to A's run is rejected the same way; B's run sees neither.
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
from bench.stack import HMAC_KEY, Stack
from protocol.results import parse_report

FAKE = {"QueryResponses": {"SerialNumber": "FORGED00001", "DeviceName": "forged"}}


async def _state_until(
    stack: Stack,
    instance: str,
    eid: str,
    check: Callable[[dict[str, Any]], bool],
    timeout: float = 30,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not check(state := await stack.device_state(instance, eid)):
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
    statuses = await check_all_completed(stack, instance, ids)
    per_device = answered_per_device(stack, ids)
    assert per_device == {1: n}, f"answers per device: {dict(per_device)}"
    misrouted = 0
    for eid in ids:
        serials = await _logged_serials(stack, eid)
        if serials != [stack.fleet.device_state(eid)["serial_number"]]:
            misrouted += 1
    assert misrouted == 0, f"{misrouted} runs logged another device's or no/two answers"
    ignored = sum(s["ignored_reports"] for s in (await stack.device_states(instance)).values())
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
    # one start each: A's and B's runs are two fleet runs of one device
    run_a, run_b = await stack.start_runs([a]), await stack.start_runs([b])
    await until("A's command queued", lambda: bool(stack.fleet.device_state(a)["queue"]))
    await until("B's command queued", lambda: bool(stack.fleet.device_state(b)["queue"]))
    uuid_a = stack.fleet.device_state(a)["queue"][0]["command_uuid"]
    genuine = report_webhook(a, uuid_a, "DeviceInformation", **FAKE)
    answers: dict[str, int] = {}
    for label, key in (("bad_hmac", "not-the-key"), ("no_hmac", None)):
        resp = await stack.http.post("/webhook", content=genuine, headers=headers(key, genuine))
        answers[label] = resp.status_code
    assert answers == {"bad_hmac": 401, "no_hmac": 401}, answers

    # A's CommandUUID names A's run; the report in it names B, who is not in that run
    crossed = report_webhook(b, uuid_a, "DeviceInformation", **FAKE)
    resp = await stack.http.post("/webhook", content=crossed, headers=headers(HMAC_KEY, crossed))
    answers["b_id_with_a_uuid"] = resp.status_code
    assert resp.status_code == 200, resp.text
    await _state_until(stack, run_a, a, lambda s: s["rejected_reports"] == 1)

    raw = plistlib.dumps(
        {"CommandUUID": uuid_a, "RequestType": "DeviceInformation", "Status": "Acknowledged",
         "UDID": b, **FAKE}
    )
    state_a0 = await stack.device_state(run_a, a)
    handle_a = stack.client.get_workflow_handle(state_a0["workflow_id"])
    await handle_a.signal("command_report", parse_report(raw, b))
    rejected_before = state_a0["rejected_reports"]
    state_a = await _state_until(
        stack, run_a, a, lambda s: s["rejected_reports"] == rejected_before + 1
    )
    state_b = await stack.device_state(run_b, b)
    assert not state_a["steps"][0]["commands"][0]["answered"], "a forged report completed A"
    assert not state_b["steps"][0]["commands"][0]["answered"], "a forged report reached B"
    assert state_b["ignored_reports"] == state_b["rejected_reports"] == 0, state_b

    set_offline(stack, [a, b], False)
    await stack.wait_closed(run_a, 1)
    await stack.wait_closed(run_b, 1)
    await check_all_completed(stack, run_a, [a])
    await check_all_completed(stack, run_b, [b])
    for eid in (a, b):
        serials = await _logged_serials(stack, eid)
        assert serials == [stack.fleet.device_state(eid)["serial_number"]], serials
    return {
        "http_answers": answers,
        "b_id_with_a_uuid_at_a_run": "rejected",
        "b_run_ignored_or_rejected_reports": 0,
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
