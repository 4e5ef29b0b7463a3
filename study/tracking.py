"""MLflow tracking, all of it on the driver: one parent run per study, one child run per trial.

Trials never talk to MLflow: a Tune callback on the driver turns their reports into
child runs (nested with the `mlflow.parentRunId` tag), so the SQLite default never
sees concurrent writers. Each child carries a stable `trial_key` (stage, method, seed,
hyper-parameters), which is how a resumed study recognises trials it already has.
Names and encodings come from `trainables.records`, which the analysis reads with.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
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


OUTAGE_WORDS = ("connection refused", "max retries exceeded", "failed to establish", "connection aborted",
                "connection reset", "remote end closed", "read timed out", "temporarily unavailable",
                "database is locked", "503", "502")


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the store could not be reached (worth retrying), not that a write was refused."""
    import requests

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError,
                        TimeoutError)):
        return True
    text = str(exc).lower()
    return any(word in text for word in OUTAGE_WORDS)


class Writer:
    """Tracking writes, in order, on one background thread, so the driver never waits for the store.

    A write that fails because the store cannot be reached (a tracking server restarting,
    a network blip) is retried with backoff, in place, so later writes stay behind it;
    after `outage_s` seconds without success the writer stops and every later call raises
    `TrackingError`. `flush()` waits until everything queued is written.
    """

    def __init__(self, outage_s: float, uri: str):
        self.outage_s, self.uri = outage_s, uri
        self.queue: queue.Queue = queue.Queue()
        self.error: TrackingError | None = None
        self.down_since: float | None = None
        self.busy_s = 0.0  # time spent writing, for bench/driver.py
        self.thread = threading.Thread(target=self._loop, name="tracking-writer", daemon=True)
        self.thread.start()

    def submit(self, write) -> None:
        if self.error:
            raise self.error
        self.queue.put(write)

    def flush(self) -> None:
        self.queue.join()
        if self.error:
            raise self.error

    def call(self, write):
        """Run `write(attempt)` now, on the caller's thread, retried like a queued write."""
        if self.error:
            raise self.error
        return self._retry(write)

    def _loop(self) -> None:
        while True:
            write = self.queue.get()
            started = time.perf_counter()
            try:
                if self.error is None:
                    self._retry(write)
            except TrackingError as exc:
                self.error = exc
            except Exception as exc:  # a write the store refused: one line, the study goes on
                print(f"[tracking] warning: a write was refused ({str(exc).splitlines()[0][:200]})",
                      file=sys.stderr, flush=True)
            finally:
                self.busy_s += time.perf_counter() - started
                self.queue.task_done()

    def _retry(self, write):
        attempt, delay = 0, 1.0
        while True:
            try:
                result = write(attempt)
            except Exception as exc:
                if not unreachable(exc):
                    raise
                now = time.time()
                if self.down_since is None:
                    self.down_since = now
                    print(f"[tracking] warning: {self.uri} unreachable ({str(exc).splitlines()[0][:160]}); "
                          f"writes are queued and retried for up to {self.outage_s:.0f}s", file=sys.stderr, flush=True)
                if now - self.down_since > self.outage_s:
                    raise TrackingError(
                        f"tracking URI {self.uri} unreachable for more than {self.outage_s:.0f}s (--tracking-outage); "
                        "the study stopped: start the tracking server and run the same command again to resume"
                    ) from None
                time.sleep(delay)
                attempt, delay = attempt + 1, min(2 * delay, 10.0)
                continue
            if self.down_since is not None:
                print(f"[tracking] {self.uri} reachable again after {time.time() - self.down_since:.0f}s; "
                      f"{self.queue.unfinished_tasks} queued write(s) continue", file=sys.stderr, flush=True)
                self.down_since = None
            return result


