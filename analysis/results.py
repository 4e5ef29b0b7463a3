"""Reading a study's results back from MLflow: its parent run's settings and its trials' runs.

Read-only. Every name and encoding comes from `trainables.records`, the format the
study writes, so the analysis never imports the launcher.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pandas as pd
import yaml

from trainables import records


KEPT = ("mlflow.db", "mlflow.db-*", "optuna.journal", "optuna-*.journal")  # not one study's report: the store, journals


class ResultsError(RuntimeError):
    """One line for the user: unknown or empty experiment, unreachable store."""


@dataclass
class StudyRecords:
    """One study (a parent run) in an MLflow store."""

    client: object
    experiment_id: str
    parent_id: str

    def children(self, stage: str | None = None, status: str | None = "FINISHED") -> pd.DataFrame:
        return records.child_runs(self.client, self.experiment_id, self.parent_id, stage, status)

    def load_losses(self, run_id: str):
        return records.load_losses(self.client, run_id)

    def load_scores(self, run_id: str):
        arrays = records.load_arrays(self.client, run_id, records.SCORES_ARTIFACT)
        return None if arrays is None else arrays["forget"]

    def load_attack(self, run_id: str):
        """A U-LiRA run's (scores, members) from one read of its artifact: members True where its model trained on
        and then forgot a candidate; None when either is missing."""
        arrays = records.load_arrays(self.client, run_id, records.SCORES_ARTIFACT)
        if arrays is None or "member" not in arrays:
            return None
        return arrays["forget"], arrays["member"].astype(bool)


def open_study(experiment: str, tracking_uri: str | None, study_key: str | None = None
               ) -> tuple[StudyRecords, dict, dict]:
    """The experiment's study with `study_key`, or without one its most recent study (a finished one first);
    returns (records, decoded params, tags)."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or records.default_tracking_uri(records.default_results_dir(experiment))
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ResultsError(f"tracking store {uri} does not exist (give --tracking-uri)")
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        names = [e.name for e in client.search_experiments()] if found is None else []
    except Exception as exc:  # MLflow raises many kinds for an unreachable store
        raise ResultsError(f"tracking store {uri}: cannot be read ({str(exc).splitlines()[0]})") from None
    if found is None:
        raise ResultsError(f"unknown experiment {experiment!r} in {uri}; experiments there: {', '.join(names) or 'none'}")
    runs = client.search_runs([found.experiment_id], f"tags.{records.STUDY_KEY_TAG} != ''",
                              order_by=["start_time DESC"])
    parents = [r for r in runs if records.PARENT_TAG not in r.data.tags]
    if not parents:
        raise ResultsError(f"experiment {experiment!r} in {uri} holds no study (no parent run)")
    if study_key is not None:
        keys = [p.data.tags.get(records.STUDY_KEY_TAG) for p in parents]
        parents = [p for p in parents if p.data.tags.get(records.STUDY_KEY_TAG) == study_key]
        if not parents:
            raise ResultsError(f"experiment {experiment!r} holds no study {study_key}; its studies: {', '.join(keys)}")
    parent = next((p for p in parents if p.info.status == "FINISHED"), parents[0])
    study = StudyRecords(client, found.experiment_id, parent.info.run_id)
    if study.children().empty:
        raise ResultsError(f"experiment {experiment!r}: the study {parent.info.run_id} has no finished trials yet")
    return study, records.decode_params(parent.data.params), parent.data.tags


def supersede(results: Path, key: str, marker: str = "config.yaml") -> str | None:
    """When a folder holds another study's report or export (its `marker` file names another study key), move
    those files into `superseded/<its key>/`, so that no file of one study is read as another's; returns that key.
    The store and the Optuna journals (`KEPT`) stay: they hold every study, each under its own name."""
    config = results / marker
    if not config.is_file():
        return None
    try:
        previous = (yaml.safe_load(config.read_text()) or {}).get("study_key")
    except yaml.YAMLError:
        previous = None
    if previous == key:
        return None
    aside = results / "superseded" / str(previous or "unkeyed")
    aside.mkdir(parents=True, exist_ok=True)
    for path in results.iterdir():
        if path.is_file() and not any(fnmatch(path.name, pattern) for pattern in KEPT):
            shutil.move(str(path), aside / path.name)
    return str(previous or "unkeyed")
