"""One way to connect to Temporal, with the data converter every process must share."""

from __future__ import annotations

import asyncio
import logging
import time

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

log = logging.getLogger("mdmflow.temporal")


async def connect(address: str, namespace: str, *, wait: float = 60.0) -> Client:
    """Connect, waiting up to ``wait`` seconds for a server that is still starting."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return await Client.connect(
                address, namespace=namespace, data_converter=pydantic_data_converter
            )
        except RuntimeError as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"cannot reach Temporal at {address}: {exc}") from exc
            log.info("waiting for Temporal at %s (%s)", address, exc)
            await asyncio.sleep(0.5)
