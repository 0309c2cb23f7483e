"""An installed mdmflow is one name in site-packages, and runs from there on its own.

The wheel is built from a copy of the repository (the build writes ``build/`` and
``*.egg-info`` beside its sources), installed with ``pip install --target``, and run by
an interpreter that sees only that directory and the venv's third-party packages: no
repository on ``sys.path``, no site processing, so the editable install's finder cannot
answer for it. The build runs offline on the venv's setuptools when that can build wheels
(70.1 or later, or with ``wheel``); otherwise pip sets up the build backend the way
``pip install .`` does, from the package index or its cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from mdmflow import __version__
from mdmflow.cli import main
from starter.api import create_app
from workflows.registry import BY_NAME

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
# Top-level Python packages of the repository that are not part of the product.
NOT_SHIPPED = {"tests", "bench"}
SWAGGER = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE", "NOTICE")

# Runs in the installed copy; prints what it found as JSON.
PROBE = """
import asyncio, json, sys
import httpx
import mdmflow, mdmflow.cli, workflows.registry, worker
from mdmflow import policy
from starter import api

async def served() -> dict[str, object]:
    async def no_services() -> None:
        raise AssertionError("needs no services")
    app = api.create_app(no_services, "key")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        js = await http.get(f"{api.SWAGGER_URL}/swagger-ui-bundle.js")
        return {"version": (await http.get("/version")).json()["version"], "js": js.status_code}

print(json.dumps({
    "mdmflow": mdmflow.__file__,
    "cli": mdmflow.cli.__file__,
    "registry": workflows.registry.__file__,
    "worker": worker.__file__,
    "swagger_dir": str(api.SWAGGER_DIR),
    "policy_file": str(policy.DEFAULT_POLICY_FILE),
    "policy_workflows": len(policy.load_configured(workflows.registry.BY_NAME).current().workflows),
    "path": sys.path,
    "modules": sorted(m for m in sys.modules if "editable" in m),
    **asyncio.run(served()),
}))
"""


@dataclass(frozen=True)
class Install:
    wheel: Path
    site: Path  # the ``--target`` directory
    outside: Path  # a working directory outside the repository


def _litter() -> set[str]:
    return {p.name for p in ROOT.iterdir() if p.name == "build" or p.name.endswith(".egg-info")}


def _not_sources(folder: str, names: list[str]) -> set[str]:
    """What a copy of the sources leaves out: caches, the venv, var/ and build output."""
    skipped = {n for n in names if n == "__pycache__"}
    if Path(folder) == ROOT:
        skipped |= {n for n in names if n.startswith(".") or n in ("var", "build")}
        skipped |= {n for n in names if n.endswith(".egg-info")}
    return skipped


def _venv_builds_wheels() -> bool:
    """setuptools >= 70.1 builds wheels itself; older needs the ``wheel`` package."""
    try:
        major, minor = (int(x) for x in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    try:
        metadata.version("wheel")
    except metadata.PackageNotFoundError:
        return (major, minor) >= (70, 1)
    return True


def _pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        timeout=300,
    )


def _isolated_env(install: Install) -> dict[str, str]:
    """The installed copy first, then the venv's third-party packages; nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([str(install.site), sysconfig.get_paths()["purelib"]])
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    base = tmp_path_factory.mktemp("packaging")
    src, dist, site, outside = (base / n for n in ("src", "dist", "site", "outside"))
    before = _litter()
    shutil.copytree(ROOT, src, ignore=_not_sources)
    isolation = ["--no-build-isolation"] if _venv_builds_wheels() else []
    _pip("wheel", "--no-deps", *isolation, "-w", str(dist), str(src))
    (wheel,) = dist.glob("*.whl")
    _pip("install", "--no-deps", "--target", str(site), str(wheel))
    outside.mkdir()
    assert _litter() == before, "building the wheel wrote into the repository"
    return Install(wheel, site, outside)


def test_the_wheel_holds_only_mdmflow(installed: Install) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"mdmflow", f"mdmflow-{__version__}.dist-info"}


def test_every_module_and_the_swagger_ui_ship(installed: Install) -> None:
    """New modules and sub-packages of every shipped folder are in without a list."""
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    expected = {f"mdmflow/_app/{p.name}" for p in ROOT.glob("*.py")}
    for folder in ROOT.iterdir():
        if not (folder / "__init__.py").is_file() or folder.name in NOT_SHIPPED:
            continue
        prefix = "mdmflow" if folder.name == "mdmflow" else f"mdmflow/_app/{folder.name}"
        expected |= {
            f"{prefix}/{p.relative_to(folder).as_posix()}"
            for p in folder.rglob("*.py")
            if "__pycache__" not in p.parts
        }
    assert "mdmflow/_app/workflows/registry.py" in expected
    assert expected - names == set()
    assert {f"mdmflow/_app/starter/static/swagger/{n}" for n in SWAGGER} <= names


def test_installed_mdmflow_runs_from_inside_itself(installed: Install) -> None:
    done = subprocess.run(
        [sys.executable, "-S", "-c", PROBE],
        cwd=installed.outside,
        env=_isolated_env(installed),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    package = installed.site / "mdmflow"
    app = package / "_app"
    assert Path(found["mdmflow"]) == package / "__init__.py"
    assert Path(found["cli"]) == package / "cli.py"
    assert Path(found["registry"]) == app / "workflows" / "registry.py"
    assert Path(found["worker"]) == app / "worker.py"
    assert Path(found["swagger_dir"]) == app / "starter" / "static" / "swagger"
    assert found["path"][0] == str(app)
    assert str(ROOT) not in found["path"] and found["modules"] == []
    assert found["js"] == 200  # /docs' Swagger UI served from the installed files
    # the shipped default policy (default-deny needs it) comes with the package
    assert Path(found["policy_file"]) == package / "default_policy.toml"
    assert found["policy_workflows"] == len(BY_NAME)
    assert found["version"] == f"v{__version__}"


def test_installed_console_script_prints_the_version(installed: Install) -> None:
    script = installed.site / "bin" / "mdmflow"
    done = subprocess.run(
        [sys.executable, "-S", str(script), "--version"],
        cwd=installed.outside,
        env=_isolated_env(installed),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"mdmflow {__version__}"), done.stderr


async def test_version_flag_and_api_report_one_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out.strip()

    async def no_services() -> None:
        raise AssertionError("/version needs no services")

    app = create_app(no_services, "key")  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        answered = (await http.get("/version")).json()["version"]
    assert printed == f"mdmflow {__version__}"
    assert answered == f"v{printed.removeprefix('mdmflow ')}"
