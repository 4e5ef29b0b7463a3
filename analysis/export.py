"""`python -m analysis.export --experiment NAME --out DIR`: best configurations, tables and figures from MLflow.

Writes one `<method>.yaml` per table row with the configuration the study chose (its
hyper-parameters, data set and data fingerprint, model, base training, runner, seeds,
selection protocol, git commit and the metrics it reached), `gli-pareto.yaml` with
every Pareto-optimal GLI setting, and the tables and plots of `analysis.report`.
`python -m study.reproduce DIR/<method>.yaml` reruns one of them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
import yaml

from .report import AXES, StudyInfo, build_report, hparams_of, method_rows

EXPORT_KIND = "gli-study-export"
METRICS = ["accuracy", "top2_accuracy", "forgetting_score", "final_score", "jsd", "seconds", "rte",
           "retain_accuracy", "forget_accuracy", "unseen_accuracy", "mia"] + AXES


class ExportError(RuntimeError):
    """One line for the user: unknown or empty experiment, unreachable store."""


def _clean(value):
    if isinstance(value, float):
        return None if math.isnan(value) else value
    return value


def open_study(experiment: str, tracking_uri: str | None):
    """A Tracker on the experiment's most recent study (parent run), and that run's params and tags."""
    from study.tracking import Tracker, TrackingError

    uri = tracking_uri or f"sqlite:///{(Path('results') / experiment / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ExportError(f"tracking store {uri} does not exist (give --tracking-uri)")
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        names = [e.name for e in client.search_experiments()] if found is None else []
    except Exception as exc:  # MLflow raises many kinds for an unreachable store
        raise ExportError(f"tracking store {uri}: cannot be read ({str(exc).splitlines()[0]})") from None
    if found is None:
        raise ExportError(f"unknown experiment {experiment!r} in {uri}; experiments there: {', '.join(names) or 'none'}")
    try:
        tracker = Tracker(uri, experiment)
    except TrackingError as exc:
        raise ExportError(str(exc)) from None
    parents = [r for r in client.search_runs([found.experiment_id], "tags.study_key != ''", order_by=["start_time DESC"])
               if "mlflow.parentRunId" not in r.data.tags]
    if not parents:
        raise ExportError(f"experiment {experiment!r} in {uri} holds no study (no parent run)")
    parent = next((p for p in parents if p.info.status == "FINISHED"), parents[0])
    tracker.parent_id = parent.info.run_id
    if tracker.children().empty:
        raise ExportError(f"experiment {experiment!r}: the study {parent.info.run_id} has no finished trials yet")
    return tracker, parent.data.params, parent.data.tags


def _metrics(group: pd.DataFrame) -> dict:
    per_seed = {}
    for _, r in group.sort_values("tags.seed").iterrows():
        per_seed[int(r["tags.seed"])] = {k: _clean(float(r[k])) for k in METRICS if k in r and pd.notna(r[k])}
    mean = {k: _clean(float(pd.to_numeric(group[k]).mean())) for k in METRICS if k in group}
    return {"mean": mean, "per_seed": per_seed}


def export_config(method: str, group: pd.DataFrame, params: dict, tags: dict, info: StudyInfo) -> dict:
    settings = json.loads(params["trial_settings"])
    first = group.iloc[0]
    return {
        "kind": EXPORT_KIND,
        "version": 1,
        "method": method,
        "hparams": hparams_of(first) if method not in ("original", "retrain") else {},
        "data": {"dataset": params["dataset"], "data_dir": _none(params.get("data_dir")),
                 "forget_count": _int_or_none(params.get("forget_count")), "fingerprint": tags.get("data_fingerprint")},
        "model": settings["model"],
        "train": settings["train"],
        "runner": settings["runner"],
        "threads": int(float(settings.get("cpus_per_trial", 1))),
        "models_dir": settings["models_dir"],
        "seeds": sorted(int(s) for s in group["tags.seed"]),
        "selection": info.selection,
        "selection_protocol": info.protocol,
        "objective": info.objective,
        "stage": first["tags.stage"],
        "experiment": info.experiment,
        "git_commit": tags.get("git_commit", "unknown"),
        "metrics": _metrics(group),
    }


def _none(value):
    return None if value in (None, "None", "") else value


def _int_or_none(value):
    value = _none(value)
    return None if value is None else int(value)


def export(experiment: str, tracking_uri: str | None, out: Path) -> list[Path]:
    tracker, params, tags = open_study(experiment, tracking_uri)
    info = StudyInfo.from_params(params)
    summary, front, written = build_report(tracker, info, out)
    rows = method_rows(tracker.children(), info.tune_baselines)
    for _, r in summary.iterrows():
        group = rows[(rows["method"] == r["method"]) & (rows["setting"] == r["setting"])]
        path = out / f"{r['method']}.yaml"
        path.write_text(yaml.safe_dump(export_config(r["method"], group, params, tags, info), sort_keys=False))
        written.append(path)
    confirm = rows[rows["method"] == "gli"]
    pareto = []
    for _, t in front.iterrows():
        setting = t["tags.trial_key"].split("/")[-1]
        group = confirm[confirm["setting"] == setting]
        entry = {"hparams": hparams_of(t), "search_trial": {k: _clean(float(t[k])) for k in AXES if k in t}}
        if len(group):
            entry["confirmed"] = _metrics(group)
        pareto.append(entry)
    path = out / "gli-pareto.yaml"
    path.write_text(yaml.safe_dump({"kind": EXPORT_KIND + "-pareto", "experiment": info.experiment,
                                    "selection_protocol": info.protocol, "objective": info.objective,
                                    "settings": pareto}, sort_keys=False))
    return written + [path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.export", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="the MLflow experiment (the study's --experiment-name)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///./results/<experiment>/mlflow.db)")
    parser.add_argument("--out", required=True, help="folder for the YAML files, tables and plots")
    args = parser.parse_args(argv)
    try:
        written = export(args.experiment, args.tracking_uri, Path(args.out).resolve())
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    yamls = sorted(p.name for p in written if p.suffix == ".yaml")
    print(f"wrote {len(written)} files to {Path(args.out).resolve()}: {', '.join(yamls)} and the tables and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
