"""`python -m analysis.export --experiment NAME --out DIR`: best configurations, tables and figures from MLflow.

Writes one `<method>.yaml` per table row with the configuration the study chose (its
hyper-parameters, data set and data fingerprint, model, base training, evaluation, seeds,
protocol, git commit and the metrics it reached), `gli-pareto.yaml` with
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

from trainables.data import OPTIONAL_SETTINGS
from trainables.records import (ACCEL_TAG, BANK_TAG, BASE_STAGE, DATA_FINGERPRINT_TAG, EXPORT_KIND, GIT_COMMIT_TAG,
                                HARDWARE_TAG, REFERENCE_ROWS, SEED_COL, SETTINGS_PARAM, STAGE_COL, STUDIED, STUDY_KEY_TAG,
                                TRIAL_KEY_COL,
                                hparams_of, setting_of, write_atomic)

from .report import AXES, StudyInfo, build_report, method_rows
from .results import ResultsError, open_study, supersede

PARETO_FILE = "gli-pareto.yaml"  # names the study its folder's export belongs to

METRICS = ["accuracy", "top2_accuracy", "forgetting_score", "final_score", "jsd", "seconds", "rte",
           "retain_accuracy", "forget_accuracy", "unseen_accuracy", "mia", "mia_advantage", "mia_auc", "fs_se",
           "accuracy_se",
           "sel_fs_se", "sel_accuracy_se"] + AXES


def _clean(value):
    if isinstance(value, float):
        return None if math.isnan(value) else value
    return value


def _metrics(group: pd.DataFrame) -> dict:
    per_seed = {}
    for _, r in group.sort_values(SEED_COL).iterrows():
        per_seed[int(r[SEED_COL])] = {k: _clean(float(r[k])) for k in METRICS if k in r and pd.notna(r[k])}
    mean = {k: _clean(float(pd.to_numeric(group[k]).mean())) for k in METRICS if k in group}
    return {"mean": mean, "per_seed": per_seed}


def _hardware(group: pd.DataFrame, tags: dict) -> dict:
    """What the exported numbers were computed on: the trials' own record, else the launcher's."""
    for value in (group[f"tags.{HARDWARE_TAG}"] if f"tags.{HARDWARE_TAG}" in group else []):
        if isinstance(value, str) and value:
            return json.loads(value)
    return json.loads(tags[HARDWARE_TAG]) if tags.get(HARDWARE_TAG) else {}


def _accel(group: pd.DataFrame, settings: dict, hardware: dict) -> dict | None:
    """The GPU settings in effect where the trials ran (their own record); for studies written before trials
    recorded it, the study's settings, every lever off where no GPU ran."""
    for value in (group[f"tags.{ACCEL_TAG}"] if f"tags.{ACCEL_TAG}" in group else []):
        if isinstance(value, str) and value:
            return json.loads(value)
    asked = settings.get("accel")
    if asked and hardware.get("cuda_device", "none") == "none":
        return {**asked, "precision": "fp32", "cuda_graphs": False, "async_attack": False, "cudnn_benchmark": False}
    return asked


def models_location(models_dir: str, results_dir: str | None, storage_path: str | None) -> dict:
    """Where the base-model checkpoints are, with no path of the machine that ran the study: relative to
    the results folder (the default) or to the storage path (`study.reproduce` resolves both)."""
    path = Path(models_dir)
    for under, root in (("results", results_dir), ("storage", storage_path)):
        if root and "://" not in root and path.is_relative_to(Path(root)):
            return {"under": under, "path": path.relative_to(Path(root)).as_posix()}
    if storage_path and "://" in storage_path:
        return {"under": "storage", "path": models_dir}
    return {"under": "elsewhere", "path": path.name}


def bank_keys(children: pd.DataFrame, seeds) -> list[str]:
    """The bank entries (checkpoint names) of the base models of `seeds`, as their base runs' tags name them: the
    checkpoints a paper releases to let others start from exactly these models."""
    col = f"tags.{BANK_TAG}"
    if len(children) == 0 or col not in children:
        return []
    base = children[(children[STAGE_COL] == BASE_STAGE) & children[SEED_COL].astype(str).isin({str(s) for s in seeds})]
    return sorted(set(base[col].dropna()))


