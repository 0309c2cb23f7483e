"""Device sessions: Idle first, FIFO answers, NotNow, offline, latency, errors."""

from __future__ import annotations

import asyncio

from sim_support import Sim, SimFactory

from simulator.fleet import DeviceBehaviour


async def test_idle_then_answers_in_fifo_order(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    for i in range(3):
        assert (await sim.enqueue(dev, "ProfileList", f"C-{i}", nopush=True)).status_code == 200
    await sim.fleet.connect(dev)
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == [
        ("Idle", None),
        ("Acknowledged", "C-0"),
        ("Acknowledged", "C-1"),
        ("Acknowledged", "C-2"),
    ]
    # every answer is a full report plist, in the live capture's layout
    ev = sim.events(dev, "mdm.Connect")[1]
    assert ev.raw["CommandUUID"] == "C-0" and ev.raw["RequestType"] == "ProfileList"
    assert ev.raw["Status"] == "Acknowledged" and ev.raw["UDID"] == dev
    assert sim.fleet.device_state(dev)["queue"] == []


async def test_notnow_then_acknowledged_for_same_uuid(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    sim.fleet.set_behaviour(dev, DeviceBehaviour(notnow_count=1))
    await sim.enqueue(dev, "DeviceInformation", "NN-1", Queries=["SerialNumber"])
    await sim.fleet.wait_idle(5)
    # the device comes back by itself after NotNow, as in the live NanoMDM capture
    assert sim.connects(dev) == [
        ("Idle", None),
        ("NotNow", "NN-1"),
        ("Idle", None),
        ("Acknowledged", "NN-1"),
    ]
    notnow = sim.events(dev, "mdm.Connect")[1].raw
    assert notnow["Status"] == "NotNow" and "QueryResponses" not in notnow
    state = sim.fleet.device_state(dev)
    assert state["queue"] == [] and state["counters"]["notnow"] == 1


async def test_notnow_skips_to_other_commands_like_nanomdm(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    sim.fleet.set_behaviour(dev, DeviceBehaviour(notnow_count=2))
    await sim.enqueue(dev, "ProfileList", "A", nopush=True)
    await sim.enqueue(dev, "ProfileList", "B")
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == [
        ("Idle", None),
        ("NotNow", "A"),
        ("NotNow", "B"),  # after a NotNow, NanoMDM hands out commands not in NotNow
        ("Idle", None),  # the device comes back by itself
        ("NotNow", "A"),  # after Idle, NotNow commands are handed out again; B is skipped
        ("Idle", None),
        ("Acknowledged", "A"),
        ("NotNow", "B"),
        ("Idle", None),
        ("Acknowledged", "B"),
    ]


async def test_injected_error_answers_error_chain(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    sim.fleet.set_behaviour(
        dev, DeviceBehaviour(errors={"InstallProfile": (12345, "MCProfileErrorDomain", "nope")})
    )
    ev = await sim.run(dev, "InstallProfile", Payload=b"<plist/>")
    assert ev.status == "Error"
    assert ev.raw["ErrorChain"] == [
        {
            "ErrorCode": 12345,
            "ErrorDomain": "MCProfileErrorDomain",
            "LocalizedDescription": "nope",
            "USEnglishDescription": "nope",
        }
    ]
    # other request types are unaffected
    assert (await sim.run(dev, "ProfileList")).status == "Acknowledged"


async def test_unknown_command_is_12021_like_a_real_mac(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    ev = await sim.run(dev, "RestartDevice")
    assert ev.status == "Error"
    assert ev.raw["ErrorChain"] == [
        {
            "ErrorCode": 12021,
            "ErrorDomain": "MCMDMErrorDomain",
            "LocalizedDescription": "Unknown command: RestartDevice <MDMClientError:91>",
        }
    ]
    assert ev.raw["RequestType"] == "RestartDevice"


async def test_offline_device_connects_when_back_online(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    sim.fleet.set_behaviour(dev, DeviceBehaviour(offline=True))
    resp = await sim.enqueue(dev, "ProfileList", "OFF-1")
    assert resp.status_code == 200  # the push itself succeeds
    await asyncio.sleep(0.1)
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == []
    sim.fleet.set_behaviour(dev, DeviceBehaviour(offline=False))
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == [("Idle", None), ("Acknowledged", "OFF-1")]


async def test_slow_device_connects_later(sim: Sim) -> None:
    fast, slow = await sim.fleet.enroll(2)
    sim.fleet.set_behaviour(slow, DeviceBehaviour(connect_latency=0.5))
    await sim.enqueue([fast, slow], "ProfileList", "SLOW-1")
    await asyncio.sleep(0.25)
    assert sim.connects(fast)[-1] == ("Acknowledged", "SLOW-1")
    assert sim.connects(slow) == []
    await sim.fleet.wait_idle(5)
    assert sim.connects(slow)[-1] == ("Acknowledged", "SLOW-1")


async def test_answer_latency_spaces_answers(make_sim: SimFactory) -> None:
    sim = await make_sim(answer_latency=0.05)
    (dev,) = await sim.fleet.enroll(1)
    for i in range(4):
        await sim.enqueue(dev, "ProfileList", f"L-{i}", nopush=True)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await sim.fleet.connect(dev)
    await sim.fleet.wait_idle(5)
    assert loop.time() - t0 >= 0.2  # Idle + 4 answers, 50 ms apart
    assert [u for _, u in sim.connects(dev)] == [None, "L-0", "L-1", "L-2", "L-3"]


async def test_command_enqueued_during_session_is_answered_in_it(
    make_sim: SimFactory,
) -> None:
    sim = await make_sim(answer_latency=0.05)
    (dev,) = await sim.fleet.enroll(1)
    await sim.enqueue(dev, "ProfileList", "S-1", nopush=True)
    await sim.enqueue(dev, "ProfileList", "S-2", nopush=True)
    await sim.fleet.connect(dev)
    await asyncio.sleep(0.07)
    await sim.enqueue(dev, "ProfileList", "S-3")
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == [
        ("Idle", None),
        ("Acknowledged", "S-1"),
        ("Acknowledged", "S-2"),
        ("Acknowledged", "S-3"),
    ]


async def test_patch_behaviour_over_http(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    r = await sim.client.patch(
        f"/sim/devices/{dev}", json={"notnow_count": 1, "errors": {"SecurityInfo": [42]}}
    )
    assert r.status_code == 200
    assert r.json()["behaviour"]["errors"]["SecurityInfo"][0] == 42
    ev = await sim.run(dev, "SecurityInfo")
    assert ev.status == "Error" and ev.raw["ErrorChain"][0]["ErrorCode"] == 42
    assert ("NotNow", ev.event["command_uuid"]) in sim.connects(dev)
    bad = await sim.client.patch(f"/sim/devices/{dev}", json={"notnow_count": -1})
    assert bad.status_code == 400
    bad2 = await sim.client.patch(f"/sim/devices/{dev}", json={"errors": {"X": ["abc"]}})
    assert bad2.status_code == 400
    assert (await sim.client.patch("/sim/devices/NOPE", json={})).status_code == 404
