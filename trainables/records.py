"""The study's record format: what the study writes to MLflow and Optuna, and how it is read back.

The launcher writes these records and the analysis reads them; both take every name
(tags, artifact and file names, the trial key, the Optuna study name, the default
locations) and every encoding from here, so the two never disagree and the analysis
never imports the launcher. Parameter values cross MLflow as JSON, typed both ways.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

REFERENCE_ROWS = ("original", "retrain")  # the base models, reported as rows beside the methods
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in logs
# MLflow's usage telemetry off unless the user set it: every call of the tracking client would record an event and
# send it out (clusters are often offline; a study's data stays where the study runs)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for a nested run
STUDY_KEY_TAG = "study_key"  # on the parent run: what the study computes, so a rerun finds it
# On every trial's run; `child_runs` gives each as the column "tags.<name>" (the `*_COL` names).
METHOD_TAG, STAGE_TAG, SEED_TAG, TRIAL_KEY_TAG, TRIAL_ID_TAG = "method", "stage", "seed", "trial_key", "trial_id"
METHOD_COL, STAGE_COL, SEED_COL, TRIAL_KEY_COL = (f"tags.{t}" for t in (METHOD_TAG, STAGE_TAG, SEED_TAG, TRIAL_KEY_TAG))
HARDWARE_TAG, ACCEL_TAG = "hardware", "accel"  # on a trial's run (and `hardware` on the parent): what it ran on
# On a trial's run: its replicate (split seed r and training seed r), the split seed its data was drawn with, and a
# digest of that split's membership (`Dataset.split_fingerprint`).
REPLICATE_TAG, SPLIT_SEED_TAG, SPLIT_FINGERPRINT_TAG = "replicate", "split_seed", "split_fingerprint"
BANK_TAG = "bank_key"  # on a base model's run: its checkpoint's name in the bank (`python -m study.bank`)
TUNING_REPLICATE = 0  # every search runs on it; it is never reported
# The selection replicates are SELECTION_REPLICATE + 1, + 2, ...: each method's candidates from its search are
# rerun on them and its reported setting chosen there, before any reported replicate is seen; never reported.
SELECTION_REPLICATE = 1000
AUDIT_REPLICATE = 1  # the privacy audit's models share this replicate's split (the first reported one)
GIT_COMMIT_TAG, DATA_FINGERPRINT_TAG = "git_commit", "data_fingerprint"  # on the parent run
STUDIED = "gli"  # the method the study searches and compares with every baseline
# The stages of a study, as its runs' `stage` tag names them (the search stage is GLI's, named after it).
BASE_STAGE, BASELINE_STAGE, SEARCH_STAGE, CONFIRM_STAGE = "base", "baseline", STUDIED, "confirm"
SELECT_STAGE = "select"  # each method's candidates on the selection replicates
# The selection metrics the searches optimise and the tables rank settings by.
SEL_ACCURACY, SEL_FORGETTING, SEL_FINAL = "sel_accuracy", "sel_forgetting_score", "sel_final_score"
PRIMARIES = ("final_score", "forgetting_score", "privacy_gap")  # --primary: the one metric the verdicts test
OBJECTIVES = ("pareto", "final_score")  # a search's objective: the first two SEL_* (Pareto), or the third alone
# A trial's one report, from the worker (`trainables.trial.run_trial`, `trainables.bundle`) to the driver.
FINAL = "final"  # 1.0 in a complete report, 0.0 in a failed one (which says why under ERROR)
ERROR = "error"
CURVE = "curve"  # the evaluations: one dict of selection metrics and its "step" each
FORGET_LOSSES, UNSEEN_LOSSES = "forget_losses", "unseen_losses"  # per-example report losses (MLflow artifacts)
FORGET_SCORES = "forget_scores"  # an audit trial's per-example scores (an MLflow artifact)
ITEMS, ITEM_SECONDS = "items", "item_seconds"  # a bundle's report: its items' reports, each with its duration
# Trials of the study's Tune run that are not trials of the study: their stage names, and the fields of the trial
# shape (`trainables.trial.TrialSpec`) that carry what they need, apart from any hyper-parameters.
WAIT_STAGE, BUNDLE_STAGE = "wait", "bundle"
WAIT = "wait"  # a wait trial's field: the plan's version it waits past, its marker file and signal actor
# a bundle's field is ITEMS: its trials, each {"id", "config"}
SETTINGS_PARAM = "trial_settings"  # on the parent run: the settings every trial shared (JSON)
LOSSES_ARTIFACT = "losses.npz"  # on a trial's run: its per-example forget and unseen report losses
SCORES_ARTIFACT = "scores.npz"  # on an audit run: per forget example, the audit's score (see trainables.audit)
AUDIT_STAGE = "audit"  # its runs share AUDIT_REPLICATE's split and start from its original; their seed seeds the run
ULIRA_STAGE = "ulira"  # U-LiRA's shadow and target models on AUDIT_REPLICATE's split; a run's seed is the model's index
SHADOW_MEMBERS = "shadow_members"  # a U-LiRA run's forget candidates, 1 where its model trained on and forgot one
# A report's per-example arrays: MLflow artifacts, never in Tune's experiment state or its JSON log.
PER_EXAMPLE = (FORGET_LOSSES, UNSEEN_LOSSES, FORGET_SCORES, SHADOW_MEMBERS)
EXPORT_KIND = "gli-study-export"  # the `kind` of a file written by analysis.export
CONFIRM_LIMIT = 5  # GLI's Pareto-optimal settings the report's front figure marks, best selection final score first

# A trial's metrics in MLflow, three kinds under three kinds of name (docs/guide.md, "Results and MLflow"):
# - final values, plain names (`accuracy`, `sel_final_score`): one value each, the chosen checkpoint's;
# - curves, `eval/<name>`: the selection metrics at every evaluation, by step (nothing else);
# - system values, `system/<name>`: when, where and at what cost the trial ran, not what it computed.
CURVE_PREFIX = "eval/"
SYSTEM_PREFIX = "system/"
SYSTEM_VALUES = ("scheduled_at", "started_at", "ended_at", "gpu_id", "peak_rss_mb", "startup_seconds",
                 "trial_seconds", "cached")


def default_results_dir(experiment: str) -> Path:
    return (Path("results") / experiment).resolve()


def default_tracking_uri(results_dir: str | Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def write_atomic(path: str | Path, data: str | bytes | None = None, writer=None) -> Path:
    """Write `data` (or call `writer(tmp_path)`) to a temporary name beside `path`, then rename it:
    a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")  # keeps the suffix writers key on
    try:
        if writer is not None:
            writer(tmp)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data or "")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def journal_path(results_dir: str | Path, study_key: str | None = None) -> Path:
    """The Optuna journal of every search of one study (`optuna-<study key>.journal`): two studies that share a
    results folder never share a journal. Without a key, the one journal of a study recorded before keys."""
    return Path(results_dir) / (f"optuna-{study_key}.journal" if study_key else "optuna.journal")


