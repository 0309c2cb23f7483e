"""Run a service's main coroutine on uvloop, the loop the servers already use.

The worker spends much of its CPU in the event loop itself (sockets to Temporal, the
MDM server and the database's threads); uvloop does that work in C.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