def export_config(method: str, group: pd.DataFrame, params: dict, tags: dict, info: StudyInfo,
                  bank: list[str] | None = None) -> dict:
    settings = params[SETTINGS_PARAM]
    hardware = _hardware(group, tags)
    first = group.iloc[0]
    return {
        "kind": EXPORT_KIND,
        "version": 3,
        "study_key": info.study_key or tags.get(STUDY_KEY_TAG),
        "method": method,
        "hparams": hparams_of(first) if method not in REFERENCE_ROWS else {},
        "data": {"dataset": params["dataset"], "data_dir": params.get("data_dir"),
                 **{k: params.get(k) for k in OPTIONAL_SETTINGS}, "fingerprint": tags.get(DATA_FINGERPRINT_TAG)},
        "model": settings["model"],
        "train": settings["train"],
        "evaluation": settings["evaluation"],
        "threads": settings["threads"],
        "accel": _accel(group, settings, hardware),
        "models": models_location(settings["models_dir"], params.get("results_dir"), params.get("storage_path")),
        "seeds": sorted(int(s) for s in group[SEED_COL]),
        "bank_keys": bank or [],  # the base-model checkpoints behind these seeds (`python -m study.bank list`)
        "hardware": hardware,
        "protocol": info.protocol,
        "protocol_label": info.label,
        "objective": info.objective,
        "stage": first[STAGE_COL],
        "experiment": info.experiment_name,
        "git_commit": tags.get(GIT_COMMIT_TAG, "unknown"),
        "metrics": _metrics(group),
    }


def export(experiment: str, tracking_uri: str | None, out: Path, study_key: str | None = None) -> list[Path]:
    study, params, tags = open_study(experiment, tracking_uri, study_key)
    info = StudyInfo.from_params(params)
    key = info.study_key or tags.get(STUDY_KEY_TAG)
    if (moved := supersede(out, key, PARETO_FILE)) is not None:  # another study's export: set aside, not mixed
        print(f"[export] {out} held study {moved}'s export: moved to superseded/{moved}/", file=sys.stderr)
    summary, front, written = build_report(study, info, out)
    children = study.children()
    rows = method_rows(children, info.paper_baselines)
    for _, r in summary.iterrows():
        group = rows[(rows["method"] == r["method"]) & (rows["setting"] == r["setting"])]
        path = out / f"{r['method']}.yaml"
        config = export_config(r["method"], group, params, tags, info, bank_keys(children, group[SEED_COL]))
        write_atomic(path, yaml.safe_dump(config, sort_keys=False))
        written.append(path)
    confirm = rows[rows["method"] == STUDIED]
    pareto = []
    for _, t in front.iterrows():
        setting = setting_of(t[TRIAL_KEY_COL])
        group = confirm[confirm["setting"] == setting]
        entry = {"hparams": hparams_of(t), "search_trial": {k: _clean(float(t[k])) for k in AXES if k in t}}
        if len(group):
            entry["confirmed"] = _metrics(group)
        pareto.append(entry)
    path = out / PARETO_FILE
    write_atomic(path, yaml.safe_dump({"kind": EXPORT_KIND + "-pareto", "experiment": info.experiment_name,
                                       "study_key": key,
                                    "protocol": info.protocol, "protocol_label": info.label, "objective": info.objective,
                                    "settings": pareto}, sort_keys=False))
    return written + [path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.export", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="the MLflow experiment (the study's --experiment-name)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///./results/<experiment>/mlflow.db)")
    parser.add_argument("--out", required=True, help="folder for the YAML files, tables and plots")
    parser.add_argument("--study", help="the study key (default: the experiment's most recent study, a finished "
                        "one first; `[study] ... study <key>` names it)")
    args = parser.parse_args(argv)
    try:
        written = export(args.experiment, args.tracking_uri, Path(args.out).resolve(), args.study)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    yamls = sorted(p.name for p in written if p.suffix == ".yaml")
    print(f"wrote {len(written)} files to {Path(args.out).resolve()}: {', '.join(yamls)} and the tables and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