def repair_journal(path: Path) -> int:
    """Drop a torn last line (a kill during a write) from an Optuna journal; returns the bytes dropped.

    Every complete journal line ends with a newline. Optuna replays a torn last line as an
    error, and its next append would glue a new record onto it, so the journal is cut back
    to its last complete line before it is opened.
    """
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        keep = 0
        block = 1 << 16
        position = size
        while position > 0:  # scan back for the last newline
            start = max(0, position - block)
            f.seek(start)
            chunk = f.read(position - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            position = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep


def optuna_study_name(experiment: str, method: str, protocol: str, objective: str, study_key: str | None = None) -> str:
    """One search's Optuna study: named by the study key too, so a changed study never resumes another's search."""
    return f"{experiment}-{method}-{protocol}-{objective}" + (f"-{study_key}" if study_key else "")


def trial_key(stage: str, method: str, seed: int, hparams: dict, replicate: int | None = None) -> str:
    """A trial's identity across reruns: stage, method, seed, the replicate where it is not the seed's own (the
    audit's models share one replicate's split) and a digest of every hyper-parameter."""
    digest = hashlib.sha256(json.dumps(hparams, sort_keys=True, default=str).encode()).hexdigest()[:12]
    split = "" if replicate is None or replicate == seed else f"replicate{replicate}/"
    return f"{stage}/{method}/seed{seed}/{split}{digest}"


def setting_of(key: str) -> str:
    """The hyper-parameter digest of a trial key: equal for one setting's runs on every seed."""
    return key.split("/")[-1]


def numbers(values: dict | None) -> dict:
    """The numeric entries of `values` as floats, as Tune and MLflow take them (booleans and text left out;
    NaN and inf kept, for the failure checks)."""
    return {k: float(v) for k, v in (values or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def encode(value: Any) -> str:
    return json.dumps(value)


def param_text(value: Any) -> str:
    """A param as MLflow's runs table should show it: text as it is (`digits`, not `"digits"`), anything
    else as JSON (numbers, booleans, lists, mappings). `decode` reads both back; unset values (None) are
    not logged at all."""
    return value if isinstance(value, str) else json.dumps(value)


def decode(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError):
        return text  # written by hand, or by MLflow itself


def decode_params(params: dict[str, str]) -> dict[str, Any]:
    return {k: decode(v) for k, v in params.items()}


def hparams_of(row) -> dict[str, Any]:
    """A trial's hyper-parameters from its row of `child_runs` (the `params.*` columns)."""
    return {k[len("params."):]: decode(v) for k, v in row.items() if k.startswith("params.") and isinstance(v, str)}


def child_runs(client, experiment_id: str, parent_id: str, stage: str | None = None,
               status: str | None = "FINISHED"):
    """The trials of one study as a DataFrame: run_id, status, `tags.*`, `params.*`, the final metrics and the
    system values (`system/*`); not the curves."""
    import pandas as pd

    query = f"tags.`{PARENT_TAG}` = '{parent_id}'"
    if stage:
        query += f" and tags.stage = '{stage}'"
    rows = []
    for r in client.search_runs([experiment_id], query, max_results=50000):
        if status and r.info.status != status:
            continue
        row = {"run_id": r.info.run_id, "status": r.info.status, **{f"tags.{k}": v for k, v in r.data.tags.items()}}
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        row.update({k: v for k, v in r.data.metrics.items() if not k.startswith(CURVE_PREFIX)})
        rows.append(row)
    return pd.DataFrame(rows)


def save_arrays(client, run_id: str, name: str, folder: Path, repo=None, **arrays) -> None:
    """Float arrays as one compressed .npz artifact `name` of the run, staged in `folder`; through the
    run's artifact repository `repo` when the caller has it (the client would look the run up)."""
    import numpy as np

    path = Path(folder) / name
    np.savez_compressed(path, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
    if repo is not None:
        repo.log_artifact(str(path))
    else:
        client.log_artifact(run_id, str(path))


def load_arrays(client, run_id: str, name: str) -> dict | None:
    """The arrays of artifact `name` of a run; None, said in one line on stderr, when the run has none or it
    cannot be read (a torn file, an unreachable artifact store): a reader never computes over fewer runs
    without saying so."""
    import sys
    import zipfile

    import numpy as np
    from mlflow.exceptions import MlflowException

    try:
        with tempfile.TemporaryDirectory() as tmp:
            with np.load(client.download_artifacts(run_id, name, tmp)) as z:
                return {k: z[k] for k in z.files}
    except (OSError, MlflowException, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        print(f"[records] warning: run {run_id}: {name} missing or unreadable ({reason}); left out",
              file=sys.stderr, flush=True)
        return None


def load_losses(client, run_id: str):
    """(forget, unseen) report losses of a trial, or None when it has none."""
    arrays = load_arrays(client, run_id, LOSSES_ARTIFACT)
    return None if arrays is None else (arrays["forget"], arrays["unseen"])
