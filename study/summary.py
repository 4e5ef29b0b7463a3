"""The study's summary from MLflow: per-method means over seeds, the GLI Pareto front, the CSVs.

Everything is read back from the finished child runs, so a resumed study summarises
the trials from before and after the interruption alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.pareto import pareto_front

REPORT_COLUMNS = ["accuracy", "top2_accuracy", "forgetting_score", "final_score", "jsd", "seconds", "rte"]
AXES = ["sel_accuracy", "sel_forgetting_score", "sel_final_score"]


def hparams_of(row: pd.Series) -> dict:
    out = {}
    for key, value in row.items():
        if key.startswith("params.") and isinstance(value, str):
            try:
                out[key[7:]] = json.loads(value)
            except json.JSONDecodeError:
                out[key[7:]] = value
    return out


def gli_front(trials: pd.DataFrame, objective: str, limit: int) -> pd.DataFrame:
    """The settings to confirm: the Pareto front (pareto) or the best trial (final_score), best first."""
    if len(trials) == 0:
        return trials
    if objective == "final_score":
        return trials.sort_values("sel_final_score", ascending=False).head(1)
    front = pareto_front(trials)
    return front.sort_values("sel_final_score", ascending=False).head(limit)


def method_rows(children: pd.DataFrame, tuned: bool) -> pd.DataFrame:
    """Rows that make the table: base models, baselines (paper settings or confirmed tuned ones), GLI confirmed."""
    if len(children) == 0:
        return children
    stage, method = children["tags.stage"], children["tags.method"]
    keep = (stage == "base") | ((stage == "baseline") & (not tuned)) | (stage == "confirm")
    rows = children[keep].copy()
    rows["setting"] = rows["tags.trial_key"].str.split("/").str[-1]
    return rows


def table(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds; GLI's row is its confirmed setting with the best
    mean selection final score (the others stay in gli_confirm.csv)."""
    if len(rows) == 0:
        return pd.DataFrame()
    out = []
    for method, group in rows.groupby("tags.method", sort=False):
        if group["setting"].nunique() > 1:  # several confirmed settings: choose on the selection halves
            best = group.groupby("setting")["sel_final_score"].mean().idxmax()
            group = group[group["setting"] == best]
        entry = {"method": method, "seeds": len(group)}
        for col in REPORT_COLUMNS + AXES:
            if col in group:
                values = group[col].astype(float)
                entry[col] = values.mean()
                entry[f"{col}_std"] = values.std(ddof=1) if len(values) > 1 else 0.0
        out.append(entry)
    order = {"original": 0, "retrain": 1, "gli": 99}
    return pd.DataFrame(out).sort_values("method", key=lambda s: s.map(lambda m: (order.get(m, 50), m))).reset_index(drop=True)


def format_summary(summary: pd.DataFrame, protocol: str) -> str:
    cols = [c for c in ["accuracy", "top2_accuracy", "forgetting_score", "final_score", "jsd", "seconds", "rte"]
            if c in summary]
    head = f"| method | seeds | " + " | ".join(cols) + " |"
    lines = [protocol, "", head, "|" + "---|" * (len(cols) + 2)]
    for _, r in summary.iterrows():
        cells = []
        for c in cols:
            mean, std = r.get(c), r.get(f"{c}_std", 0.0)
            if mean is None or (isinstance(mean, float) and np.isnan(mean)):
                cells.append("-")
            elif c == "seconds":
                cells.append(f"{mean:.1f} ± {std:.1f}")
            else:
                cells.append(f"{mean:.4f} ± {std:.4f}")
        lines.append(f"| {r['method']} | {int(r['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(children: pd.DataFrame, gli_trials: pd.DataFrame, front: pd.DataFrame, summary: pd.DataFrame,
                  protocol: str, out_dir: Path) -> list[Path]:
    """front.csv (GLI front plus baselines and base models on the same axes), gli_trials.csv,
    summary.csv and summary.md; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keep = ["tags.method", "tags.seed", "tags.trial_key"] + AXES
    params = [c for c in gli_trials.columns if c.startswith("params.")] if len(gli_trials) else []
    trials = gli_trials[[c for c in keep + params if c in gli_trials]].copy() if len(gli_trials) else pd.DataFrame()
    if len(trials):
        trials["on_front"] = trials["tags.trial_key"].isin(front["tags.trial_key"]) if len(front) else False
    points = []
    if len(front):
        f = front[[c for c in keep + params if c in front]].copy()
        f["kind"] = "gli_front"
        points.append(f)
    if len(summary):
        ref = summary[["method"] + [a for a in AXES if a in summary]].rename(columns={"method": "tags.method"})
        ref = ref[ref["tags.method"] != "gli"].copy()
        ref["kind"] = np.where(ref["tags.method"].isin(["original", "retrain"]), "reference", "baseline")
        points.append(ref)
    front_csv = pd.concat(points, ignore_index=True) if points else pd.DataFrame()
    paths = {"front.csv": front_csv, "gli_trials.csv": trials, "summary.csv": summary}
    written = []
    for name, df in paths.items():
        df.to_csv(out_dir / name, index=False)
        written.append(out_dir / name)
    (out_dir / "summary.md").write_text(format_summary(summary, protocol) + "\n")
    written.append(out_dir / "summary.md")
    return written