NOTE_TAG = "mlflow.note.content"  # MLflow's UI renders this tag as the description, in Markdown
EXPERIMENT_NOTE = (
    "**{name}**: a hyper-parameter study of machine-unlearning methods, written by `python -m study.launch`. "
    "The parent run (no parent) holds the study's settings and, as its description, the summary table; each "
    "child run is one trial (tags `stage`, `method`, `seed`, `trial_key`): `base` (the original and retrained "
    "models), `gli` (the Optuna search), `baseline`, `confirm` (the chosen GLI settings over every seed) and "
    "`audit`. Metrics named `sel_*` are on the selection splits, the others on the report splits."
)


def runs_link(uri: str, experiment_id: str, port: int = 5000) -> str:
    """The address of the experiment's runs table in the MLflow UI."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"  # not the GenAI view


class RunHandle:
    """A child run whose id the writer fills in once it has created the run."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id


class Tracker:
    def __init__(self, uri: str, experiment: str, artifact_dir: Path | None = None, outage_s: float = 300.0):
        check_writable(uri)
        if uri.startswith(("http://", "https://")):  # our writer retries and says so; MLflow's own retries
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # would block silently for minutes
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.writer = Writer(outage_s, uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                location = artifact_dir.resolve().as_uri() if artifact_dir else None
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                self.experiment_id = found.experiment_id
            # MLflow 3's UI opens an experiment on its GenAI overview unless told it holds training runs
            self.client.set_experiment_tag(self.experiment_id, "mlflow.experimentKind", "custom_model_development")
            self.client.set_experiment_tag(self.experiment_id, NOTE_TAG, EXPERIMENT_NOTE.format(name=experiment))
        except Exception as exc:  # MLflow raises many kinds; the user needs one line
            raise TrackingError(f"tracking URI {uri}: {str(exc).splitlines()[0]}") from None
        self.parent_id: str | None = None
        self.known: dict[str, str] | None = None  # trial_key -> child run id, loaded on first use

    def flush(self) -> None:
        """Wait until every queued write is in the store (reads call this first)."""
        self.writer.flush()

    def __getstate__(self) -> dict:  # Tune saves its callbacks: the queue and its thread stay behind
        return {**self.__dict__, "writer": None}

    # --- parent ------------------------------------------------------------------------
    def start_parent(self, study_key: str, name: str, params: dict, tags: dict) -> tuple[str, bool]:
        """Create the study's parent run, or reopen the one with the same study key; returns (id, resumed)."""
        def find():
            runs = self.client.search_runs([self.experiment_id], f"tags.{STUDY_KEY_TAG} = '{study_key}'", max_results=5)
            return [r for r in runs if PARENT_TAG not in r.data.tags]

        parents = self.writer.call(lambda attempt: find())
        if parents:
            self.parent_id = parents[0].info.run_id
            self.writer.call(lambda attempt: self.client.update_run(self.parent_id, status="RUNNING"))
            return self.parent_id, True

        def create(attempt):
            found = find() if attempt else []  # a create whose answer was lost may have happened
            run = found[0] if found else self.client.create_run(self.experiment_id, run_name=name,
                                                                 tags={**tags, STUDY_KEY_TAG: study_key})
            return run.info.run_id

        self.parent_id = self.writer.call(create)
        self.writer.call(lambda attempt: self.client.log_batch(
            self.parent_id, params=[Param(k, records.encode(v)[:6000]) for k, v in params.items()]))
        return self.parent_id, False

    def close_stale_children(self) -> int:
        """Children left RUNNING by a study that was killed: marked KILLED (a retried trial reopens its own)."""
        stale = self.children(status="RUNNING")
        for run_id in stale.get("run_id", []):
            self.writer.submit(lambda attempt, run_id=run_id: (
                self.client.set_tag(run_id, "interrupted", "true"),
                self.client.set_terminated(run_id, status="KILLED")))
        self.flush()
        return len(stale)

    def end_parent(self, status: str) -> None:
        if self.parent_id:
            self.flush()
            self.writer.call(lambda attempt: self.client.set_terminated(self.parent_id, status=status))

    def describe_parent(self, markdown: str) -> None:
        """The parent run's description in the UI (the study's summary table)."""
        self.writer.submit(lambda attempt: self.client.set_tag(self.parent_id, NOTE_TAG, markdown[:60000]))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.writer.submit(lambda attempt: self.client.log_artifact(self.parent_id, str(path), folder))

    # --- children ----------------------------------------------------------------------
    def children(self, stage: str | None = None, status: str | None = "FINISHED") -> pd.DataFrame:
        self.flush()
        return self.writer.call(lambda attempt: records.child_runs(self.client, self.experiment_id, self.parent_id,
                                                                  stage, status))

    def finished_keys(self) -> set[str]:
        df = self.children()
        return set(df["tags.trial_key"]) if len(df) else set()

    def open_child(self, key: str, stage: str, method: str, seed: int, params: dict, trial_id: str,
                   first: dict | None = None) -> RunHandle:
        """The trial's child run, created (or reopened) by the writer; `first` metrics and tags go with it.
        A child left RUNNING or FAILED by an earlier attempt of the same trial is reused, not duplicated."""
        if self.known is None:
            df = self.children(status=None)
            self.known = dict(zip(df["tags.trial_key"], df["run_id"])) if len(df) else {}
        first = first or {}
        if key in self.known:
            handle = RunHandle(self.known[key])
            self.writer.submit(lambda attempt: (self.client.update_run(handle.run_id, status="RUNNING"),
                                                self._batch(handle.run_id, tags={"trial_id": trial_id, **first.get("tags", {})},
                                                            metrics=first.get("metrics", {}))))
            return handle
        handle = RunHandle()
        name = f"{stage}-{method}-s{seed}-{records.setting_of(key)[:6]}"  # one setting's seeds share the suffix
        tags = {PARENT_TAG: self.parent_id, "method": method, "stage": stage, "seed": str(seed),
                "trial_key": key, "trial_id": trial_id}

        def create(attempt):
            if attempt:  # the store may have created it before the connection dropped: never twice
                found = records.child_runs(self.client, self.experiment_id, self.parent_id, None, None)
                found = found[found["tags.trial_key"] == key] if len(found) else found
                if len(found):
                    handle.run_id = found["run_id"].iloc[0]
            if handle.run_id is None:
                handle.run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            self.known[key] = handle.run_id
            self._batch(handle.run_id, params=params, tags=first.get("tags", {}), metrics=first.get("metrics", {}))

        self.writer.submit(create)
        return handle

    def _batch(self, run_id: str, metrics: dict | None = None, step: int = 0, params: dict | None = None,
               tags: dict | None = None, history: list[Metric] | None = None) -> None:
        """Metrics (after the curve points in `history`), params and tags of one run in as few requests as
        MLflow allows (1,000 entries each)."""
        now = int(time.time() * 1000)
        items = list(history or []) + [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()
                                       if isinstance(v, (int, float)) and not isinstance(v, bool)]
        params_ = [Param(k, records.encode(v)) for k, v in (params or {}).items()]
        tags_ = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        if not (items or params_ or tags_):
            return
        first = True
        for i in range(0, max(1, len(items)), 900):
            self.client.log_batch(run_id, metrics=items[i : i + 900], params=params_ if first else [],
                                  tags=tags_ if first else [])
            first = False

    def log(self, handle: RunHandle, metrics: dict | None = None, step: int = 0, tags: dict | None = None) -> None:
        self.writer.submit(lambda attempt: self._batch(handle.run_id, metrics, step, tags=tags))

    def finish(self, handle: RunHandle, status: str, metrics: dict | None = None, step: int = 0,
               tags: dict | None = None, arrays: dict | None = None, curve: list[dict] | None = None,
               then=None) -> None:
        """The trial's last writes and its status, in one queued write: its final metrics after the points of
        its `curve` (one dict of selection metrics and `step` per evaluation); `then()` once they are in."""
        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, int(point.get("step", 0))) for point in curve or []
                  for k, v in point.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)]

        def write(attempt):
            self._batch(handle.run_id, metrics, step, tags=tags, history=points)
            for name, values in (arrays or {}).items():
                records.save_arrays(self.client, handle.run_id, name, **values)
            self.client.set_terminated(handle.run_id, status=status)
            if then is not None:
                then()

        self.writer.submit(write)


