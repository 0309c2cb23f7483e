#!/usr/bin/env python3
"""Container healthcheck for the mdmflow image, which has neither curl nor ps.

    mdmflow-healthcheck http URL            healthy: URL answers with a status below 500
    mdmflow-healthcheck process WORD...     healthy: a live process runs ``<python> WORD...``

``http`` counts a 401 as healthy: the server is up, the check just has no credentials.
``process`` matches the first arguments after the interpreter by file name, so
``process mdmflow worker`` finds ``/opt/venv/bin/python /opt/venv/bin/mdmflow worker``.
Exit status 0 is healthy, 1 is not, 2 is a usage error.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

TIMEOUT = 5.0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            return int(resp.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def _argv(pid_dir: Path) -> list[str]:
    raw = (pid_dir / "cmdline").read_bytes()
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _is_zombie(pid_dir: Path) -> bool:
    stat = (pid_dir / "stat").read_text()
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def process_running(words: Sequence[str], proc: Path = Path("/proc")) -> bool:
    me = str(os.getpid())
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit() or pid_dir.name == me:
            continue
        try:
            argv = _argv(pid_dir)
            if [os.path.basename(a) for a in argv[1 : 1 + len(words)]] == list(words):
                if not _is_zombie(pid_dir):
                    return True
        except OSError:  # the process ended while we looked
            continue
    return False


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        return 0 if http_ok(argv[1]) else 1
    if len(argv) >= 2 and argv[0] == "process":
        return 0 if process_running(argv[1:]) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
