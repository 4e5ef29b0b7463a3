"""Tune's tracking callback on the driver: each trial's reports become its MLflow child run.

Trials never talk to MLflow: `TrackingCallback` opens a trial's run when it starts, hands
its end to the tracking writer (`Tracker.write_ended`) and then tells the plan that the
run is written. The per-example arrays leave each report before Tune keeps it
(`take_arrays`), so Tune's experiment state holds none; they go to MLflow as artifacts.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from ray import tune

from trainables import records
from trainables.bundle import bundle_items
from trainables.methods import resolved_hparams
from trainables.records import trial_key
from trainables.trial import TrialSpec

from .tracking import RunHandle, Tracker


IGNORED = (records.FINAL, "step", "pid", "timestamp", "time_this_iter_s", "done", "training_iteration",
           "iterations_since_restore", "time_since_restore", "time_total_s", records.ITEM_SECONDS)


def metric_name(name: str) -> str:
    """The name a trial's reported value has in its run: `system/<name>` for when, where and at what cost it
    ran, the name itself for what it computed (`records`, the three kinds of metric)."""
    return records.SYSTEM_PREFIX + name if name in records.SYSTEM_VALUES else name


def outcome(result: dict) -> tuple[str, dict, int, dict, dict, list]:
    """What a trial's final report becomes in its run: (status, metrics, step, tags, arrays, curve)."""
    curve = result.get(records.CURVE) or []  # the evaluations, sent with the final report
    tags = {k: str(result[k]) for k in ("node_id", records.HARDWARE_TAG, records.ACCEL_TAG, records.REPLICATE_TAG,
                                        records.SPLIT_SEED_TAG, records.SPLIT_FINGERPRINT_TAG, records.BANK_TAG)
            if k in result}
    if result.get(records.FINAL) != 1.0:
        reason = str(result.get(records.ERROR) or "the trial ended without a final report")
        return "FAILED", {}, 0, {**tags, records.ERROR: reason[:4000]}, {}, curve
    metrics = {metric_name(k): v for k, v in result.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in IGNORED}
    arrays = {}
    if records.FORGET_LOSSES in result:
        arrays[records.LOSSES_ARTIFACT] = {"forget": result[records.FORGET_LOSSES],
                                           "unseen": result.get(records.UNSEEN_LOSSES, [])}
    if records.FORGET_SCORES in result:
        arrays[records.SCORES_ARTIFACT] = {"forget": result[records.FORGET_SCORES],
                                           **({"member": result[records.SHADOW_MEMBERS]}
                                              if records.SHADOW_MEMBERS in result else {})}
    return "FINISHED", metrics, int(result.get("steps", 0)), tags, arrays, curve


class ItemTrial(NamedTuple):
    """An ended trial (or an item of a bundle) as the plan and the progress lines read it: the queued writes
    never hold Tune's own trial objects, which hold Ray handles."""

    trial_id: str
    last_result: dict
    error_msg: str | None = None


def _ended(trial) -> ItemTrial:
    return ItemTrial(trial.trial_id, dict(trial.last_result or {}), getattr(trial, "error_msg", None))


# The per-example arrays of a report: what `outcome` writes as the run's artifacts, and the JSON log leaves out
ARRAYS = records.PER_EXAMPLE


def take_arrays(result: dict) -> dict:
    """Moves the per-example arrays (`ARRAYS`) out of a report, in place, and out of each item's report in a
    bundle's; returns them, each item's under `records.ITEMS` (one dict per item), so that `outcome` can have
    them back."""
    taken = {k: result.pop(k) for k in ARRAYS if k in result}
    if isinstance(items := result.get(records.ITEMS), list):
        if any(each := [take_arrays(item) if isinstance(item, dict) else {} for item in items]):
            taken[records.ITEMS] = each
    return taken




