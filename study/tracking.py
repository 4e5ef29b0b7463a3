"""MLflow tracking, all of it from the driver: one parent run per study, one child run per trial.

Trials never talk to MLflow: a Tune callback on the driver turns their reports into
child runs (nested with the `mlflow.parentRunId` tag), written in order by one writer
process (`study.writer`), so the SQLite default never sees concurrent writers and the
driver never waits for the store. Each child carries a stable `trial_key` (stage,
method, seed, hyper-parameters), which is how a resumed study recognises trials it
already has.
Names and encodings come from `trainables.records`, which the analysis reads with.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from trainables import records
from trainables.records import PARENT_TAG, STUDY_KEY_TAG

from .outages import TrackingError
from .writer import Writer


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def open_sqlite_store(uri: str) -> None:
    """Fail early, with one line, when a sqlite:/// store's folder cannot be written; and put the database in
    write-ahead-log mode: each commit then appends to one file and syncs it once, instead of creating,
    syncing and deleting a rollback journal (faster per trial, docs/benchmarks.md). Durability is unchanged
    (synchronous stays FULL). The mode is the file's, so every later connection, `mlflow ui`'s included,
    uses it; where the file system cannot hold a write-ahead log (some network mounts) SQLite keeps its
    rollback journal. `Tracker.checkpoint` folds the log back into the file when the study ends."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.execute("CREATE TABLE IF NOT EXISTS _gli_probe (x)")
                db.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as exc:
            raise TrackingError(f"tracking URI {uri}: cannot write the database ({exc})") from None


NOTE_TAG = "mlflow.note.content"  # MLflow's UI renders this tag as the description, in Markdown
NOTE_LIMIT = 8000  # characters of a tag value MLflow keeps (it truncates longer ones with a warning)
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


class RunHandle(NamedTuple):
    """A trial's child run, named by its trial key (the writer process knows its run id)."""

    key: str


def parent_note(markdown: str) -> str:
    """The report as the parent's description: MLflow keeps a tag's first `NOTE_LIMIT` characters, so a longer
    report is cut at a line and says where the rest is."""
    if len(markdown) <= NOTE_LIMIT:
        return markdown
    tail = "\n\n(cut here: the whole report is the `summary/summary.md` artifact of this run)\n"
    return markdown[: markdown.rfind("\n", 0, NOTE_LIMIT - len(tail))] + tail


