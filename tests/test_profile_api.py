"""NanoCMD's profile and command-plan API over real HTTP."""

from __future__ import annotations

import httpx
from cryptography.hazmat.primitives import serialization

from tests.e2e_stack import E2E
from tests.profile_support import profile, sign

UUID = "0B8E39A4-53D3-4C43-A4D9-70C6B3B3F0D7"
ASPEN = "application/x-apple-aspen-config"


async def test_profile_round_trip_keeps_the_bytes(e2e: E2E) -> None:
    plain = profile("com.example.api.plain", UUID)
    signed = sign(profile("com.example.api.signed"))
    resp = await e2e.api.put("/v1/profile/api-plain", content=plain)
    assert resp.status_code == 204 and resp.content == b"", resp.text
    resp = await e2e.api.put(
        "/v1/profile/api-signed", content=signed, headers={"Content-Type": "application/pkcs7"}
    )
    assert resp.status_code == 204, resp.text

    got = await e2e.api.get("/v1/profile/api-signed")
    assert got.status_code == 200
    assert got.headers["content-type"] == ASPEN
    assert got.content == signed  # still signed, byte for byte
    assert (await e2e.api.get("/v1/profile/api-plain")).content == plain

    listed = await e2e.api.get(
        "/v1/profiles", params=[("name", "api-plain"), ("name", "api-signed")]
    )
    assert listed.status_code == 200
    body = listed.json()
    assert body["api-plain"] == {
        "identifier": "com.example.api.plain",
        "uuid": UUID,
        "signed": False,
    }
    assert body["api-signed"]["identifier"] == "com.example.api.signed"
    assert body["api-signed"]["signed"] is True
    assert set(body) == {"api-plain", "api-signed"}
    assert {"api-plain", "api-signed"} <= set((await e2e.api.get("/v1/profiles")).json())

    # the stores the workflows use see the same thing
    assert await e2e.services.profiles.get("api-signed") == signed

    assert (await e2e.api.delete("/v1/profile/api-plain")).status_code == 204
    assert (await e2e.api.get("/v1/profile/api-plain")).status_code == 404
    assert "api-plain" not in (await e2e.api.get("/v1/profiles")).json()


async def test_pem_signed_profile_is_accepted_and_returned_as_sent(e2e: E2E) -> None:
    pem = sign(profile("com.example.api.pem"), encoding=serialization.Encoding.PEM)
    assert (await e2e.api.put("/v1/profile/api-pem", content=pem)).status_code == 204
    assert (await e2e.api.get("/v1/profile/api-pem")).content == pem


async def test_bad_profiles_get_400_with_the_reason_and_change_nothing(e2e: E2E) -> None:
    original = profile("com.example.api.keep")
    assert (await e2e.api.put("/v1/profile/api-keep", content=original)).status_code == 204
    tampered = sign(profile("com.example.api.signed")).replace(b"api.signed", b"api.signeD")
    cases = [
        (b"", "empty body"),
        (b"definitely not a plist", "not a valid XML or binary property list"),
        (profile(PayloadType="com.apple.dock"), "PayloadType must be 'Configuration'"),
        (profile(PayloadUUID=None), "PayloadUUID is missing"),
        (tampered, "signed profile refused: content does not match the signed message digest"),
        (b"\x30\x82\x01\x00\x06", "signed profile refused: malformed CMS data"),
    ]
    for raw, reason in cases:
        resp = await e2e.api.put("/v1/profile/api-keep", content=raw)
        assert resp.status_code == 400, resp.text
        assert reason in resp.json()["error"], resp.text
    assert (await e2e.api.get("/v1/profile/api-keep")).content == original


async def test_profile_404s_and_long_names(e2e: E2E) -> None:
    assert (await e2e.api.get("/v1/profile/no-such-profile")).status_code == 404
    resp = await e2e.api.delete("/v1/profile/no-such-profile")
    assert resp.status_code == 404 and "no-such-profile" in resp.json()["error"]
    resp = await e2e.api.get("/v1/profiles", params=[("name", "no-such-profile")])
    assert resp.status_code == 404 and "no-such-profile" in resp.json()["error"]
    resp = await e2e.api.put("/v1/profile/" + "n" * 256, content=profile())
    assert resp.status_code == 400 and "longer than 255" in resp.json()["error"]


async def test_cmdplan_round_trip_validation_and_listing(e2e: E2E) -> None:
    plan = {
        "profile_names": ["api-plain", "${dept:staff}-dock"],
        "manifest_urls": ["https://apps.example.com/${dept}/manifest.plist"],
        "device_configured": True,
    }
    assert (await e2e.api.put("/v1/cmdplan/api-setup", json=plan)).status_code == 204
    # as `curl -d @plan.json` sends it: form-encoded content type, JSON body
    resp = await e2e.api.put(
        "/v1/cmdplan/api-min",
        content=b'{"profile_names": ["x"]}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code == 204, resp.text

    got = await e2e.api.get("/v1/cmdplan/api-setup")
    assert got.status_code == 200 and got.json() == plan
    assert (await e2e.api.get("/v1/cmdplan/api-min")).json() == {
        "profile_names": ["x"],
        "manifest_urls": [],
        "device_configured": False,
    }
    names = (await e2e.api.get("/v1/cmdplans")).json()
    assert {"api-setup", "api-min"} <= set(names) and names == sorted(names)

    bad = [
        (b"{not json", "not a valid command plan"),
        (b"", "not a valid command plan"),
        (b'{"profile_names": "api-plain"}', "profile_names"),
        (b'{"account_config": {"lock_primary_account_info": true}}', "account_config"),
        (b'{"device_configured": "yes please"}', "device_configured"),
    ]
    for body, reason in bad:
        resp = await e2e.api.put("/v1/cmdplan/api-setup", content=body)
        assert resp.status_code == 400, resp.text
        assert reason in resp.json()["error"], resp.text
    assert (await e2e.api.get("/v1/cmdplan/api-setup")).json() == plan  # unchanged

    assert (await e2e.api.delete("/v1/cmdplan/api-setup")).status_code == 204
    assert (await e2e.api.delete("/v1/cmdplan/api-setup")).status_code == 404
    resp = await e2e.api.get("/v1/cmdplan/api-setup")
    assert resp.status_code == 404 and "api-setup" in resp.json()["error"]
    assert "api-setup" not in (await e2e.api.get("/v1/cmdplans")).json()


async def test_everything_needs_the_api_key(e2e: E2E) -> None:
    calls = [
        ("PUT", "/v1/profile/x"),
        ("GET", "/v1/profile/x"),
        ("DELETE", "/v1/profile/x"),
        ("GET", "/v1/profiles"),
        ("PUT", "/v1/cmdplan/x"),
        ("GET", "/v1/cmdplan/x"),
        ("DELETE", "/v1/cmdplan/x"),
        ("GET", "/v1/cmdplans"),
    ]
    for auth in (None, ("nanocmd", "wrong-key")):
        async with httpx.AsyncClient(base_url=e2e.api.base_url, auth=auth) as anon:
            for method, path in calls:
                resp = await anon.request(method, path, content=profile())
                assert resp.status_code == 401, (method, path, resp.text)
                assert "WWW-Authenticate" in resp.headers
    assert (await e2e.api.get("/v1/profile/x")).status_code == 404  # x was never stored
