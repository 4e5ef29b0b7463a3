"""A stand-in for the study's trial in the driver benchmark: reports of the real shape, no training.

It imports neither PyTorch nor the project beyond `trainables.bundle`, `trainables.records` and `study.waits` (a
worker holding PyTorch costs a few tens of MB), so dozens of logical slots fit on a small
machine. Wait trials (the plan's placeholders) and bundles run as the real ones do.

`ReadyGate` holds every worker's first trial until all the slots' workers are up, so that the
benchmark measures the driver with every slot ready, not while dozens of workers are still
starting: 48 of them take about 40 s of both CPUs of a 2-core machine to import Ray Tune,
work that on a cluster is done once, by the workers' own nodes.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time

import ray
from ray import tune

from study.waits import wait_for_plan
from trainables import records
from trainables.bundle import bundle_items, run_bundle

EVALUATIONS = 10  # evaluations a real trial reports before its final report
LOSSES = 200  # per-example losses of each report split, as the real trial sends for the loss figures


@ray.remote(num_cpus=0)
class ReadyGate:
    """Opens once `expected` worker processes have arrived, or `limit_s` after it was made."""

    def __init__(self, expected: int, limit_s: float):
        self.expected, self.limit_s, self.made = expected, limit_s, time.time()
        self.arrived: set[int] = set()
        self.opened: float | None = None
        self.changed = asyncio.Condition()  # bound to the actor's event loop on first use

    async def arrive(self, pid: int) -> None:
        async with self.changed:
            self.arrived.add(pid)
            if len(self.arrived) >= self.expected:
                self.changed.notify_all()
            left = self.limit_s - (time.time() - self.made)
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: len(self.arrived) >= self.expected),
                                       max(left, 0.0))
            except asyncio.TimeoutError:
                pass
            if self.opened is None:
                self.opened = time.time()

    def state(self) -> tuple[int, float | None]:
        """How many workers arrived, and when the gate opened (None: not yet)."""
        return len(self.arrived), self.opened


_arrived = False  # whether this worker process has passed the start gate


def standin_trial(config: dict, seconds: float = 0.0, gate: str | None = None) -> None:
    global _arrived
    if gate is not None and not _arrived:
        _arrived = True
        ray.get(ray.get_actor(gate).arrive.remote(os.getpid()))
    if (items := bundle_items(config)) is not None:
        tune.report(run_bundle(items, lambda item: standin_report(item, seconds)))
        return
    if config["stage"] == records.WAIT_STAGE:
        wait = config[records.WAIT]
        wait_for_plan(wait["marker"], int(wait["version"]), signal=wait.get("signal"))
        return
    tune.report(standin_report(config, seconds))


def standin_report(config: dict, seconds: float = 0.0) -> dict:
    hparams = config.get("hparams") or {}
    started = time.time()
    rng = random.Random(hash((config["stage"], config["method"], config["seed"], str(sorted(hparams.items())))))
    acc, fs = 0.9 + 0.05 * rng.random(), 0.02 + 0.1 * rng.random()
    curve = []
    for step in range(1, EVALUATIONS + 1):
        if seconds:
            time.sleep(seconds / EVALUATIONS)
        curve.append({"step": float(step), "sel_accuracy": acc, "sel_forgetting_score": fs,
                      "sel_final_score": (acc + 1 - 2 * fs) / 2, "sel_fs_se": 0.02, "sel_accuracy_se": 0.01})
    names = ["accuracy", "top2_accuracy", "forget_accuracy", "unseen_accuracy", "retain_accuracy", "mia",
             "forgetting_score", "fs_se", "accuracy_se", "final_score", "jsd", "forget_loss", "unseen_loss",
             "seconds", "steps", "best_step", "evaluations", "rte", "peak_rss_mb"]
    final = {name: rng.random() for name in names}
    final.update({records.FINAL: 1.0, "started_at": started, "ended_at": time.time(), records.SEL_ACCURACY: acc,
                  records.SEL_FORGETTING: fs, records.SEL_FINAL: (acc + 1 - 2 * fs) / 2, "sel_fs_se": 0.02,
                  "sel_accuracy_se": 0.01, "node_id": "standin", records.CURVE: curve,
                  records.FORGET_LOSSES: [round(-math.log(rng.random() + 1e-9), 4) for _ in range(LOSSES)],
                  records.UNSEEN_LOSSES: [round(-math.log(rng.random() + 1e-9), 4) for _ in range(LOSSES)]})
    return final
