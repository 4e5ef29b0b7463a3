"""What Ray Tune runs for every trial of the study, and what Tune logs of it.

`study_trial` is the trainable: a trial of the study (`trainables.trial.run_trial`), a
bundle of them, or a wait trial (the plan's placeholder that holds a free worker until any
trial ends: `study.plan.StudyPlan`). `StudyJsonLogger` is Tune's JSON log without the
per-example arrays, which each trial's MLflow run holds.
"""

from __future__ import annotations

from ray import tune
from ray.tune.logger import JsonLoggerCallback

from trainables.bundle import bundle_items, run_bundle
from trainables.data import Dataset
from trainables.records import ITEMS, PER_EXAMPLE, WAIT_STAGE
from trainables.trial import TrialSettings, TrialSpec, run_trial

from .waits import wait_for_plan


def study_trial(config: dict, data: Dataset | None = None, settings: TrialSettings | None = None) -> None:
    """What Ray Tune runs for every trial of the study: one trial, a bundle of them, or a wait trial."""
    spec = TrialSpec.of(config)
    if spec.stage == WAIT_STAGE:
        wait_for_plan(spec.wait["marker"], int(spec.wait["version"]), signal=spec.wait.get("signal"))
        return
    if (items := bundle_items(config)) is not None:
        tune.report(run_bundle(items, lambda item: run_trial(TrialSpec.of(item), settings, data)))
        return
    tune.report(run_trial(spec, settings, data))


BULKY = PER_EXAMPLE  # per-example arrays: MLflow artifacts, not the JSON log


def _slim(result: dict) -> dict:
    out = {k: v for k, v in result.items() if k not in BULKY}
    if isinstance(out.get(ITEMS), list):
        out[ITEMS] = [_slim(item) for item in out[ITEMS]]
    return out


class StudyJsonLogger(JsonLoggerCallback):
    """Tune's JSON log (each trial's result.json) without the per-example arrays, which the trial's MLflow
    run holds: encoding them took a tenth of the driver's time with many short trials (bench/driver.py)."""

    def log_trial_result(self, iteration: int, trial, result: dict):
        super().log_trial_result(iteration, trial, _slim(result))
