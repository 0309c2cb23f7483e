"""Protocol models against every real sample in tests/fixtures (copied from the reference)."""

from __future__ import annotations

import base64
import json
import plistlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import enrollment, plist, routing
from protocol.commands import Command, device_information, install_profile, parse_command_plist
from protocol.results import (
    CertificateListResponse,
    DeviceInformationResponse,
    ProfileListResponse,
    ReportError,
    SecurityInfoResponse,
    parse_report,
    typed,
)
from protocol.webhooks import WebhookError, parse_webhook
from tests.conftest import FIXTURES

LIVE = FIXTURES / "nanomdm-live" / "webhooks.jsonl"
MAC = "C9E587FA-CC62-45BE-A3EF-2B24708B500F"


def live_events() -> list[bytes]:
    return [line.encode() for line in LIVE.read_text().splitlines() if line.strip()]


def test_every_live_nanomdm_webhook_parses() -> None:
    events = [parse_webhook(body) for body in live_events()]
    assert [e.topic for e in events[:2]] == ["mdm.Authenticate", "mdm.TokenUpdate"]
    assert events[-1].topic == "mdm.CheckOut"
    assert all(e.enrollment.id == MAC and e.enrollment.type == "Device" for e in events)
    assert all(e.has_ids for e in events)
    assert events[1].token_update_tally == 1
    statuses = [e.report.status for e in events if e.report is not None]
    assert statuses.count("Idle") == 6
    assert "NotNow" in statuses and "Error" in statuses
    # NotNow then Acknowledged for the same UUID
    same = [e.report for e in events if e.report and e.report.command_uuid.startswith("5555")]
    assert [r.status for r in same if r] == ["NotNow", "Acknowledged"]
    error = next(e.report for e in events if e.report and e.report.status == "Error")
    assert error is not None
    assert error.error_chain[0].error_code == 12021
    assert "Unknown command: RestartDevice" in error.error_summary


def test_live_answers_give_typed_responses() -> None:
    reports = {
        e.report.command_uuid[:4]: e.report
        for e in map(parse_webhook, live_events())
        if e.report and e.report.status == "Acknowledged"
    }
    info = typed(reports["1111"], DeviceInformationResponse).query_responses
    assert info.serial_number == "K0UY2YTBDSJ3"
    assert info.device_name == "K0UY2YTBDSJ3's Computer"
    profiles = typed(reports["2222"], ProfileListResponse).profile_list
    assert profiles[0].identifier == "com.github.micromdm.nanomdm"
    assert {p.type for p in profiles[0].content} == {"com.apple.security.scep", "com.apple.mdm"}


@pytest.mark.parametrize(
    "name", ["service_webhook__Authenticate.2.json", "service_webhook__DeviceInformation.1.json"]
)
def test_nanomdm_sample_webhooks_parse(name: str) -> None:
    event = parse_webhook((FIXTURES / "nanomdm" / name).read_bytes())
    assert event.enrollment.id == "66ADE930-5FDF-5EC4-8429-15640684C489"
    if event.report:
        assert typed(event.report, DeviceInformationResponse).query_responses.udid


def test_legacy_webhook_without_ids_derives_the_enrollment() -> None:
    event = parse_webhook((FIXTURES / "nanocmd" / "mdm_foss__tokenupdate.json").read_bytes())
    assert not event.has_ids
    assert event.enrollment.id == "FF269FDC-7A93-5F12-A4B7-09923F0D1F7F"
    assert event.message_type == "TokenUpdate"
    assert event.token_update_tally == 1


CHECKINS = sorted((FIXTURES / "nanomdm").glob("mdm__*.plist"))


def _is_report(path: Path) -> bool:
    return "devinfo" in path.name or "resp" in path.name or "certlist" in path.name


REPORTS = sorted(p for p in (FIXTURES / "nanocmd").glob("*.plist") if _is_report(p))


@pytest.mark.parametrize("path", CHECKINS, ids=lambda p: p.name)
def test_nanomdm_sample_plists_parse(path: Path) -> None:
    doc = plist.loads(path.read_bytes())
    ref = enrollment.derive(doc)
    assert ref is not None and ref.type == "Device"
    if "MessageType" not in doc:
        assert parse_report(path.read_bytes()).status == "Acknowledged"


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.name)
def test_nanocmd_device_answers_parse(path: Path) -> None:
    report = parse_report(path.read_bytes())
    assert report.enrollment_id
    if report.status == "Error":
        assert report.error_chain[0].error_domain == "NSOSStatusErrorDomain"
        assert report.error_chain[0].error_code == -909


def test_security_info_and_certificate_list_typed() -> None:
    secinfo = parse_report(
        (FIXTURES / "nanocmd" / "workflow_inventory__secinfo.plist").read_bytes()
    )
    si = typed(secinfo, SecurityInfoResponse).security_info
    assert si.fde_enabled is False and si.sip_enabled is True
    assert si.management_status and si.management_status.user_approved_enrollment is True
    certs = parse_report((FIXTURES / "nanocmd" / "workflow_certprof__certlist.plist").read_bytes())
    (item,) = typed(certs, CertificateListResponse).certificate_list
    assert item.is_identity and item.der.startswith(b"\x30\x82")


