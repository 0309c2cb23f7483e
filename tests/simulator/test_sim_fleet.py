"""The Fleet object on its own: idleness, compact state, throughput without HTTP."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from simulator.fleet import DeviceBehaviour, Fleet, FleetConfig, UnknownEnrollment


async def test_wait_idle_times_out_while_work_is_due() -> None:
    fleet = Fleet(FleetConfig(connect_latency=5.0))
    await fleet.start()
    try:
        (dev,) = await fleet.enroll(1)
        fleet.push([dev])
        assert not fleet.is_idle()
        with pytest.raises(TimeoutError):
            await fleet.wait_idle(0.05)
        await fleet.connect(dev)  # connecting now replaces the far-off push
        await fleet.wait_idle(2)
        assert fleet.device_state(dev)["counters"]["connects"] == 1
    finally:
        await fleet.stop()


async def test_unknown_ids_raise() -> None:
    fleet = Fleet()
    with pytest.raises(UnknownEnrollment):
        fleet.device_state("nope")
    with pytest.raises(UnknownEnrollment):
        fleet.set_behaviour("nope", DeviceBehaviour())
    with pytest.raises(ValueError):
        await fleet.enroll(1, "toaster")  # type: ignore[arg-type]


async def test_device_state_is_compact() -> None:
    fleet = Fleet(FleetConfig())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    await fleet.enroll(2000)
    per_device = (tracemalloc.get_traced_memory()[0] - before) / 2000
    tracemalloc.stop()
    # 10,000 devices must fit comfortably in 500 MB: keep each well under 5 KB
    assert per_device < 5_000, per_device


async def test_thousands_of_commands_per_second_in_process() -> None:
    fleet = Fleet(FleetConfig(connect_latency=0.0))
    await fleet.start()
    try:
        ids = await fleet.enroll(3000)
        for i, dev in enumerate(ids):
            err = fleet.enqueue([dev], f"T-{i}", "DeviceInformation", {"Queries": ["UDID"]})
            assert err is None
        t0 = time.perf_counter()
        fleet.push(ids)
        await fleet.wait_idle(30)
        rate = 3000 / (time.perf_counter() - t0)
        assert fleet.stats["commands_answered"] == 3000
        assert rate > 500, rate
    finally:
        await fleet.stop()
