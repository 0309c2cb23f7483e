"""The container stack (docker-compose.yml, Dockerfile, deploy/), checked without Docker.

The compose file is validated against the official Compose Specification schema (and by
docker-compose where it is installed), and its wiring is checked against the code it
runs: the variables mdmflow reads, the search attributes its runs set, the simulator's
options. The entrypoint, the healthcheck and the secrets script run for real.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import threading
import tomllib
import uuid
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema_rs
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

from mdmflow.temporal_server import EAGER_ACTIVITIES, DevServer, free_port
from simulator.cli import build_parser
from workflows import search_attributes as sa

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"
HEALTHCHECK = DEPLOY / "healthcheck.py"
# The official Compose Specification schema: schema/compose-spec.json of the
# compose-spec/compose-spec repository (Apache-2.0, see compose-spec.LICENSE beside it),
# as vendored by check-jsonschema 0.39.0 (sha256 d549057e...10e64).
SCHEMA_FILE = Path(__file__).parent / "fixtures" / "compose-spec.json"

MDMFLOW_SERVICES = ("api", "worker", "simulator")
ONE_SHOTS = ("temporal-schema", "temporal-setup")
VAR_DIR = "/var/lib/mdmflow"

Service = dict[str, Any]


# ---- reading the files ------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def services(compose: Mapping[str, Any]) -> dict[str, Service]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def environment(service: Service) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def conditions(service: Service) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec["condition"] for name, spec in deps.items()}


def env_example() -> dict[str, str]:
    """The settings deploy/env.example sets (uncommented ``KEY=value`` lines)."""
    pairs = (
        line.split("=", 1)
        for line in (DEPLOY / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_]\w*))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``$VAR``, ``${VAR:-default}``, ``${VAR:?message}`` and ``$$``."""

    def one(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["plain"]
        value = env.get(name, "")
        if not value and m["op"] and m["op"].endswith("?"):
            raise KeyError(f"{name} is required: {m['arg']}")
        if not value and m["op"]:
            return m["arg"]
        return value

    return _VAR.sub(one, text)


def secret_of(path: str) -> str:
    """``/run/secrets/NAME`` -> ``NAME``."""
    assert path.startswith("/run/secrets/"), path
    return path.removeprefix("/run/secrets/")


def file_variables(compose: Mapping[str, Any]) -> set[str]:
    """Every ``X`` an mdmflow service passes as ``X_FILE`` (for the entrypoint)."""
    return {
        name.removesuffix("_FILE")
        for svc in MDMFLOW_SERVICES
        for name in environment(services(compose)[svc])
        if name.endswith("_FILE")
    }


# ---- the compose file against real validators -------------------------------------------


def schema_errors(document: Any) -> list[str]:
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA_FILE.read_text()))
    return [
        f"{'/'.join(map(str, e.instance_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_compose_file_is_valid_under_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


def _typo_in_condition(c: dict[str, Any]) -> None:
    c["services"]["worker"]["depends_on"]["temporal-setup"]["condition"] = "service_completed"


def _unknown_key(c: dict[str, Any]) -> None:
    c["services"]["api"]["healthchek"] = c["services"]["api"].pop("healthcheck")


def _port_as_mapping(c: dict[str, Any]) -> None:
    c["services"]["api"]["ports"] = {"9003": 9003}


@pytest.mark.parametrize("mistake", [_typo_in_condition, _unknown_key, _port_as_mapping])
def test_the_schema_check_catches_mistakes(
    compose: dict[str, Any], mistake: Callable[[dict[str, Any]], None]
) -> None:
    broken = copy.deepcopy(compose)
    mistake(broken)
    assert schema_errors(broken)


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose (Debian's package, v1) is not installed; the compose-spec "
    "schema check runs without it",
)
def test_docker_compose_accepts_the_file() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "MDMFLOW_"))}

    def config(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker-compose", "-f", str(COMPOSE_FILE), "--profile", "demo", "config", "-q"],
            cwd=ROOT,
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = config(env_example())
    assert done.returncode == 0, done.stderr
    missing = config({})
    assert missing.returncode != 0
    assert "MDMFLOW_MDM_URL" in missing.stderr


# ---- one image, scalable workers, start-up order --------------------------------------


def test_one_image_built_from_this_repository_runs_every_mdmflow_service(
    compose: dict[str, Any],
) -> None:
    svcs = services(compose)
    images = {svcs[name]["image"] for name in MDMFLOW_SERVICES}
    builds = [svcs[name]["build"] for name in MDMFLOW_SERVICES]
    assert len(images) == 1
    assert all(b == {"context": ".", "dockerfile": "Dockerfile"} for b in builds)
    assert all(svcs[name].get("init") is True for name in MDMFLOW_SERVICES)
    others = set(svcs) - set(MDMFLOW_SERVICES)
    assert not [name for name in others if "build" in svcs[name]]
    assert not [name for name in others if svcs[name]["image"] in images]


def test_workers_scale_no_fixed_names_or_host_ports(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    assert not [name for name, svc in svcs.items() if "container_name" in svc]
    assert "ports" not in svcs["worker"]
    assert svcs["worker"]["command"] == ["worker"]
    assert svcs["api"]["command"] == ["serve"]
    assert any(interpolate(p, {}).endswith(":9003") for p in svcs["api"]["ports"])


def test_services_start_in_order(compose: dict[str, Any]) -> None:
    healthy, done = "service_healthy", "service_completed_successfully"
    mdmflow = {"postgres": healthy, "temporal": healthy, "temporal-setup": done}
    expected = {
        "postgres": {},
        "temporal-schema": {"postgres": healthy},
        "temporal": {"postgres": healthy, "temporal-schema": done},
        "temporal-setup": {"temporal": healthy},
        "temporal-ui": {"temporal": healthy},
        "api": mdmflow,
        "worker": mdmflow,
        "simulator": {"api": healthy},
    }
    svcs = services(compose)
    assert {name: conditions(svc) for name, svc in svcs.items()} == expected
    for svc in svcs.values():
        for dep, condition in conditions(svc).items():
            if condition == healthy:
                assert svcs[dep].get("healthcheck"), f"{dep} has no healthcheck to wait for"
            if condition == done:
                assert dep in ONE_SHOTS


def test_long_running_services_restart_and_report_health(compose: dict[str, Any]) -> None:
    for name, svc in services(compose).items():
        if name in ONE_SHOTS:
            assert svc["restart"] == "no", name
            assert "healthcheck" not in svc and "ports" not in svc, name
        else:
            assert svc["restart"] == "unless-stopped", name
            test = svc["healthcheck"]["test"]
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_the_simulator_is_demo_only(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    assert svcs["simulator"]["profiles"] == ["demo"]
    assert not [name for name, svc in svcs.items() if name != "simulator" and "profiles" in svc]


# ---- configuration: what mdmflow reads ----------------------------------------------------


def names_read_by_mdmflow() -> set[str]:
    """Every MDMFLOW_* / TEMPORAL_* name the code mentions, plus libpq's PGPASSWORD."""
    found = {"PGPASSWORD"}
    sources = [ROOT / "worker.py"]
    for package in ("mdmflow", "escrow", "starter", "relay", "store", "simulator", "activities"):
        sources += (ROOT / package).rglob("*.py")
    for path in sources:
        found |= set(re.findall(r"\b(?:MDMFLOW|TEMPORAL)_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    return found


def test_every_variable_given_to_mdmflow_is_one_it_reads(compose: dict[str, Any]) -> None:
    known = names_read_by_mdmflow()
    for name in MDMFLOW_SERVICES:
        given = {v.removesuffix("_FILE") for v in environment(services(compose)[name])}
        assert given - known == set(), name


def test_api_and_worker_have_temporal_postgres_state_and_mdm_settings(
    compose: dict[str, Any],
) -> None:
    svcs = services(compose)
    pg_env = environment(svcs["postgres"])
    for name in ("api", "worker"):
        env = environment(svcs[name])
        assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
        assert (
            env["TEMPORAL_NAMESPACE"] == environment(svcs["temporal-setup"])["TEMPORAL_NAMESPACE"]
        )
        db = urlsplit(env["MDMFLOW_DB_URL"])
        assert (db.scheme, db.hostname, db.port, db.password) == (
            "postgresql",
            "postgres",
            5432,
            None,
        )
        assert (db.username, db.path) == (pg_env["POSTGRES_USER"], "/" + pg_env["POSTGRES_DB"])
        assert env["PGPASSWORD_FILE"] == pg_env["POSTGRES_PASSWORD_FILE"]
        assert env["MDMFLOW_VAR_DIR"] == VAR_DIR
        assert f"mdmflow-var:{VAR_DIR}" in svcs[name]["volumes"]
        assert {"MDMFLOW_MDM_URL", "MDMFLOW_MDM_KIND", "MDMFLOW_SECRETS_KEY_FILE"} <= set(env)
    assert environment(svcs["api"])["MDMFLOW_LISTEN"] == "0.0.0.0:9003"


def resolved_environment(
    compose: Mapping[str, Any], name: str, secrets_dir: Path
) -> dict[str, str]:
    """A service's environment with .env applied and secrets at ``secrets_dir``."""
    settings = env_example()
    env = {k: interpolate(v, settings) for k, v in environment(services(compose)[name]).items()}
    return {
        k: str(secrets_dir / secret_of(v)) if k.endswith("_FILE") else v for k, v in env.items()
    }


SHOW_SETTINGS = (
    "import dataclasses, json, os\n"
    "from mdmflow import config\n"
    "s = dataclasses.asdict(config.load())\n"
    "s['PGPASSWORD'] = os.environ.get('PGPASSWORD')\n"
    "s['SECRETS_KEY'] = os.environ.get('MDMFLOW_SECRETS_KEY')\n"
    "print(json.dumps(s, default=str))\n"
)


def settings_in_container(compose: Mapping[str, Any], name: str, tmp_path: Path) -> dict[str, Any]:
    """What ``config.load()`` returns when the entrypoint starts ``name``'s process."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(exist_ok=True)
    for secret in compose["secrets"]:
        (secrets_dir / secret).write_text(f"value-of-{secret}\n")
    env = resolved_environment(compose, name, secrets_dir)
    env |= {"PATH": os.environ["PATH"], "MDMFLOW_VAR_DIR": str(tmp_path / "var")}
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), sys.executable, "-c", SHOW_SETTINGS],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_api_starts_with_the_settings_it_needs(compose: dict[str, Any], tmp_path: Path) -> None:
    s = settings_in_container(compose, "api", tmp_path)
    assert s["temporal_address"] == "temporal:7233"
    assert s["db_url"] == "postgresql://mdmflow@postgres:5432/mdmflow"
    assert (s["listen_host"], s["listen_port"]) == ("0.0.0.0", 9003)
    assert s["api_key"] == "value-of-api_key"
    assert s["webhook_hmac_key"] == "value-of-webhook_hmac_key"
    assert s["SECRETS_KEY"] == "value-of-secrets_key"
    assert s["PGPASSWORD"] == "value-of-postgres_password"


def test_the_worker_starts_with_the_settings_it_needs(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    s = settings_in_container(compose, "worker", tmp_path)
    assert s["temporal_address"] == "temporal:7233"
    assert s["mdm_url"] == env_example()["MDMFLOW_MDM_URL"]
    assert s["mdm_kind"] == "nanomdm"
    assert s["mdm_api_key"] == "value-of-mdm_api_key"
    assert s["SECRETS_KEY"] == "value-of-secrets_key"
    assert s["PGPASSWORD"] == "value-of-postgres_password"


def test_each_service_mounts_only_the_secrets_it_reads(compose: dict[str, Any]) -> None:
    declared = set(compose["secrets"])
    for name in MDMFLOW_SERVICES:
        svc = services(compose)[name]
        read = {secret_of(v) for k, v in environment(svc).items() if k.endswith("_FILE")}
        assert set(svc["secrets"]) == read, name
        assert read <= declared
    assert "api_key" not in services(compose)["worker"]["secrets"]
    assert "mdm_api_key" not in services(compose)["api"]["secrets"]


def test_env_example_sets_what_is_required_and_mentions_every_setting(
    compose: dict[str, Any],
) -> None:
    text = COMPOSE_FILE.read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert required == {"MDMFLOW_MDM_URL"}
    assert required <= set(env_example())
    documented = (DEPLOY / "env.example").read_text()
    for name in set(re.findall(r"\$\{(\w+)", text)):
        assert re.search(rf"^#? ?{name}=", documented, re.M), f"{name} not in env.example"
    # the file as a whole interpolates with the example's settings
    interpolate(text, env_example())


# ---- Temporal: search attributes, dynamic config ----------------------------------------


def test_setup_registers_exactly_the_search_attributes_runs_set(
    compose: dict[str, Any],
) -> None:
    def type_name(key: SearchAttributeKey[Any]) -> str:
        return key.indexed_value_type.name.title().replace("_", "")  # KEYWORD -> Keyword

    setup = services(compose)["temporal-setup"]
    assert setup["command"] == [f"{key.name}={type_name(key)}" for key in sa.ALL]
    assert setup["entrypoint"] == ["/bin/sh", "/deploy/setup-namespace.sh"]
    assert "./deploy/temporal:/deploy:ro" in setup["volumes"]
    assert (DEPLOY / "temporal" / "setup-namespace.sh").exists()


async def test_namespace_setup_adds_what_is_missing_and_can_run_again(
    compose: dict[str, Any], dev_server: DevServer, dev_client: Client
) -> None:
    """The one-shot's script, with the real temporal CLI, on a real server."""
    namespace = f"setup-{uuid.uuid4().hex[:8]}"
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TEMPORAL_ADDRESS": dev_server.address,
        "TEMPORAL_NAMESPACE": namespace,
        "TEMPORAL_RETENTION": "24h",
    }
    script = DEPLOY / "temporal" / "setup-namespace.sh"
    command = ["sh", str(script), *services(compose)["temporal-setup"]["command"]]

    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr
    listed = await dev_client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    assert {k.name: listed.custom_attributes.get(k.name) for k in sa.ALL} == {
        k.name: keyword for k in sa.ALL
    }

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert f"namespace {namespace} exists" in again.stdout
    assert all(f"search attribute {k.name} exists" in again.stdout for k in sa.ALL)


def test_temporal_gets_the_dynamic_config_the_embedded_server_has(
    compose: dict[str, Any],
) -> None:
    temporal = services(compose)["temporal"]
    path = environment(temporal)["DYNAMIC_CONFIG_FILE_PATH"]
    host_dir, mounted, _mode = next(
        v.split(":") for v in temporal["volumes"] if v.startswith("./deploy/")
    )
    assert path.startswith(mounted + "/")
    config = yaml.safe_load((ROOT / host_dir / path.removeprefix(mounted + "/")).read_text())
    key, _, value = EAGER_ACTIVITIES.partition("=")
    assert value == "true"
    assert config[key] == [{"value": True}]


# ---- volumes ---------------------------------------------------------------------------


def test_state_is_in_named_volumes_and_binds_are_read_only_config(
    compose: dict[str, Any],
) -> None:
    named = set(compose["volumes"])
    used: set[str] = set()
    for name, svc in services(compose).items():
        for spec in svc.get("volumes", []):
            source, _target, *mode = spec.split(":")
            if source.startswith("./"):
                assert source.startswith("./deploy/") and (ROOT / source).exists(), spec
                assert mode == ["ro"], f"{name}: {spec} should be read-only"
            else:
                assert source in named, f"{name}: {spec} is not a named volume"
                used.add(source)
    assert used == named
    assert "postgres-data:/var/lib/postgresql/data" in services(compose)["postgres"]["volumes"]


# ---- the simulator ---------------------------------------------------------------------


def test_the_simulator_command_parses_and_talks_to_the_relay(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    sim = svcs["simulator"]
    assert sim["entrypoint"] == ["docker-entrypoint", "sh", "-c"]
    (script,) = sim["command"]
    words = shlex.split(interpolate(script, {}))  # compose's $$ -> the shell's $
    assert words[:2] == ["exec", "mdmflow"]
    shell_env = {k: interpolate(v, env_example()) for k, v in environment(sim).items()}
    shell_env |= {name: f"<{name}>" for name in file_variables(compose)}
    args = build_parser().parse_args([interpolate(w, shell_env) for w in words[2:]])
    assert (args.command, args.sim_command, args.host) == ("sim", "serve", "0.0.0.0")
    relay = urlsplit(args.webhook_url)
    assert (relay.hostname, relay.path) == ("api", "/webhook")
    assert environment(svcs["api"])["MDMFLOW_LISTEN"].endswith(f":{relay.port}")
    assert args.devices == 5
    # it signs with the relay's HMAC key and accepts the worker's MDM API key
    assert args.hmac_key == "<MDMFLOW_WEBHOOK_HMAC_KEY>"
    assert args.api_key == "<MDMFLOW_MDM_API_KEY>"
    sim_env = environment(sim)
    assert (
        sim_env["MDMFLOW_WEBHOOK_HMAC_KEY_FILE"]
        == environment(svcs["api"])["MDMFLOW_WEBHOOK_HMAC_KEY_FILE"]
    )
    assert (
        sim_env["MDMFLOW_MDM_API_KEY_FILE"]
        == environment(svcs["worker"])["MDMFLOW_MDM_API_KEY_FILE"]
    )
    mdm_url = urlsplit(env_example()["MDMFLOW_MDM_URL"])
    assert (mdm_url.hostname, mdm_url.port) == ("simulator", args.port)


# ---- the entrypoint --------------------------------------------------------------------


def run_entrypoint(env: Mapping[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *command],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_entrypoint_exports_every_secret_the_compose_file_passes_as_a_file(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    names = file_variables(compose)
    assert {"MDMFLOW_API_KEY", "MDMFLOW_SECRETS_KEY", "PGPASSWORD"} <= names
    env = {}
    for name in names:
        (tmp_path / name).write_text(f"secret for {name}\n\n")
        env[f"{name}_FILE"] = str(tmp_path / name)
    done = run_entrypoint(env, "env")
    assert done.returncode == 0, done.stderr
    exported = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    for name in names:
        assert exported[name] == f"secret for {name}"
        assert f"{name}_FILE" not in exported


def test_the_entrypoint_runs_the_command_with_its_arguments_and_status() -> None:
    done = run_entrypoint({"KEEP": "x y"}, "sh", "-c", 'echo "$KEEP|$1"; exit 3', "sh", "a b")
    assert (done.returncode, done.stdout) == (3, "x y|a b\n")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("both", "both MDMFLOW_API_KEY and MDMFLOW_API_KEY_FILE are set"),
        ("missing", "cannot read"),
        ("empty", "is empty"),
    ],
)
def test_the_entrypoint_refuses_to_start_with_a_doubtful_secret(
    tmp_path: Path, setup: str, message: str
) -> None:
    secret = tmp_path / "api_key"
    if setup != "missing":
        secret.write_text("" if setup == "empty" else "from-file\n")
    env = {"MDMFLOW_API_KEY_FILE": str(secret)}
    if setup == "both":
        env["MDMFLOW_API_KEY"] = "from-env"
    marker = tmp_path / "started"
    done = run_entrypoint(env, "touch", str(marker))
    assert done.returncode == 64
    assert message in done.stderr
    assert not marker.exists()


# ---- secrets ---------------------------------------------------------------------------


def test_make_secrets_creates_every_compose_secret_once(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    secrets_dir = tmp_path / "secrets"

    def make() -> str:
        done = subprocess.run(
            ["sh", str(DEPLOY / "make-secrets.sh")],
            env={"PATH": os.environ["PATH"], "MDMFLOW_SECRETS_DIR": str(secrets_dir)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    for name, spec in compose["secrets"].items():
        assert spec == {"file": f"./deploy/secrets/{name}"}
    make()
    made = {p.name: p.read_text() for p in secrets_dir.iterdir()}
    assert set(made) == set(compose["secrets"])
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in secrets_dir.iterdir()} == {0o644}
    assert len(base64.b64decode(made["secrets_key"].strip(), validate=True)) == 32
    assert len(set(made.values())) == len(made)
    assert all(len(v.strip()) >= 32 and v.endswith("\n") for v in made.values())

    (secrets_dir / "mdm_api_key").write_text("the NanoMDM -api key\n")
    assert "kept" in make()
    again = {p.name: p.read_text() for p in secrets_dir.iterdir()}
    assert again == made | {"mdm_api_key": "the NanoMDM -api key\n"}


def test_secrets_stay_out_of_git_and_the_image() -> None:
    assert (DEPLOY / "secrets" / ".gitignore").read_text().split() == ["*", "!.gitignore"]
    for path in ("deploy/secrets/api_key", ".env", ".venv/bin/python", "var/api_key", ".git/HEAD"):
        assert dockerignored(path), path


# ---- the healthcheck -------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response({"/version": 200, "/sim/stats": 401}.get(self.path, 503))
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def healthcheck(*args: str) -> int:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], timeout=30).returncode


def test_http_healthcheck_is_healthy_while_the_server_answers(http_server: str) -> None:
    assert healthcheck("http", f"{http_server}/version") == 0
    assert healthcheck("http", f"{http_server}/sim/stats") == 0  # 401: up, no credentials
    assert healthcheck("http", f"{http_server}/broken") == 1
    assert healthcheck("http", f"http://127.0.0.1:{free_port()}/version") == 1


def test_process_healthcheck_finds_the_service_process(tmp_path: Path) -> None:
    program = tmp_path / f"probe-{uuid.uuid4().hex}.py"
    program.write_text("import time\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, str(program), "worker"])
    try:
        assert healthcheck("process", program.name, "worker") == 0
        assert healthcheck("process", program.name, "serve") == 1
    finally:
        proc.kill()
        proc.wait()
    assert healthcheck("process", program.name, "worker") == 1
    assert healthcheck("nonsense") == 2


def test_healthchecks_use_what_the_image_provides(compose: dict[str, Any]) -> None:
    for name in MDMFLOW_SERVICES:
        test = services(compose)[name]["healthcheck"]["test"]
        assert test[:2] == ["CMD", "mdmflow-healthcheck"], name
    assert services(compose)["worker"]["healthcheck"]["test"][2:] == [
        "process",
        "mdmflow",
        "worker",
    ]
    assert "COPY --chmod=0755 deploy/healthcheck.py /usr/local/bin/mdmflow-healthcheck" in (
        dockerfile_lines()
    )


# ---- shell scripts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "script", sorted(DEPLOY.rglob("*.sh")), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_deploy_scripts_are_executable_posix_sh(script: Path) -> None:
    assert script.read_text().startswith("#!/bin/sh\n")
    assert os.access(script, os.X_OK)
    done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---- the Dockerfile --------------------------------------------------------------------


def dockerfile_lines() -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        if text.endswith("\\"):
            current += text[:-1].strip() + " "
            continue
        lines.append(current + text)
        current = ""
    return lines


def stages() -> list[list[str]]:
    found: list[list[str]] = []
    for line in dockerfile_lines():
        if line.startswith("FROM "):
            found.append([])
        if found:
            found[-1].append(line)
    return found


def dockerignored(path: str) -> bool:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatchcase(prefix, pattern)
        or (pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.split("/")[-1], pattern[3:]))
        for pattern in patterns
        for prefix in prefixes
    )


def test_the_image_is_built_in_two_stages_from_one_python_base() -> None:
    builder, final = stages()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile_lines()
    assert builder[0] == "FROM ${PYTHON_IMAGE} AS builder"
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    assert not [line for line in final if line.startswith(("RUN pip", "COPY . "))]


def test_the_image_runs_as_an_unprivileged_user_through_the_entrypoint() -> None:
    final = stages()[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:")
    assert 'ENTRYPOINT ["docker-entrypoint", "mdmflow"]' in final
    assert "COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint" in (
        final
    )
    env = " ".join(line for line in final if line.startswith("ENV "))
    assert f"MDMFLOW_VAR_DIR={VAR_DIR}" in env


def test_the_build_context_has_what_the_dockerfile_copies() -> None:
    sources = [
        word
        for line in dockerfile_lines()
        if line.startswith("COPY ") and "--from=" not in line
        for word in line.split()[1:-1]
        if not word.startswith("--")
    ]
    assert sources
    for source in [*sources, "README.md", "worker.py", "mdmflow/cli.py", "simulator/cli.py"]:
        assert source == "." or (ROOT / source).exists(), source
        assert not dockerignored(source), source


def test_the_lock_pins_every_package_the_image_installs() -> None:
    """The image installs pyproject's dependencies constrained by requirements.lock: every
    package in their closure must be in the lock, or it would float."""
    assert any(
        "pip install -c requirements.lock -r runtime-requirements.txt" in line
        for line in dockerfile_lines()
    )
    lock = {
        canonicalize_name(name): version
        for name, _, version in (
            line.strip().partition("==")
            for line in (ROOT / "requirements.lock").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        )
    }
    direct = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [Requirement(r) for r in direct]
    for req in todo:
        assert {str(s) for s in req.specifier} == {f"=={lock[canonicalize_name(req.name)]}"}
    closure: set[str] = set()
    expanded: set[tuple[str, str]] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        closure.add(name)
        for extra in {"", *req.extras}:
            if (name, extra) in expanded:
                continue
            expanded.add((name, extra))
            for spec in metadata.requires(req.name) or []:
                sub = Requirement(spec)
                if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                    todo.append(sub)
    assert closure - set(lock) == set()
    assert len(closure) > len(direct)  # the walk went past the direct dependencies