def test_profiles_and_openapi_documents_parse() -> None:
    for path in (FIXTURES / "nanocmd").glob("*.mobileconfig"):
        assert plist.loads(path.read_bytes())["PayloadContent"]
    for path in FIXTURES.glob("*/docs_openapi.yaml"):
        assert yaml.safe_load(path.read_text())["paths"]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"UDID": "U1"}, ("U1", "Device")),
        ({"UDID": "U1", "UserID": "A-B"}, ("U1:A-B", "User")),
        (
            {"UDID": "U1", "UserID": enrollment.SHARED_IPAD_USER_ID, "UserShortName": "jdoe"},
            ("U1:jdoe", "Shared iPad"),
        ),
        ({"EnrollmentID": "E1"}, ("E1", "User Enrollment (Device)")),
        ({"EnrollmentID": "E1", "EnrollmentUserID": "EU"}, ("E1:EU", "User Enrollment")),
        ({}, None),
    ],
)
def test_enrollment_id_derivation(
    payload: dict[str, Any], expected: tuple[str, str] | None
) -> None:
    ref = enrollment.derive(payload)
    assert (ref.id, ref.type) == expected if ref else expected is None


def test_command_renders_the_plist_nanomdm_expects() -> None:
    raw = device_information(["SerialNumber"]).to_plist("mf.inv.-.abc")
    assert raw.startswith(b"<?xml")
    doc = plistlib.loads(raw)
    assert doc == {
        "Command": {"RequestType": "DeviceInformation", "Queries": ["SerialNumber"]},
        "CommandUUID": "mf.inv.-.abc",
    }
    uuid, cmd = parse_command_plist(install_profile(b"\x00\x01profile").to_plist("u1"))
    assert uuid == "u1" and plist.from_json(cmd.fields)["Payload"] == b"\x00\x01profile"


def test_command_json_round_trip_keeps_data_and_dates() -> None:
    cmd = Command(request_type="X", fields={"Payload": plist.data(b"\xff\x00")})
    again = Command.model_validate_json(cmd.model_dump_json())
    assert plistlib.loads(again.to_plist("u"))["Command"]["Payload"] == b"\xff\x00"


def test_command_uuid_routing() -> None:
    uuid = routing.command_uuid("inv", None, "0123456789abcdef0123")
    assert len(uuid) < 127
    assert routing.parse_command_uuid(uuid) == routing.CommandRoute(
        "inv", None, "0123456789abcdef0123"
    )
    with_instance = routing.command_uuid("inv", "0b7c3f3e-2f7d-4a57-9a3e-0c5a8a4b3c2d", "t")
    assert routing.parse_command_uuid(with_instance).instance_id.startswith("0b7c")  # type: ignore[union-attr]
    for foreign in ["11111111-1111-4111-8111-111111111111", "mf.inv", "mf..-.x", "CERT-LIST-01"]:
        assert routing.parse_command_uuid(foreign) is None
    assert routing.workflow_id("w", "E:U") == "w/E:U"


def _webhook(**event: Any) -> bytes:
    return json.dumps({"topic": "mdm.Connect", "acknowledge_event": event}).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"topic": "x"}', "unknown topic"),
        (b'{"topic": "mdm.Connect"}', "exactly one"),
        (_webhook(udid="U"), "no raw_payload"),
        (_webhook(raw_payload="***"), "not base64"),
        (_webhook(raw_payload=base64.b64encode(b"<nope").decode()), "not a valid plist"),
        (
            _webhook(
                raw_payload=base64.b64encode(plist.dumps({"Status": "Weird", "UDID": "U"})).decode()
            ),
            "unknown report Status",
        ),
        (
            _webhook(
                raw_payload=base64.b64encode(plist.dumps({"Status": "Acknowledged"})).decode()
            ),
            "cannot determine the enrollment",
        ),
    ],
)
def test_bad_webhooks_get_a_clear_reason(body: bytes, reason: str) -> None:
    with pytest.raises(WebhookError, match=reason):
        parse_webhook(body)


def test_report_needs_command_uuid_unless_idle() -> None:
    with pytest.raises(ReportError):
        parse_report(plist.dumps({"Status": "Acknowledged", "UDID": "U"}))
    assert parse_report(plist.dumps({"Status": "Idle", "UDID": "U"})).status == "Idle"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_webhook_parser_never_crashes(body: bytes) -> None:
    try:
        parse_webhook(body)
    except WebhookError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["topic", "event_id", "acknowledge_event", "checkin_event", "ids"]),
        json_values,
    )
)
def test_webhook_parser_survives_arbitrary_json(doc: dict[str, Any]) -> None:
    try:
        parse_webhook(json.dumps(doc).encode())
    except WebhookError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_plist_parser_raises_only_plist_error(raw: bytes) -> None:
    try:
        plist.loads(raw)
    except plist.PlistError:
        pass
