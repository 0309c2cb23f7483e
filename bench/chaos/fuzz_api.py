"""Scenario 6: schemathesis over the API's OpenAPI document, against the live stack.

Every operation (the NanoCMD routes, run look-ups, ``/webhook``, events, schedules) gets
generated valid and invalid requests, authenticated; the one check is that nothing
answers 5xx (a crash, or an unhandled error turned into 500). The webhook and plist
parsers have their own property tests in ``tests/test_protocol.py`` (schemathesis cannot
sign webhooks, so ``/webhook`` only sees 401 here).

Left out always: ``PUT /v1/profile/{name}``, whose body is a signed Apple profile
(``application/x-apple-aspen-config``) schemathesis cannot generate.
"""

from __future__ import annotations

import asyncio
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.stack import API_KEY, Stack

UNGENERATABLE = ("PUT /v1/profile/{name}",)


async def run(
    stack: Stack,
    max_examples: int,
    *,
    phases: str = "examples,coverage,fuzzing,stateful",
    exclude: Sequence[str] = (),
    seed: int = 1,
) -> dict[str, Any]:
    st = Path(sys.executable).parent / "st"
    excluded = [*UNGENERATABLE, *exclude]
    with tempfile.TemporaryDirectory(prefix="schemathesis-") as tmp:
        proc = await asyncio.create_subprocess_exec(
            str(st),
            "run",
            f"{stack.api_url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            str(max_examples),
            "--seed",
            str(seed),
            "--auth",
            f"nanocmd:{API_KEY}",
            "--request-timeout",
            "30",
            "--phases",
            phases,
            "--no-color",
            *(arg for name in excluded for arg in ("--exclude-name", name)),
            cwd=tmp,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    cases = re.search(r"(\d+) generated", text)
    summary = [line for line in text.splitlines() if re.search(r"passed|failed|error", line)]
    assert proc.returncode == 0, f"schemathesis found failures:\n{text[-6000:]}"
    return {
        "killed": "nothing: schemathesis requests against every API operation",
        "max_examples_per_operation": max_examples,
        "phases": phases,
        "excluded": excluded,
        "test_cases": int(cases.group(1)) if cases else None,
        "exit_code": proc.returncode,
        "summary": summary[-3:],
    }