class Tracker:
    def __init__(self, uri: str, experiment: str, artifact_dir: Path | None = None, outage_s: float = 300.0):
        open_sqlite_store(uri)
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
        # children() read again only once something was written since: a resumed study's rounds, activated one
        # after another with nothing run between them, would otherwise read the same runs once per round
        self.writes = 0  # writes submitted so far
        self.read: dict[tuple, tuple[int, pd.DataFrame]] = {}  # (stage, status) -> (writes before the read, runs)
        self.read_lock = threading.Lock()

    def _submit(self, kind: str, **kwargs) -> None:
        with self.read_lock:
            self.writes += 1
        self.writer.submit(kind, **kwargs)

    def flush(self) -> None:
        """Wait until every queued write is in the store (reads call this first)."""
        self.writer.flush()

    def __getstate__(self) -> dict:  # Tune saves its callbacks: the writer, its process and the reads stay behind
        return {**self.__dict__, "writer": None, "read": {}, "read_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, read_lock=threading.Lock())

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
            self.writer.store_args = (self.experiment_id, self.parent_id)
            return self.parent_id, True

        def create(attempt):
            found = find() if attempt else []  # a create whose answer was lost may have happened
            run = found[0] if found else self.client.create_run(self.experiment_id, run_name=name,
                                                                 tags={**tags, STUDY_KEY_TAG: study_key})
            return run.info.run_id

        self.parent_id = self.writer.call(create)
        self.writer.call(lambda attempt: self.client.log_batch(
            self.parent_id, params=[Param(k, records.param_text(v)[:6000]) for k, v in params.items() if v is not None]))
        self.writer.store_args = (self.experiment_id, self.parent_id)
        return self.parent_id, False

    def latest_other_parent(self, study_key: str) -> tuple[str, dict] | None:
        """(run id, decoded params) of the experiment's most recent study with another key, to say what changed."""
        def find():
            runs = self.client.search_runs([self.experiment_id], f"tags.{STUDY_KEY_TAG} != '{study_key}'",
                                           order_by=["start_time DESC"], max_results=20)
            return [r for r in runs if PARENT_TAG not in r.data.tags and STUDY_KEY_TAG in r.data.tags]

        parents = self.writer.call(lambda attempt: find())
        if not parents:
            return None
        return parents[0].info.run_id, records.decode_params(parents[0].data.params)

    def close_stale_children(self) -> int:
        """Children left RUNNING by a study that was killed: marked KILLED (a retried trial reopens its own)."""
        stale = self.children(status="RUNNING")
        for run_id in stale.get("run_id", []):
            self._submit("kill", run_id=run_id)
        self.flush()
        return len(stale)

    def end_parent(self, status: str) -> None:
        if self.parent_id:
            self.flush()
            self.writer.call(lambda attempt: self.client.set_terminated(self.parent_id, status=status))
        self.writer.close()

    def log_parent_metrics(self, metrics: dict) -> None:
        """The study's headline numbers on its parent run, so that studies sort and compare in the runs table."""
        self._submit("log_parent", run_id=self.parent_id, metrics=records.numbers(metrics))

    def checkpoint(self) -> None:
        """Fold a sqlite:/// store's write-ahead log into the database file, so that `mlflow.db` alone holds
        everything (a copy of it without `mlflow.db-wal` would otherwise miss the last writes)."""
        if self.uri.startswith("sqlite:///"):
            try:
                with contextlib.closing(sqlite3.connect(self.uri[len("sqlite:///"):], timeout=30)) as db:
                    busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                busy, reason = 1, str(exc)
            else:
                reason = "another connection is reading it"
            if busy:
                print(f"[tracking] warning: {self.uri}: the write-ahead log could not be folded in ({reason}); "
                      "keep mlflow.db-wal beside mlflow.db when copying it", file=sys.stderr)

    def describe_parent(self, markdown: str) -> None:
        """The parent run's description in the UI (the study's summary tables, `parent_note`)."""
        self._submit("set_tag", run_id=self.parent_id, key=NOTE_TAG, value=parent_note(markdown))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._submit("log_artifact", run_id=self.parent_id, path=str(path), folder=folder)

    # --- children ----------------------------------------------------------------------
    def children(self, stage: str | None = None, status: str | None = "FINISHED") -> pd.DataFrame:
        """The study's child runs of `stage` (None: all) with `status` (None: any), once every queued write is in;
        read from the store again only when something has been written since the last such read."""
        with self.read_lock:
            writes, cached = self.writes, self.read.get((stage, status))
        if cached is not None and cached[0] == writes:
            return cached[1].copy()
        self.flush()
        runs = self.writer.call(lambda attempt: records.child_runs(self.client, self.experiment_id, self.parent_id,
                                                                   stage, status))
        with self.read_lock:
            self.read[(stage, status)] = (writes, runs)  # as of the writes counted before the read began
        return runs.copy()

    def _child_tags(self, key: str, stage: str, method: str, seed: int, trial_id: str) -> tuple[str, dict]:
        name = f"{stage}-{method}-s{seed}-{records.setting_of(key)[:6]}"  # one setting's seeds share the suffix
        return name, {PARENT_TAG: self.parent_id, records.METHOD_TAG: method, records.STAGE_TAG: stage,
                      records.SEED_TAG: str(seed), records.TRIAL_KEY_TAG: key, records.TRIAL_ID_TAG: trial_id}

    def open_child(self, key: str, stage: str, method: str, seed: int, params: dict, trial_id: str,
                   first: dict | None = None) -> RunHandle:
        """The trial's child run, created (or reopened) by the writer; `first` metrics and tags go with it.
        A child left RUNNING or FAILED by an earlier attempt of the same trial is reused, not duplicated."""
        first = first or {}
        name, tags = self._child_tags(key, stage, method, seed, trial_id)
        self._submit("open", key=key, name=name, tags=tags, params=params,
                     first_tags=first.get("tags", {}), first_metrics=records.numbers(first.get("metrics")))
        return RunHandle(key)

    def log(self, handle: RunHandle, metrics: dict | None = None, step: int = 0, tags: dict | None = None) -> None:
        self._submit("log", key=handle.key, metrics=records.numbers(metrics), step=step, tags=tags)

    def finish(self, handle: RunHandle, status: str, metrics: dict | None = None, step: int = 0,
               tags: dict | None = None, arrays: dict | None = None, curve: list[dict] | None = None,
               then=None) -> None:
        """The trial's last writes and its status, in one queued write: its final metrics after the points of
        its `curve` (one dict of selection metrics and `step` per evaluation); `then(run_id)` once they are in."""
        self._submit("finish", then=then, key=handle.key, status=status,
                     metrics=records.numbers(metrics), step=step, tags=tags or {}, arrays=arrays or {},
                     points=_points(curve))

    def write_ended(self, key: str, stage: str, method: str, seed: int, params: dict, trial_id: str, status: str,
               metrics: dict | None = None, step: int = 0, tags: dict | None = None, arrays: dict | None = None,
               curve: list[dict] | None = None, started: float | None = None, ended: float | None = None,
               then=None) -> None:
        """A trial that ended before its run was opened (an item of a bundle), written whole in one queued
        write: created (or the run an earlier attempt left reused) with its tags, params, metrics, curve and
        arrays, then terminated; `then(run_id)` once it is all in."""
        name, run_tags = self._child_tags(key, stage, method, seed, trial_id)
        self._submit("write_ended", then=then, key=key, name=name, tags={**run_tags, **(tags or {})},
                     params=params, status=status, metrics=records.numbers(metrics), step=step, arrays=arrays or {},
                     points=_points(curve), started=started, ended=ended)


def _points(curve: list[dict] | None) -> list[tuple[str, float, int]]:
    """A trial's curve (one dict of selection metrics and its `step` per evaluation) as (name, value, step),
    named `eval/<metric>`: a curve holds the evaluations, never the chosen checkpoint's final value."""
    return [(records.CURVE_PREFIX + k, float(v), int(point.get("step", 0))) for point in curve or []
            for k, v in point.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)]


__all__ = ["Tracker", "TrackingError", "git_commit", "runs_link"]
