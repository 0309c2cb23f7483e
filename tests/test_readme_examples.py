"""README.md's request-body examples, run as written with bash and curl on a real stack.

The block after "Request bodies" in the API section is cut into its commands (a line
ending in a backslash goes on) and each runs in bash with ``API``, ``KEY`` and ``ID`` set
as the README says, in a directory holding the ``wifi.mobileconfig`` it uploads. Only
curl's configuration file (``CURL_HOME``) adds ``--fail-with-body``, so an HTTP error is
a failed command without touching the example's text.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.e2e_stack import API_KEY, E2E
from tests.profile_support import profile

README = Path(__file__).resolve().parent.parent / "README.md"


def request_body_examples(text: str) -> list[str]:
    """The commands of the ``sh`` block that follows "Request bodies", comments dropped."""
    start = text.index("Request bodies")
    block = re.search(r"```sh\n(.*?)```", text[start:], re.DOTALL)
    assert block, "no sh block after 'Request bodies' in README.md"
    commands: list[str] = []
    current = ""
    for line in block.group(1).splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line + "\n"
        if not line.endswith("\\"):
            commands.append(current.rstrip("\n"))
            current = ""
    assert not current, f"unfinished command in README.md: {current!r}"
    return commands


def test_the_block_is_found_and_uses_the_readme_variables() -> None:
    commands = request_body_examples(README.read_text())
    assert len(commands) >= 6
    assert all(c.startswith("curl -u nanocmd:$KEY ") and "$API/" in c for c in commands)


async def run_example(command: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_readme_request_bodies_run_as_written(e2e: E2E, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: README examples not run")
    (eid,) = await e2e.enroll(1)
    (tmp_path / "wifi.mobileconfig").write_bytes(profile("com.example.wifi"))
    (tmp_path / ".curlrc").write_text(
        '--fail-with-body\n--silent\n--show-error\n-w "\\nHTTP %{http_code}\\n"\n'
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "CURL_HOME": str(tmp_path),
        "API": str(e2e.api.base_url).rstrip("/"),
        "KEY": API_KEY,
        "ID": eid,
    }
    failures = []
    for command in request_body_examples(README.read_text()):
        code, out = await run_example(command, env, tmp_path)
        status = re.findall(r"HTTP (\d{3})", out)
        if code != 0 or not status or not status[-1].startswith("2"):
            failures.append(f"{command}\n  -> exit {code}: {out.strip()}")
    assert not failures, "\n\n".join(failures)

    # what the examples stored is there to read back
    assert (await e2e.api.get("/v1/profile/wifi")).status_code == 200
    assert (await e2e.api.get("/v1/cmdplan/onboard")).status_code == 200
    assert (await e2e.api.get("/v1/event/enroll-inventory")).status_code == 200
