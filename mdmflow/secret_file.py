"""Secrets kept in files under ``var/`` (master key, API key, simulator keys).

Several processes of one install often start at the same moment on an empty ``var/``;
they must all end up with the same value, and none may read a half-written file.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def new_token() -> str:
    """A random secret for keys a person may have to type (API keys, HMAC keys)."""
    return secrets.token_urlsafe(24)


def read_or_create(path: Path, make: Callable[[], str]) -> str:
    """The file's value, or a new one from ``make`` written there (mode 0600) first.

    The new value goes whole into a private temporary file that is then hard-linked
    into place: the link fails if another process got there first, and its value wins.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(make() + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            except OSError:  # no hard links here: exclusive create (no half-write guard)
                _create_exclusive(path, tmp.read_text())
        finally:
            tmp.unlink()
    return path.read_text().strip()


def _create_exclusive(path: Path, content: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(content)
