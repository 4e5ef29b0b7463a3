"""The writes of the tracking writer process (`study.writer`): `Store`, one operation per kind of
queued write (the names `Writer.submit` takes), each run with the process's own MLflow client.
"""

from __future__ import annotations

import time
from pathlib import Path

from trainables import records


class Store:
    """The writes themselves, run in the writer process with its own MLflow client. Trials are named by
    their trial key; the process keeps each key's run id (an earlier attempt's run is reused, never
    duplicated: a create whose answer was lost is looked up before it is retried)."""

    def __init__(self, uri: str, experiment_id: str, parent_id: str, scratch: Path):
        from mlflow.tracking import MlflowClient

        self.uri, self.client = uri, MlflowClient(tracking_uri=uri)
        self.experiment_id, self.parent_id = experiment_id, parent_id
        self.known: dict[str, str] | None = None  # trial key -> run id, loaded on first use
        self.repos: dict[str, object] = {}  # run id -> artifact repository, for the runs created here
        self.scratch = scratch  # where artifacts are staged

    def _known(self) -> dict[str, str]:
        if self.known is None:
            df = records.child_runs(self.client, self.experiment_id, self.parent_id, None, None)
            self.known = dict(zip(df[records.TRIAL_KEY_COL], df["run_id"])) if len(df) else {}
        return self.known

    def _opened(self, key: str) -> str:
        """The run `open` made for `key`; none (the store refused the open) is a refusal of this write too."""
        run_id = self._known().get(key)
        if run_id is None:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

            raise MlflowException(f"trial {key} has no run (its open was refused)", error_code=RESOURCE_DOES_NOT_EXIST)
        return run_id

    def _find(self, key: str) -> str | None:
        """The run of `key` as the store holds it now (read again: a retried create may have happened)."""
        self.known = None
        return self._known().get(key)

    def _create(self, key: str, name: str, tags: dict, started: float | None = None) -> str:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags,
                                     start_time=int(started * 1000) if started else None)
        self._known()[key] = run.info.run_id
        self.repos[run.info.run_id] = get_artifact_repository(run.info.artifact_uri, tracking_uri=self.uri)
        return run.info.run_id

    def _batch(self, run_id: str, metrics: dict | None = None, step: int = 0, params: dict | None = None,
               tags: dict | None = None, points: list | None = None) -> None:
        """Metrics (the curve `points`, (name, value, step) each, and the final values at `step`), params and
        tags of one run in as few requests as MLflow allows (1,000 entries each). Curves and final values
        have names of their own (`records.CURVE_PREFIX`), so a curve holds evaluations only."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, s) for k, v, s in points or []] + [
            Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
        params_ = [Param(k, records.param_text(v)) for k, v in (params or {}).items() if v is not None]
        tags_ = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        if not (items or params_ or tags_):
            return
        first = True
        for i in range(0, max(1, len(items)), 900):
            self.client.log_batch(run_id, metrics=items[i : i + 900], params=params_ if first else [],
                                  tags=tags_ if first else [])
            first = False

    def _arrays(self, run_id: str, arrays: dict) -> None:
        """Float arrays as compressed .npz artifacts, one per name (`records.load_arrays` reads them)."""
        for name, values in arrays.items():
            records.save_arrays(self.client, run_id, name, self.scratch, self.repos.get(run_id), **values)

    # --- the operations `Writer.submit` names; each takes the attempt number first ------------
    def _run(self, key: str, name: str, tags: dict, attempt: int, started: float | None = None) -> tuple[str, bool]:
        """The run of trial `key`: the one an earlier attempt (or an earlier study) left, or a new one;
        returns (run id, created now)."""
        run_id = self._known().get(key) or (self._find(key) if attempt else None)
        if run_id is not None:
            return run_id, False
        return self._create(key, name, tags, started), True

    def _missing(self, run_id: str, params: dict) -> dict:
        """The params a run found again lacks (a create whose batch failed left none); those it has stay as
        written (MLflow refuses a param logged again with another value, e.g. in an older encoding)."""
        have = self.client.get_run(run_id).data.params
        return {k: v for k, v in params.items() if k not in have}

    def open(self, attempt: int, key: str, name: str, tags: dict, params: dict, first_tags: dict,
             first_metrics: dict) -> str:
        """A trial's run as it starts: created, or the one an earlier attempt left reopened, with whichever
        of its params that run lacks."""
        run_id, created = self._run(key, name, tags, attempt)
        if not created:
            self.client.update_run(run_id, status="RUNNING")
        self._batch(run_id, first_metrics, params=params if created else self._missing(run_id, params),
                    tags=first_tags if created else {records.TRIAL_ID_TAG: tags[records.TRIAL_ID_TAG], **first_tags})
        return run_id

    def log(self, attempt: int, key: str, metrics: dict | None = None, step: int = 0, tags: dict | None = None) -> str:
        run_id = self._opened(key)
        self._batch(run_id, metrics, step, tags=tags)
        return run_id

    def finish(self, attempt: int, key: str, status: str, metrics: dict, step: int, tags: dict, arrays: dict,
               points: list) -> str:
        run_id = self._opened(key)
        self._batch(run_id, metrics, step, tags=tags, points=points)
        self._arrays(run_id, arrays)
        self.client.set_terminated(run_id, status=status)
        return run_id

    def write_ended(self, attempt: int, key: str, name: str, tags: dict, params: dict, status: str, metrics: dict,
               step: int, arrays: dict, points: list, started: float | None, ended: float | None) -> str:
        """A trial written whole once it has ended (an item of a bundle): three requests, not five (a run found
        again: its missing params, as in `open`)."""
        run_id, created = self._run(key, name, tags, attempt, started)
        self._batch(run_id, metrics, step, params=params if created else self._missing(run_id, params),
                    tags=None if created else tags, points=points)
        self._arrays(run_id, arrays)
        self.client.set_terminated(run_id, status=status, end_time=int(ended * 1000) if ended else None)
        return run_id

    def log_parent(self, attempt: int, run_id: str, metrics: dict) -> str:
        """The study's headline numbers on its parent run."""
        self._batch(run_id, metrics)
        return run_id

    def kill(self, attempt: int, run_id: str) -> None:
        """A run left RUNNING by a killed study: marked interrupted and KILLED."""
        self.client.set_tag(run_id, "interrupted", "true")
        self.client.set_terminated(run_id, status="KILLED")

    def set_tag(self, attempt: int, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def log_artifact(self, attempt: int, run_id: str, path: str, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, path, folder)
