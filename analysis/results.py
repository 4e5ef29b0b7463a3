"""Reading a study's results back from MLflow: its parent run's settings and its trials' runs.

Read-only. Every name and encoding comes from `trainables.records`, the format the
study writes, so the analysis never imports the launcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from trainables import records


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


def open_study(experiment: str, tracking_uri: str | None) -> tuple[StudyRecords, dict, dict]:
    """The experiment's most recent study (a finished one first); returns (records, decoded params, tags)."""
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
    parent = next((p for p in parents if p.info.status == "FINISHED"), parents[0])
    study = StudyRecords(client, found.experiment_id, parent.info.run_id)
    if study.children().empty:
        raise ResultsError(f"experiment {experiment!r}: the study {parent.info.run_id} has no finished trials yet")
    return study, records.decode_params(parent.data.params), parent.data.tags
