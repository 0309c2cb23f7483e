"""TLS: HTTPS for ``mdmflow serve``, TLS / mTLS / API key for every Temporal client.

Certificates are made at test time (a CA, a server certificate for 127.0.0.1/localhost,
a client certificate). The embedded dev server has no TLS of its own, so the Temporal
side goes through a TLS-terminating proxy in front of it that requires the client
certificate (mTLS) when asked to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from temporalio.client import Client
from temporalio.service import TLSConfig

from mdmflow import config
from mdmflow.config import TemporalSecurity
from mdmflow.temporal_client import connect, tls_config
from mdmflow.temporal_server import DevServer, free_port
from starter.client_cli import api_client
from starter.server import ssl_options

REPO = Path(__file__).resolve().parent.parent
TEMPORAL_VARS = (
    "TEMPORAL_ADDRESS",
    "TEMPORAL_TLS",
    "TEMPORAL_TLS_CA",
    "TEMPORAL_TLS_CERT",
    "TEMPORAL_TLS_KEY",
    "TEMPORAL_TLS_SERVER_NAME",
    "TEMPORAL_API_KEY",
)


# -- certificates ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_key: Path  # belongs to no certificate


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("mdmflow test CA", ca_key, None, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert(
        "localhost",
        server_key,
        ca,
        ca_key,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("mdmflow-worker", client_key, ca, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    pem = serialization.Encoding.PEM
    files = {
        "ca.pem": ca.public_bytes(pem),
        "server.pem": server.public_bytes(pem),
        "server.key": _key_pem(server_key),
        "client.pem": client.public_bytes(pem),
        "client.key": _key_pem(client_key),
        "other.key": _key_pem(ec.generate_private_key(ec.SECP256R1())),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_key=directory / "other.key",
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in TEMPORAL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- a TLS-terminating proxy for the dev server ---------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@dataclass
class Proxy:
    address: str
    clients: list[str]  # per TLS connection: the client certificate's CN, or "-"


@contextlib.asynccontextmanager
async def tls_proxy(pki: Pki, backend: str, *, require_client_cert: bool) -> AsyncIterator[Proxy]:
    """``127.0.0.1:<port>`` speaking TLS (HTTP/2 by ALPN), plain gRPC to ``backend``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.set_alpn_protocols(["h2"])
    if require_client_cert:
        ctx.load_verify_locations(pki.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    host, _, port = backend.rpartition(":")
    pipes: set[asyncio.Future[Any]] = set()

    clients: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        names = [v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]
        clients.append(names[0] if names else "-")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        both = asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        pipes.add(both)
        with contextlib.suppress(asyncio.CancelledError):
            await both

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield Proxy(address, clients)
    finally:
        server.close()
        for both in pipes:
            both.cancel()


async def _list_workflows(client: Client) -> list[str]:
    return [wf.id async for wf in client.list_workflows(page_size=10)]


# -- API over HTTPS -------------------------------------------------------------------


def test_neither_file_is_plain_http() -> None:
    assert ssl_options(None, None) == {}


def test_cert_and_key_go_together(pki: Pki) -> None:
    with pytest.raises(ValueError, match="set both or neither"):
        ssl_options(pki.server_cert, None)
    with pytest.raises(ValueError, match="set both or neither"):
        ssl_options(None, pki.server_key)


def test_a_key_of_another_certificate_is_a_clear_error(pki: Pki) -> None:
    with pytest.raises(ValueError, match=r"MDMFLOW_TLS_KEY .* is not the key of MDMFLOW_TLS_CERT"):
        ssl_options(pki.server_cert, pki.other_key)


def test_a_missing_file_names_the_setting(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MDMFLOW_TLS_KEY: no such file"):
        ssl_options(pki.server_cert, tmp_path / "absent.key")
    with pytest.raises(ValueError, match="not a PEM certificate"):
        ssl_options(pki.server_key, pki.server_key)


def test_valid_pair_gives_uvicorn_options(pki: Pki) -> None:
    assert ssl_options(pki.server_cert, pki.server_key) == {
        "ssl_certfile": str(pki.server_cert),
        "ssl_keyfile": str(pki.server_key),
    }


def _serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MDMFLOW_", "TEMPORAL_", "SSL_CERT_"))
    }
    env.update(MDMFLOW_VAR_DIR=str(tmp_path / "var"), MDMFLOW_LOG_FORMAT="text", **extra)
    return env


def test_serve_refuses_a_mismatched_pair(pki: Pki, tmp_path: Path) -> None:
    env = _serve_env(
        tmp_path,
        MDMFLOW_TLS_CERT=str(pki.server_cert),
        MDMFLOW_TLS_KEY=str(pki.other_key),
        MDMFLOW_LISTEN=f"127.0.0.1:{free_port()}",
    )
    done = subprocess.run(
        [sys.executable, "-m", "mdmflow", "serve"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "is not the key of MDMFLOW_TLS_CERT" in done.stderr
    assert "Traceback" not in done.stderr


@contextlib.contextmanager
def _process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_https(url: str, ca: Path, proc: subprocess.Popen[bytes], log: Path) -> Any:
    verify = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(verify=verify, timeout=2) as http:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode}:\n{log.read_text()}")
            try:
                return (await http.get(url)).json()
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no HTTPS answer:\n{log.read_text()}") from None
                await asyncio.sleep(0.3)


async def test_serve_over_https_with_temporal_over_mtls(
    pki: Pki, dev_server: DevServer, tmp_path: Path
) -> None:
    """``mdmflow serve`` as a process: HTTPS for clients, mTLS to Temporal, from settings."""
    port = free_port()
    async with tls_proxy(pki, dev_server.address, require_client_cert=True) as proxy:
        env = _serve_env(
            tmp_path,
            MDMFLOW_LISTEN=f"127.0.0.1:{port}",
            MDMFLOW_TLS_CERT=str(pki.server_cert),
            MDMFLOW_TLS_KEY=str(pki.server_key),
            TEMPORAL_ADDRESS=proxy.address,
            TEMPORAL_TLS_CA=str(pki.ca),
            TEMPORAL_TLS_CERT=str(pki.client_cert),
            TEMPORAL_TLS_KEY=str(pki.client_key),
        )
        log = tmp_path / "serve.log"
        with _process([sys.executable, "-m", "mdmflow", "serve"], env, log) as proc:
            body = await _wait_https(f"https://127.0.0.1:{port}/version", pki.ca, proc, log)
            assert body["version"].startswith("v")
            # uvicorn answers only once start-up connected to Temporal, through the proxy
            assert "mdmflow-worker" in proxy.clients
            assert f"API and relay on https://127.0.0.1:{port}" in log.read_text()

            # localhost is in the certificate too; an unknown CA is refused
            verify = ssl.create_default_context(cafile=str(pki.ca))
            async with httpx.AsyncClient(verify=verify) as http:
                assert (await http.get(f"https://localhost:{port}/version")).status_code == 200
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                async with httpx.AsyncClient() as http:
                    await http.get(f"https://127.0.0.1:{port}/version")
            # plain HTTP to the TLS port gets no answer
            with pytest.raises(httpx.TransportError):
                async with httpx.AsyncClient(timeout=5) as http:
                    await http.get(f"http://127.0.0.1:{port}/version")

            # the CLI (mdmflow start/runs/...) trusts the CA through SSL_CERT_FILE
            def cli_version() -> int:
                args = argparse.Namespace(api_url=f"https://127.0.0.1:{port}", api_key="x")
                with pytest.MonkeyPatch.context() as mp:
                    mp.setenv("SSL_CERT_FILE", str(pki.ca))
                    with api_client(args) as http:
                        return http.get("/version").status_code

            assert await asyncio.to_thread(cli_version) == 200
            assert proc.poll() is None


# -- Temporal settings ----------------------------------------------------------------


def test_no_settings_is_plain_grpc(clean_env: pytest.MonkeyPatch) -> None:
    assert config.temporal_security() == TemporalSecurity()
    assert tls_config(TemporalSecurity()) is False


def test_tls_settings_need_an_external_server(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TEMPORAL_TLS", "1")
    with pytest.raises(ValueError, match="need TEMPORAL_ADDRESS"):
        config.temporal_security()


def test_api_key_implies_tls_with_system_roots(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TEMPORAL_ADDRESS", "ns.acct.tmprl.cloud:7233")
    clean_env.setenv("TEMPORAL_API_KEY", "secret-key")
    security = config.temporal_security()
    assert security == TemporalSecurity(tls=True, api_key="secret-key")
    assert tls_config(security) == TLSConfig()  # TLS on, the system's CA roots


def test_tls_off_keeps_an_api_key_in_the_clear(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TEMPORAL_ADDRESS", "127.0.0.1:7233")
    clean_env.setenv("TEMPORAL_API_KEY", "k")
    clean_env.setenv("TEMPORAL_TLS", "0")
    assert config.temporal_security() == TemporalSecurity(tls=False, api_key="k")


def test_mtls_files_are_read(clean_env: pytest.MonkeyPatch, pki: Pki) -> None:
    clean_env.setenv("TEMPORAL_ADDRESS", "temporal.example.com:7233")
    clean_env.setenv("TEMPORAL_TLS_CA", str(pki.ca))
    clean_env.setenv("TEMPORAL_TLS_CERT", str(pki.client_cert))
    clean_env.setenv("TEMPORAL_TLS_KEY", str(pki.client_key))
    clean_env.setenv("TEMPORAL_TLS_SERVER_NAME", "temporal.internal")
    tls = tls_config(config.temporal_security())
    assert tls == TLSConfig(
        server_root_ca_cert=pki.ca.read_bytes(),
        domain="temporal.internal",
        client_cert=pki.client_cert.read_bytes(),
        client_private_key=pki.client_key.read_bytes(),
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TEMPORAL_TLS_CERT": "c.pem"}, "set both or neither"),
        ({"TEMPORAL_TLS_KEY": "k.pem"}, "set both or neither"),
        ({"TEMPORAL_TLS": "maybe"}, "must be 1 or 0"),
        ({"TEMPORAL_TLS": "0", "TEMPORAL_TLS_CA": "ca.pem"}, "contradicts"),
    ],
)
def test_bad_settings_are_refused(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    clean_env.setenv("TEMPORAL_ADDRESS", "temporal.example.com:7233")
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        config.temporal_security()


def test_an_unreadable_file_names_the_setting(tmp_path: Path) -> None:
    security = TemporalSecurity(tls=True, ca=tmp_path / "absent.pem")
    with pytest.raises(ValueError, match="TEMPORAL_TLS_CA: cannot read"):
        tls_config(security)


async def test_connect_passes_tls_and_api_key(clean_env: pytest.MonkeyPatch, pki: Pki) -> None:
    """What reaches the SDK, from the environment: the Cloud shape, CA plus API key."""
    seen: dict[str, Any] = {}

    async def fake_connect(target: str, **kwargs: Any) -> str:
        seen.update(kwargs, target=target)
        return "client"

    clean_env.setattr(Client, "connect", fake_connect)
    clean_env.setenv("TEMPORAL_ADDRESS", "ns.acct.tmprl.cloud:7233")
    clean_env.setenv("TEMPORAL_API_KEY", "cloud-key")
    clean_env.setenv("TEMPORAL_TLS_CA", str(pki.ca))
    await connect("ns.acct.tmprl.cloud:7233", "ns.acct")
    assert seen["api_key"] == "cloud-key"
    assert seen["tls"] == TLSConfig(server_root_ca_cert=pki.ca.read_bytes())
    assert seen["namespace"] == "ns.acct"


# -- Temporal over TLS, end to end ----------------------------------------------------


async def test_connect_over_mtls_from_the_environment(
    clean_env: pytest.MonkeyPatch, pki: Pki, dev_server: DevServer
) -> None:
    async with tls_proxy(pki, dev_server.address, require_client_cert=True) as proxy:
        address = proxy.address
        clean_env.setenv("TEMPORAL_ADDRESS", address)
        clean_env.setenv("TEMPORAL_TLS_CA", str(pki.ca))
        clean_env.setenv("TEMPORAL_TLS_CERT", str(pki.client_cert))
        clean_env.setenv("TEMPORAL_TLS_KEY", str(pki.client_key))
        client = await connect(address, dev_server.namespace, wait=10)
        assert isinstance(await _list_workflows(client), list)
        assert proxy.clients == ["mdmflow-worker"]  # one TLS connection, our client cert

        # without the client certificate the proxy refuses the handshake
        no_cert = TemporalSecurity(tls=True, ca=pki.ca)
        with pytest.raises(RuntimeError, match="cannot reach Temporal"):
            await connect(address, dev_server.namespace, wait=1, security=no_cert)


async def test_connect_over_tls_with_server_name_and_api_key(
    pki: Pki, dev_server: DevServer
) -> None:
    """Server-only TLS (the Cloud shape): CA, the certificate's name, an API key."""
    async with tls_proxy(pki, dev_server.address, require_client_cert=False) as proxy:
        address = proxy.address
        security = TemporalSecurity(tls=True, ca=pki.ca, server_name="localhost", api_key="k")
        client = await connect(address, dev_server.namespace, wait=10, security=security)
        assert isinstance(await _list_workflows(client), list)
        assert proxy.clients == ["-"]  # over TLS, without a client certificate

        # the system roots do not know the test CA
        untrusted = TemporalSecurity(tls=True)
        with pytest.raises(RuntimeError, match="cannot reach Temporal"):
            await connect(address, dev_server.namespace, wait=1, security=untrusted)
        # plain gRPC to the TLS port fails too
        with pytest.raises(RuntimeError, match="cannot reach Temporal"):
            await connect(address, dev_server.namespace, wait=1, security=TemporalSecurity())
