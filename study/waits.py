"""How a wait trial (the plan's placeholder, `study.plan.StudyPlan`) learns that a trial has ended.

The plan counts versions: each ended trial that can let another start bumps it. The version
is written to a marker file on the storage path and, while the study runs, held by a small
Ray actor (`PlanSignal`) that the wait trials block on: a blocked worker uses no CPU, where
polling the file costs CPU on every idle slot and, on a cluster, reads of the shared storage
(docs/benchmarks.md). The file stays as the fallback when the actor cannot be reached.

Torch-free on purpose: the driver benchmark's stand-in trial (`bench/standin.py`) waits the same way.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import ray


@ray.remote(num_cpus=0)
class PlanSignal:
    """The plan's version, for wait trials to block on. One per study, started by the launcher."""

    def __init__(self, version: int = 0):
        self.version = version
        self.changed = asyncio.Condition()  # bound to the actor's event loop on first use (Python 3.10+)

    async def wait(self, version: int, limit_s: float) -> int:
        """Return the version once it is past `version`, or after `limit_s`. Past, not just different: the
        plan's own update to `version` may reach the actor after this call does."""
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.version > version), limit_s)
            except asyncio.TimeoutError:
                pass
        return self.version

    async def set(self, version: int) -> None:
        """The plan's version moved to `version`. Ray may run an async actor's calls out of their submission
        order, so a late call with an older version is ignored: the version only grows (one that went back
        left wait trials blocked until their limit)."""
        async with self.changed:
            if version > self.version:
                self.version = version
                self.changed.notify_all()


_handles: dict[str, object] = {}  # signal name -> actor handle, per worker process


def wait_for_plan(marker: str, version: int, limit_s: float = 30.0, poll_s: float = 0.05,
                  signal: str | None = None) -> None:
    """Return once the plan's version is no longer `version` (a trial has ended), or after `limit_s`:
    blocked on the named `PlanSignal` actor when there is one, else by reading the marker file."""
    deadline = time.monotonic() + limit_s
    if signal is not None:
        try:
            if signal not in _handles:
                _handles[signal] = ray.get_actor(signal)
            ray.get(_handles[signal].wait.remote(version, limit_s), timeout=limit_s + 10)
            return
        except (ValueError, ray.exceptions.RayError):  # no such actor (ValueError), or it died or did not answer:
            pass  # the file says the same, more slowly
    while time.monotonic() < deadline:
        try:
            if Path(marker).read_text().strip() != str(version):
                return
        except (OSError, ValueError):
            pass  # not written yet, or mid-write: look again
        time.sleep(poll_s)