class TrackingCallback(tune.Callback):
    """Driver-side: turns each trial's reports into its MLflow child run (queued, see `Writer`)."""

    def __init__(self, tracker: Tracker, dataset: str, stages: set[str], on_recorded=None):
        self.tracker, self.dataset, self.stages = tracker, dataset, set(stages)
        # (trial, ok, run_id), once the trial's run is written: step 2 of a trial's end (study.plan)
        self.on_recorded = on_recorded or (lambda trial, ok, run_id: None)
        self.runs: dict[str, RunHandle] = {}
        self.attempts: dict[str, int] = {}
        self.arrays: dict[str, dict] = {}  # trial id -> the per-example arrays of its last report (`take_arrays`)

    def on_trial_start(self, iteration, trials, trial, **info):
        spec = TrialSpec.of(trial.config)
        if spec.stage not in self.stages:  # the plan's placeholders and bundles are not trials of the study
            return
        hparams = resolved_hparams(spec.method, self.dataset, **spec.hparams)
        key = trial_key(spec.stage, spec.method, spec.seed, hparams, spec.replicate)
        self.attempts[trial.trial_id] = self.attempts.get(trial.trial_id, 0) + 1  # > 1: Tune retried it
        first = {"tags": {"attempts": str(self.attempts[trial.trial_id])},
                 "metrics": {metric_name("scheduled_at"): time.time()}}  # for the start-up latency
        self.runs[trial.trial_id] = self.tracker.open_child(key, spec.stage, spec.method, spec.seed, hparams,
                                                            trial.trial_id, first)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """Takes the per-example arrays out of the report before Tune keeps it as the trial's `last_result` (Tune
        lets callbacks change it in place): Tune's experiment state, saved again and again, held every trial's.
        They wait here for the trial's end, which hands them to its run's queued write (nothing changes them
        after). The searcher has seen the report already and reads only scalars; its end is told from the
        `last_result`, without them."""
        if arrays := take_arrays(result):
            self.arrays[trial.trial_id] = arrays
        else:
            self.arrays.pop(trial.trial_id, None)

    def on_trial_complete(self, iteration, trials, trial, **info):
        arrays = self.arrays.pop(trial.trial_id, {})
        if (items := bundle_items(trial.config)) is not None:
            reports, kept = (trial.last_result or {}).get(records.ITEMS) or [], arrays.get(records.ITEMS) or []
            for i, (item_id, config) in enumerate(items):
                report = reports[i] if i < len(reports) else {records.ERROR: "the bundle ended without this trial's report"}
                self._record_item(item_id, config, report, kept[i] if i < len(kept) else {})
            return
        handle, ended = self.runs.pop(trial.trial_id, None), _ended(trial)
        status, metrics, step, tags, arrays, curve = outcome({**ended.last_result, **arrays})
        if handle is None:  # not a trial of the study (a wait trial): nothing to write
            self._written(ended, status == "FINISHED")
            return
        self.tracker.finish(handle, status, metrics, step, tags, arrays, curve,
                            then=lambda run_id: self._written(ended, status == "FINISHED", run_id))

    def _record_item(self, item_id: str, config: dict, report: dict, arrays: dict | None = None) -> None:
        spec = TrialSpec.of(config)
        hparams = resolved_hparams(spec.method, self.dataset, **spec.hparams)
        status, metrics, step, tags, arrays, curve = outcome({**report, **(arrays or {})})
        item = ItemTrial(item_id, report)
        self.tracker.write_ended(trial_key(spec.stage, spec.method, spec.seed, hparams, spec.replicate), spec.stage,
                                 spec.method, spec.seed, hparams, item_id, status, metrics, step, tags, arrays, curve,
                                 started=report.get("started_at"), ended=report.get("ended_at"),
                                 then=lambda run_id: self._written(item, status == "FINISHED", run_id))

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A worker died and Tune will retry the trial: the same child run carries on."""
        self.arrays.pop(trial.trial_id, None)  # the retry reports again
        if trial.trial_id in self.runs:
            self.tracker.log(self.runs[trial.trial_id], tags={"recovered": "true"})

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = (getattr(trial, "error_msg", None) or "trial failed").strip().splitlines()[-1][:4000]
        self.arrays.pop(trial.trial_id, None)
        if (items := bundle_items(trial.config)) is not None:  # its worker died past the retries: every item
            for item_id, config in items:
                self._record_item(item_id, config, {records.ERROR: reason})
            return
        handle, ended = self.runs.pop(trial.trial_id, None), _ended(trial)
        if handle is not None:
            self.tracker.finish(handle, "FAILED", tags={records.ERROR: reason},
                                then=lambda run_id: self._written(ended, False, run_id))
        else:
            self._written(ended, False)

    def _written(self, trial, ok: bool, run_id: str | None = None) -> None:
        """The trial's run (`run_id`) is in the store."""
        self.on_recorded(trial, ok, run_id)

