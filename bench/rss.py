"""Resident memory and CPU time of the processes a benchmark runs."""

from __future__ import annotations

import asyncio
import contextlib

import psutil


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU time consumed so far by each process."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            out[name] = 0.0
    return out


def cpu_per_item(
    before: dict[str, float], after: dict[str, float], items: int
) -> dict[str, float]:
    """Milliseconds of CPU per item, per process."""
    return {k: round((after[k] - before[k]) * 1000 / items, 2) for k in before}


class PeakRss:
    def __init__(self, pids: dict[str, int], every: float = 0.25) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak_mib: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._every = every
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for name, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                mib = proc.memory_info().rss / 2**20
                self.peak_mib[name] = round(max(self.peak_mib[name], mib), 1)

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self._every)

    async def __aenter__(self) -> PeakRss:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()