class TrackingCallback(tune.Callback):
    """Driver-side: turns each trial's reports into its MLflow child run (queued, see `Writer`)."""

    def __init__(self, tracker: Tracker, dataset: str, stages: set[str], on_done=None, on_written=None):
        self.tracker, self.dataset, self.stages, self.on_done = tracker, dataset, set(stages), on_done
        self.on_written = on_written or (lambda trial_id: None)  # called on the writer's thread
        self.runs: dict[str, RunHandle] = {}
        self.attempts: dict[str, int] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        spec = TrialSpec.of(trial.config)
        if spec.stage not in self.stages:  # the plan's placeholders are not trials of the study
            return
        hparams = resolved_hparams(spec.method, self.dataset, **spec.hparams)
        key = trial_key(spec.stage, spec.method, spec.seed, hparams)
        self.attempts[trial.trial_id] = self.attempts.get(trial.trial_id, 0) + 1  # > 1: Tune retried it
        first = {"tags": {"attempts": str(self.attempts[trial.trial_id])},
                 "metrics": {"scheduled_at": time.time()}}  # for the start-up latency
        self.runs[trial.trial_id] = self.tracker.open_child(key, spec.stage, spec.method, spec.seed, hparams,
                                                            trial.trial_id, first)

    def on_trial_complete(self, iteration, trials, trial, **info):
        handle = self.runs.pop(trial.trial_id, None)
        if handle is None:
            self.on_written(trial.trial_id)
            return
        result = trial.last_result or {}
        curve = result.get("curve") or []  # the evaluations, sent with the final report
        tags = {k: str(result[k]) for k in ("node_id", "hardware") if k in result}  # where it ran, on what
        if result.get("final") != 1.0:
            reason = str(result.get("error") or "the trial ended without a final report")
            self.tracker.finish(handle, "FAILED", tags={**tags, "error": reason[:4000]}, curve=curve,
                                then=lambda: self._written(trial, False))
        else:
            metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and k not in ("final", "step", "pid", "timestamp", "time_this_iter_s", "done",
                                     "training_iteration", "iterations_since_restore", "time_since_restore",
                                     "time_total_s")}
            arrays = {}
            if "forget_losses" in result:
                arrays[records.LOSSES_ARTIFACT] = {"forget": result["forget_losses"],
                                                   "unseen": result.get("unseen_losses", [])}
            if "forget_scores" in result:
                arrays[records.SCORES_ARTIFACT] = {"forget": result["forget_scores"]}
            self.tracker.finish(handle, "FINISHED", metrics, int(result.get("steps", 0)), tags, arrays, curve,
                                then=lambda: self._written(trial, True))

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A worker died and Tune will retry the trial: the same child run carries on."""
        if trial.trial_id in self.runs:
            self.tracker.log(self.runs[trial.trial_id], tags={"recovered": "true"})

    def on_trial_error(self, iteration, trials, trial, **info):
        handle = self.runs.pop(trial.trial_id, None)
        if handle is not None:
            reason = (getattr(trial, "error_msg", None) or "trial failed").strip().splitlines()[-1][:4000]
            self.tracker.finish(handle, "FAILED", tags={"error": reason}, then=lambda: self._written(trial, False))
        else:
            self._written(trial, False)

    def _written(self, trial, ok: bool) -> None:
        """The trial's run is in the store: Optuna hears of its end, then the progress line."""
        self.on_written(trial.trial_id)
        if self.on_done:
            self.on_done(trial, ok=ok)


__all__ = ["Tracker", "TrackingCallback", "TrackingError", "git_commit", "runs_link"]
