"""Profiles (plain, binary, CMS-signed and verified) and command plans, parsed and stored
on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import plistlib
import random

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from pydantic import ValidationError

from protocol import cms
from simulator.profiles import parse as simulator_parse
from store.cmdplans import CmdPlan, CmdPlanStore, expand
from store.db import open_engine
from store.profiles import ProfileError, ProfileStore, parse_profile
from tests.conftest import FIXTURES
from tests.profile_support import ec_identity, profile, rsa_identity, sign, to_ber

UUID = "5A0D3B5C-8F3E-4E0B-9C59-2B1F1C7A9E11"


def refused(raw: bytes, reason: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(raw)
    assert reason in str(caught.value), str(caught.value)


# ---- plain profiles ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", [plistlib.FMT_XML, plistlib.FMT_BINARY])
def test_plain_profiles_give_identifier_and_uuid(fmt: plistlib.PlistFormat) -> None:
    info = parse_profile(profile("com.example.plain", UUID, fmt))
    assert (info.identifier, info.uuid, info.signed) == ("com.example.plain", UUID, False)


def test_nanocmd_fixture_profiles() -> None:
    cases = {
        "utils_mobileconfig__test.mobileconfig": (
            "0DA6B871-623D-400A-B0EB-3BE489E39F2A",
            "D0CCE647-B1D6-49B0-82BC-C1BCC8A33218",
        ),
        "workflow_certprof__scep.mobileconfig": (
            "com.example.scep",
            "99DE38CA-FE94-49EA-BADB-768D89049973",
        ),
    }
    for name, (identifier, uuid) in cases.items():
        raw = (FIXTURES / "nanocmd" / name).read_bytes()
        for blob, signed in ((raw, False), (sign(raw), True)):
            info = parse_profile(blob)
            assert (info.identifier, info.uuid, info.signed) == (identifier, uuid, signed)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty profile"),
        (b"hello, world", "not a valid XML or binary property list"),
        (b'{"PayloadType": "Configuration"}', "not a valid XML or binary property list"),
        (plistlib.dumps(["a", "b"]), "not a dictionary"),
        (profile(PayloadType="com.apple.dock"), "PayloadType must be 'Configuration'"),
        (profile(PayloadType=None), "PayloadType must be 'Configuration', found None"),
        (profile(PayloadUUID=None), "PayloadUUID is missing"),
        (profile(PayloadIdentifier=""), "PayloadIdentifier is missing or empty"),
        (profile(PayloadIdentifier=7), "PayloadIdentifier is missing"),
        (profile(PayloadIdentifier="x" * 256), "longer than 255"),
        (profile(PayloadVersion=2), "PayloadVersion must be 1"),
        (profile(PayloadVersion=None), "PayloadVersion must be 1"),
    ],
)
def test_what_is_not_a_profile_is_refused_with_the_reason(raw: bytes, reason: str) -> None:
    refused(raw, reason)


# ---- signed profiles --------------------------------------------------------------


def test_signed_profiles_verify_with_rsa_and_ec_and_any_digest() -> None:
    raw = profile("com.example.signed", UUID)
    blobs = [
        sign(raw),
        sign(raw, hash_alg=hashes.SHA512()),
        sign(raw, ec_identity(), hash_alg=hashes.SHA384()),
        sign(raw, ec_identity(), hash_alg=hashes.SHA256()),
        sign(profile("com.example.signed", UUID, plistlib.FMT_BINARY)),
        sign(raw, options=[pkcs7.PKCS7Options.NoAttributes]),  # signature over the content
        sign(raw, encoding=serialization.Encoding.PEM),
    ]
    for blob in blobs:
        info = parse_profile(blob)
        assert (info.identifier, info.uuid, info.signed) == ("com.example.signed", UUID, True)


def test_indefinite_length_ber_as_macos_writes_it_is_read_and_checked() -> None:
    raw = profile("com.example.ber", UUID)
    ber = to_ber(sign(raw))
    assert ber[:2] == b"\x30\x80" and ber.endswith(b"\x00\x00")
    assert cms.signed_content(ber) == raw
    assert parse_profile(ber).identifier == "com.example.ber"
    assert simulator_parse(ber).identifier == "com.example.ber"  # the simulator shares it
    refused(to_ber(sign(raw)).replace(b"com.example.ber", b"com.example.bEr"), "message digest")


def test_content_altered_after_signing_is_refused() -> None:
    blob = sign(profile("com.example.signed", UUID))
    tampered = blob.replace(b"com.example.signed", b"com.example.signee")
    assert tampered != blob and len(tampered) == len(blob)
    refused(tampered, "signed profile refused: content does not match the signed message digest")
    # no signed attributes: the signature itself covers the content
    bare = sign(profile("com.example.signed", UUID), options=[pkcs7.PKCS7Options.NoAttributes])
    refused(
        bare.replace(b"com.example.signed", b"com.example.signee"),
        "the signature does not verify with the signer's certificate",
    )


def test_altered_signature_is_refused() -> None:
    for identity in (rsa_identity(), ec_identity()):
        blob = bytearray(sign(profile(), identity))
        blob[-3] ^= 0x01  # inside the signature, the last field of the only SignerInfo
        refused(bytes(blob), "does not verify")


def test_signature_by_another_key_than_the_certificate_is_refused() -> None:
    key, _ = rsa_identity()
    _, other_cert = ec_identity()
    try:
        blob = sign(profile(), (key, other_cert))
    except (TypeError, ValueError):
        pytest.skip("cryptography refuses to build a mismatched signer")
    refused(blob, "signed profile refused")


def test_detached_unsigned_and_certificate_less_signatures_are_refused() -> None:
    raw = profile()
    refused(sign(raw, options=[pkcs7.PKCS7Options.DetachedSignature]), "detached signature")
    refused(sign(raw, options=[pkcs7.PKCS7Options.NoCerts]), "certificate is not included")
    refused(sign(b"not a plist at all"), "signed content is not a valid XML or binary")
    refused(b"\x30\x03\x02\x01\x01", "not CMS SignedData")
    refused(b"-----BEGIN PKCS7-----\n!!!\n-----END PKCS7-----\n", "not valid base64")
    refused(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not PKCS7/CMS")
    refused(sign(raw) + b"\x00", "unexpected bytes after")


def test_every_truncation_and_bit_flip_is_a_profile_error_or_still_valid() -> None:
    blob = sign(profile("com.example.fuzz", UUID), ec_identity())
    for end in range(len(blob)):
        with pytest.raises(ProfileError):
            parse_profile(blob[:end])
    rng = random.Random(1)
    for _ in range(400):
        damaged = bytearray(blob)
        damaged[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        try:
            info = parse_profile(bytes(damaged))
        except ProfileError:
            continue
        # Only bytes outside what is signed (e.g. the certificate's own signature) may
        # change without being noticed; the profile read is then still the original.
        assert (info.identifier, info.uuid) == ("com.example.fuzz", UUID)


# ---- the profile store ------------------------------------------------------------


async def test_profile_store_keeps_raw_bytes_and_info(db_url: str) -> None:
    engine = await open_engine(db_url)
    store = ProfileStore(engine)
    signed = sign(profile("com.example.signed", UUID))
    plain = profile("com.example.plain")
    assert (await store.put("b-signed", signed)).signed is True
    assert (await store.put("a-plain", plain)).identifier == "com.example.plain"
    assert await store.get("b-signed") == signed  # installed signed, byte for byte
    assert await store.get("a-plain") == plain
    assert await store.get("missing") is None

    everything = await store.info()
    assert list(everything) == ["a-plain", "b-signed"]
    assert everything["b-signed"].uuid == UUID and everything["b-signed"].signed
    assert list(await store.info(["b-signed", "missing"])) == ["b-signed"]
    assert await store.info([]) == {}

    replaced = await store.put("a-plain", profile("com.example.replaced"))
    assert (await store.info(["a-plain"]))["a-plain"] == replaced

    with pytest.raises(ProfileError):
        await store.put("a-plain", b"garbage")
    assert (await store.info(["a-plain"]))["a-plain"].identifier == "com.example.replaced"

    assert await store.delete("a-plain") is True
    assert await store.delete("a-plain") is False
    assert await store.get("a-plain") is None
    await engine.dispose()


async def test_racing_first_puts_of_one_name_both_succeed(db_url: str) -> None:
    engine = await open_engine(db_url)
    store = ProfileStore(engine)
    versions = [profile(f"com.example.race{i}") for i in range(4)]
    await asyncio.gather(*(store.put("race", raw) for raw in versions))
    assert await store.get("race") in versions
    await engine.dispose()


async def test_cmdplan_store_round_trip(db_url: str) -> None:
    engine = await open_engine(db_url)
    store = CmdPlanStore(engine)
    plan = CmdPlan(
        profile_names=["wifi", "${ou:staff}-dock"],
        manifest_urls=["https://example.com/app.plist"],
        device_configured=True,
    )
    await store.put("setup", plan)
    await store.put("another", CmdPlan())
    assert await store.get("setup") == plan
    assert await store.get("missing") is None
    assert await store.names() == ["another", "setup"]
    await store.put("setup", CmdPlan(profile_names=["only"]))
    assert await store.get("setup") == CmdPlan(profile_names=["only"])
    assert await store.delete("setup") is True
    assert await store.delete("setup") is False
    assert await store.names() == ["another"]
    await engine.dispose()


# ---- command plans ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "params", "expected"),
    [
        # NanoCMD's own table (workflow/cmdplan TestExpandParam)
        ("a", {}, "a"),
        ("a${b}c", {}, "ac"),
        ("a${b:x}c", {}, "axc"),
        ("a${b:x}c", {"b": "g"}, "agc"),
        ("a${b:x:1}c", {}, "ax:1c"),
        # and Go's os.Expand around it
        ("${b:x}", {"b": ""}, ""),  # present but empty: no fallback
        ("${b:}", {}, ""),
        ("$b/$c.", {"b": "1", "c": "2"}, "1/2."),
        ("${1}$1", {"1": "one"}, "oneone"),
        ("cost: 5$", {}, "cost: 5$"),
        ("a$%b", {}, "a$%b"),
        ("a${b", {"b": "x"}, "ab"),
        ("a${}b", {}, "ab"),
        ("${ü}-$é", {"ü": "u"}, "u-$é"),
        ("${serial}.${ou:it}", {"serial": "C02X"}, "C02X.it"),
    ],
)
def test_expand_matches_nanocmd(value: str, params: dict[str, str], expected: str) -> None:
    assert expand(value, params) == expected


def test_plan_expansion_applies_to_names_and_urls_only() -> None:
    plan = CmdPlan(
        profile_names=["base", "${dept:general}-dock"],
        manifest_urls=["https://apps.example.com/${dept}/manifest.plist"],
        device_configured=True,
    )
    got = plan.expanded({"dept": "eng"})
    assert got.profile_names == ["base", "eng-dock"]
    assert got.manifest_urls == ["https://apps.example.com/eng/manifest.plist"]
    assert got.device_configured is True
    assert plan.expanded({}).profile_names == ["base", "general-dock"]
    assert plan.profile_names[1] == "${dept:general}-dock"  # the stored plan is unchanged


def test_cmdplan_json_is_nanocmds() -> None:
    plan = CmdPlan.model_validate_json('{"profile_names": ["a"], "device_configured": true}')
    assert plan.model_dump() == {
        "profile_names": ["a"],
        "manifest_urls": [],
        "device_configured": True,
    }
    assert (
        CmdPlan.model_validate_json(
            '{"profile_names": null, "manifest_urls": null, "device_configured": null}'
        )
        == CmdPlan()
    )
    for bad in (
        '{"account_config": {}}',
        '{"profile_names": "a"}',
        '{"profile_names": [""]}',
        '{"device_configured": "maybe"}',
        "[]",
    ):
        with pytest.raises(ValidationError):
            CmdPlan.model_validate_json(bad)
