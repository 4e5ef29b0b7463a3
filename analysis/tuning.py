"""The tuning card: per searched method, its space, its budget, the trials it finished, its best-so-far
curve and the setting it chose.

Read from each method's Optuna study (the search's own log, in trial-number order) and from
the table's rows (the setting confirmed). Under `fair` every method is searched with the same
budget, and this card is what shows it; baselines at their paper settings have no card.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from trainables.metrics import final_score
from trainables.records import hparams_of

CURVE_COLUMNS = ["method", "trial", "state", "sel_final_score", "best_so_far", "params"]
CARD_COLUMNS = ["method", "budget", "finished", "failed", "best_sel_final_score", "space", "chosen"]


def trial_score(trial) -> float | None:
    """A finished trial's selection final score: recorded by the study as a user attribute, or computed from
    its objectives (accuracy and forgetting score, or the final score itself)."""
    score = trial.user_attrs.get("final_score")
    if score is None and trial.values:
        score = final_score(trial.values[0], trial.values[1]) if len(trial.values) == 2 else trial.values[0]
    return float(score) if isinstance(score, (int, float)) and math.isfinite(score) else None


def space_of(study) -> dict[str, list]:
    """The searched space as its trials drew it: name -> [low, high] (with "log" when log-uniform)."""
    space: dict[str, list] = {}
    for trial in study.trials:
        for name, dist in trial.distributions.items():
            if name not in space and hasattr(dist, "low"):
                space[name] = [dist.low, dist.high] + (["log"] if getattr(dist, "log", False) else [])
    return space


def curve(method: str, study) -> pd.DataFrame:
    """Every trial of one search in trial-number order, its score and the best so far (finished trials)."""
    rows, best = [], -math.inf
    for trial in sorted(study.trials, key=lambda t: t.number):
        score = trial_score(trial) if trial.state.name == "COMPLETE" else None
        if score is not None:
            best = max(best, score)
        rows.append({"method": method, "trial": trial.number, "state": trial.state.name, "sel_final_score": score,
                     "best_so_far": best if math.isfinite(best) else None,
                     "params": json.dumps(trial.params, sort_keys=True)})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def chosen_setting(method: str, rows: pd.DataFrame, summary: pd.DataFrame, names) -> dict:
    """The searched hyper-parameters of the setting the table reports for `method` (its confirmed setting)."""
    row = summary[summary["method"] == method] if len(summary) else summary
    if not len(row) or "setting" not in row:
        return {}
    match = rows[(rows["method"] == method) & (rows["setting"] == row["setting"].iloc[0])]
    if not len(match):
        return {}
    hparams = hparams_of(match.iloc[0])
    return {k: hparams[k] for k in names if k in hparams}


def tuning_tables(studies: dict, budget: int | None, rows: pd.DataFrame,
                  summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cards, curves) for the searched methods: `studies` maps a method to its Optuna study."""
    cards, curves = [], []
    for method, study in studies.items():
        trials = curve(method, study)
        curves.append(trials)
        space = space_of(study)
        finished = trials[trials["state"].isin(["COMPLETE", "FAIL"])]
        best = trials["best_so_far"].dropna()
        cards.append({"method": method, "budget": budget, "finished": len(finished),
                      "failed": int((finished["state"] == "FAIL").sum()),
                      "best_sel_final_score": float(best.iloc[-1]) if len(best) else None,
                      "space": json.dumps(space, sort_keys=True),
                      "chosen": json.dumps(chosen_setting(method, rows, summary, space), sort_keys=True)})
    return (pd.DataFrame(cards, columns=CARD_COLUMNS),
            pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS))


def _short(text: str) -> str:
    """A JSON mapping with its numbers at 4 significant digits, for the report (tuning.csv keeps them whole)."""
    def short(v):
        if isinstance(v, list):
            return [short(x) for x in v]
        return float(f"{v:.4g}") if isinstance(v, float) else v
    return ", ".join(f"{k}={short(v)}" for k, v in json.loads(text).items())


def tuning_markdown(cards: pd.DataFrame) -> str:
    if not len(cards):
        return ""
    lines = ["## Tuning", "",
             "Each searched method's Optuna search on the selection split: its space, its budget (the same for every "
             "method), the trials it finished and the setting the table reports (tuning.csv has every trial; "
             "tuning.png the best-so-far curves).", "",
             "| method | budget | finished (failed) | best selection final score | chosen setting | space |",
             "|---|---|---|---|---|---|"]
    for _, c in cards.iterrows():
        best = "-" if c["best_sel_final_score"] is None or pd.isna(c["best_sel_final_score"]) \
            else f"{c['best_sel_final_score']:.4f}"
        budget = "-" if c["budget"] is None or pd.isna(c["budget"]) else int(c["budget"])
        lines.append(f"| {c['method']} | {budget} | {c['finished']} ({c['failed']}) | {best} | "
                     f"{_short(c['chosen'])} | {_short(c['space'])} |")
    return "\n".join(lines) + "\n"
