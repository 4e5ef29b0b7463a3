"""Bundles: several short trials of the study run one after another in one Ray Tune trial.

Every Tune trial costs the driver a fixed amount of work (placement, start and reuse of
the worker, result handling), tens of milliseconds of CPU (`bench/driver.py`,
docs/benchmarks.md). When the study's trials take less than that, the driver, not the
slots, sets the pace. The plan then hands out bundles: one Tune trial whose config holds
several trial configs, each with its own id. The worker runs them in order and reports
once, with one result per item; the driver records each item as a trial of its own (one
MLflow child run, one Optuna trial). An item that raises becomes a failed result and the
others still run; a worker that dies loses the bundle, which Tune retries as a whole.

This module imports neither PyTorch nor the rest of the project but the record format
(`trainables.records`, the report's names), so the driver benchmark's stand-in trial can use it.
"""

from __future__ import annotations

import time
import traceback
from typing import Callable

from .records import BUNDLE_STAGE, ERROR, FINAL, ITEM_SECONDS, ITEMS



def bundle_config(items: list[tuple[str, dict]]) -> dict:
    """The Tune config of a bundle of (item id, trial config) pairs: the trial shape (`trainables.trial.TrialSpec`)
    with its trials in `items` (this module does not import the trial module, which imports PyTorch)."""
    return {"stage": BUNDLE_STAGE, "method": BUNDLE_STAGE, "seed": 0, "hparams": {},
            ITEMS: [{"id": item_id, "config": config} for item_id, config in items]}


def bundle_items(config: dict) -> list[tuple[str, dict]] | None:
    """The (item id, trial config) pairs of a bundle's config; None for any other trial."""
    if config.get("stage") != BUNDLE_STAGE:
        return None
    return [(item["id"], item["config"]) for item in config[ITEMS]]


def run_bundle(items: list[tuple[str, dict]], run_one: Callable[[dict], dict]) -> dict:
    """Run every item with `run_one(config) -> report` and return the bundle's one report: `items`,
    the item reports in order, each with its `item_seconds`."""
    reports = []
    for _, config in items:
        start = time.perf_counter()
        try:
            report = dict(run_one(config))
        except Exception as exc:  # one item's failure is its own, not the bundle's
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            report = {FINAL: 0.0, ERROR: last[:4000]}
        report[ITEM_SECONDS] = time.perf_counter() - start
        reports.append(report)
    return {ITEMS: reports}
