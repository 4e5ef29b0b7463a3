"""MLflow tracking, all of it on the driver: one parent run per study, one child run per trial.

Trials never talk to MLflow: a Tune callback on the driver turns their reports into
child runs (nested with the `mlflow.parentRunId` tag), so the SQLite default never
sees concurrent writers. Each child carries a stable `trial_key` (stage, method, seed,
hyper-parameters), which is how a resumed study recognises trials it already has.
Names and encodings come from `trainables.records`, which the analysis reads with.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray import tune

from trainables import records
from trainables.methods import resolved_hparams
from trainables.records import PARENT_TAG, STUDY_KEY_TAG, trial_key
from trainables.trial import TrialSpec



class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written: one line for the user."""


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_writable(uri: str) -> None:
    """Fail early, with one line, when a sqlite:/// store's folder cannot be written."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            sqlite3.connect(path).execute("CREATE TABLE IF NOT EXISTS _gli_probe (x)").connection.close()
        except (OSError, sqlite3.Error) as exc:
            raise TrackingError(f"tracking URI {uri}: cannot write the database ({exc})") from None


class Tracker:
    def __init__(self, uri: str, experiment: str, artifact_dir: Path | None = None):
        check_writable(uri)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                location = artifact_dir.resolve().as_uri() if artifact_dir else None
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                self.experiment_id = found.experiment_id
        except Exception as exc:  # MLflow raises many kinds; the user needs one line
            raise TrackingError(f"tracking URI {uri}: {str(exc).splitlines()[0]}") from None
        self.parent_id: str | None = None
        self.known: dict[str, str] | None = None  # trial_key -> child run id, loaded on first use

    # --- parent ------------------------------------------------------------------------
    def start_parent(self, study_key: str, name: str, params: dict, tags: dict) -> tuple[str, bool]:
        """Create the study's parent run, or reopen the one with the same study key; returns (id, resumed)."""
        runs = self.client.search_runs([self.experiment_id], f"tags.{STUDY_KEY_TAG} = '{study_key}'", max_results=5)
        parents = [r for r in runs if PARENT_TAG not in r.data.tags]
        if parents:
            self.parent_id = parents[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            return self.parent_id, True
        run = self.client.create_run(self.experiment_id, run_name=name, tags={**tags, STUDY_KEY_TAG: study_key})
        self.parent_id = run.info.run_id
        self.client.log_batch(self.parent_id, params=[Param(k, records.encode(v)[:6000]) for k, v in params.items()])
        return self.parent_id, False

    def close_stale_children(self) -> int:
        """Children left RUNNING by a study that was killed: marked KILLED (a retried trial reopens its own)."""
        stale = self.children(status="RUNNING")
        for run_id in stale.get("run_id", []):
            self.client.set_tag(run_id, "interrupted", "true")
            self.client.set_terminated(run_id, status="KILLED")
        return len(stale)

    def end_parent(self, status: str) -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.parent_id, str(path), folder)

    # --- children ----------------------------------------------------------------------
    def children(self, stage: str | None = None, status: str | None = "FINISHED") -> pd.DataFrame:
        return records.child_runs(self.client, self.experiment_id, self.parent_id, stage, status)

    def finished_keys(self) -> set[str]:
        df = self.children()
        return set(df["tags.trial_key"]) if len(df) else set()

    def open_child(self, key: str, stage: str, method: str, seed: int, params: dict, trial_id: str) -> str:
        # A child left RUNNING or FAILED by an earlier attempt of the same trial is reused, not duplicated.
        if self.known is None:
            df = self.children(status=None)
            self.known = dict(zip(df["tags.trial_key"], df["run_id"])) if len(df) else {}
        if key in self.known:
            run_id = self.known[key]
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "trial_id", trial_id)
            return run_id
        name = f"{stage}-{method}-s{seed}-{records.setting_of(key)[:6]}"  # one setting's seeds share the suffix
        tags = {PARENT_TAG: self.parent_id, "method": method, "stage": stage, "seed": str(seed),
                "trial_key": key, "trial_id": trial_id}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.client.log_batch(run.info.run_id, params=[Param(k, records.encode(v)) for k, v in params.items()])
        self.known[key] = run.info.run_id
        return run.info.run_id

    def log_arrays(self, run_id: str, name: str, **arrays) -> None:
        records.save_arrays(self.client, run_id, name, **arrays)

    def log_metrics(self, run_id: str, metrics: dict, step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), 900):  # MLflow caps a batch at 1,000 entries
            self.client.log_batch(run_id, metrics=items[i : i + 900])


class TrackingCallback(tune.Callback):
    """Driver-side: turns each trial's reports into its MLflow child run."""

    def __init__(self, tracker: Tracker, dataset: str, stages: set[str], on_done=None):
        self.tracker, self.dataset, self.stages, self.on_done = tracker, dataset, set(stages), on_done
        self.runs: dict[str, str] = {}
        self.attempts: dict[str, int] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        spec = TrialSpec.of(trial.config)
        if spec.stage not in self.stages:  # the plan's placeholders are not trials of the study
            return
        hparams = resolved_hparams(spec.method, self.dataset, **spec.hparams)
        key = trial_key(spec.stage, spec.method, spec.seed, hparams)
        run_id = self.tracker.open_child(key, spec.stage, spec.method, spec.seed, hparams, trial.trial_id)
        self.runs[trial.trial_id] = run_id
        self.attempts[trial.trial_id] = self.attempts.get(trial.trial_id, 0) + 1  # > 1: Tune retried it
        self.tracker.client.set_tag(run_id, "attempts", str(self.attempts[trial.trial_id]))
        self.tracker.log_metrics(run_id, {"scheduled_at": time.time()}, 0)  # for the start-up latency

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        if result.get("final", 1.0) == 0.0:  # an evaluation inside the trial: a point on the curves
            curve = {k: v for k, v in result.items() if k.startswith("sel_")}
            self.tracker.log_metrics(run_id, curve, int(result.get("step", 0)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.runs.pop(trial.trial_id, None)
        if run_id is None:
            return
        result = trial.last_result or {}
        metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k not in ("final", "step", "pid", "timestamp", "time_this_iter_s", "done",
                                 "training_iteration", "iterations_since_restore", "time_since_restore",
                                 "time_total_s")}
        if "node_id" in result:
            self.tracker.client.set_tag(run_id, "node_id", str(result["node_id"]))
        if result.get("final") != 1.0:
            reason = str(result.get("error") or "the trial ended without a final report")
            self.tracker.client.set_tag(run_id, "error", reason[:4000])
            self.tracker.client.set_terminated(run_id, status="FAILED")
        else:
            self.tracker.log_metrics(run_id, metrics, int(result.get("steps", 0)))
            if "forget_losses" in result:
                self.tracker.log_arrays(run_id, records.LOSSES_ARTIFACT, forget=result["forget_losses"],
                                        unseen=result.get("unseen_losses", []))
            if "forget_scores" in result:
                self.tracker.log_arrays(run_id, records.SCORES_ARTIFACT, forget=result["forget_scores"])
            self.tracker.client.set_terminated(run_id, status="FINISHED")
        if self.on_done:
            self.on_done(trial, ok=result.get("final") == 1.0)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A worker died and Tune will retry the trial: the same child run carries on."""
        if trial.trial_id in self.runs:
            self.tracker.client.set_tag(self.runs[trial.trial_id], "recovered", "true")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.runs.pop(trial.trial_id, None)
        if run_id is not None:
            reason = (getattr(trial, "error_msg", None) or "trial failed").strip().splitlines()[-1][:4000]
            self.tracker.client.set_tag(run_id, "error", reason)
            self.tracker.client.set_terminated(run_id, status="FAILED")
        if self.on_done:
            self.on_done(trial, ok=False)


__all__ = ["Tracker", "TrackingCallback", "TrackingError", "git_commit"]
