"""The tuning card: per searched method, its space, its budget, the trials it finished, its best-so-far
curve and the setting it chose (flagged where a value lies within 5% of its range's end, on the range's
scale: a verdict against a setting on the edge of its space says as much about the space as the method);
and the selection table: each method's candidates and their scores on the selection replicates.

Read from each method's Optuna study (the search's own log, in trial-number order) and from
the table's rows (the setting confirmed). Under `fair` every method is searched with the same
budget, and this card is what shows it; baselines at their paper settings have no card.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from trainables.metrics import final_score
from trainables.records import (BASELINE_STAGE, METHOD_COL, SEARCH_STAGE, SEED_COL, SEL_FINAL, SELECT_STAGE, STAGE_COL,
                                TRIAL_KEY_COL, hparams_of, setting_of)

CURVE_COLUMNS = ["method", "trial", "state", "sel_final_score", "best_so_far", "params"]
CARD_COLUMNS = ["method", "budget", "finished", "failed", "best_sel_final_score", "space", "chosen", "edges"]
SELECTION_COLUMNS = ["method", "setting", "hparams", "search_sel_final_score", "selection_replicates",
                     "selection_sel_final_score", "chosen"]
EDGE = 0.05  # a chosen value within this share of its range's end (on the range's scale) is flagged


def edges(chosen: dict, space: dict) -> list[str]:
    """The chosen values within `EDGE` of an end of their range, on the range's scale (log where log-uniform):
    `name (low end)` or `name (high end)`."""
    out = []
    for name, value in chosen.items():
        bounds = space.get(name)
        if not bounds or not isinstance(value, (int, float)):
            continue
        low, high, log = float(bounds[0]), float(bounds[1]), "log" in bounds[2:]
        if high <= low or (log and (low <= 0 or value <= 0)):
            continue
        at = ((math.log(value) - math.log(low)) / (math.log(high) - math.log(low)) if log
              else (value - low) / (high - low))
        if at <= EDGE:
            out.append(f"{name} (low end)")
        elif at >= 1 - EDGE:
            out.append(f"{name} (high end)")
    return out


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
    for trial in study.trials:  # the widest each bound was drawn with (a bound that follows another varies)
        for name, dist in trial.distributions.items():
            if not hasattr(dist, "low"):
                continue
            if name not in space:
                space[name] = [dist.low, dist.high] + (["log"] if getattr(dist, "log", False) else [])
            else:
                space[name][0], space[name][1] = min(space[name][0], dist.low), max(space[name][1], dist.high)
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
        chosen = chosen_setting(method, rows, summary, space)
        cards.append({"method": method, "budget": budget, "finished": len(finished),
                      "failed": int((finished["state"] == "FAIL").sum()),
                      "best_sel_final_score": float(best.iloc[-1]) if len(best) else None,
                      "space": json.dumps(space, sort_keys=True), "chosen": json.dumps(chosen, sort_keys=True),
                      "edges": "; ".join(edges(chosen, space))})
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
             "| method | budget | finished (failed) | best selection final score | chosen setting | on an edge | space |",
             "|---|---|---|---|---|---|---|"]
    for _, c in cards.iterrows():
        best = "-" if c["best_sel_final_score"] is None or pd.isna(c["best_sel_final_score"]) \
            else f"{c['best_sel_final_score']:.4f}"
        budget = "-" if c["budget"] is None or pd.isna(c["budget"]) else int(c["budget"])
        edge = c.get("edges") if isinstance(c.get("edges"), str) and c.get("edges") else "-"
        lines.append(f"| {c['method']} | {budget} | {c['finished']} ({c['failed']}) | {best} | "
                     f"{_short(c['chosen'])} | {edge} | {_short(c['space'])} |")
    if (cards.get("edges", pd.Series(dtype=str)).fillna("") != "").any():
        lines += ["", f"On an edge: a chosen value within {EDGE:.0%} of its range's end (on the range's scale); a "
                  "verdict against that method says as much about its space as about the method."]
    return "\n".join(lines) + "\n"


def selection_table(children: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Each method's candidates on the selection replicates (`SELECTION_COLUMNS`): the setting (digest and
    hyper-parameters), its score in the search (selection final score on the tuning replicate), its mean
    selection final score over the selection replicates it finished, and whether it is the reported setting."""
    if not len(children) or STAGE_COL not in children:
        return pd.DataFrame(columns=SELECTION_COLUMNS)
    ran = children[children[STAGE_COL] == SELECT_STAGE]
    if not len(ran):
        return pd.DataFrame(columns=SELECTION_COLUMNS)
    searched = children[children[STAGE_COL].isin([SEARCH_STAGE, BASELINE_STAGE])]
    search_score = {(m, setting_of(k)): v for m, k, v in zip(searched[METHOD_COL], searched[TRIAL_KEY_COL],
                                                              pd.to_numeric(searched[SEL_FINAL], errors="coerce"))}
    reported = set(zip(rows["method"], rows["setting"])) if len(rows) else set()
    out = []
    for (method, setting), group in ran.groupby([ran[METHOD_COL], ran[TRIAL_KEY_COL].map(setting_of)], sort=False):
        scores = pd.to_numeric(group[SEL_FINAL], errors="coerce")
        out.append({"method": method, "setting": setting,
                    "hparams": json.dumps(hparams_of(group.iloc[0]), sort_keys=True),
                    "search_sel_final_score": search_score.get((method, setting)),
                    "selection_replicates": int(group[SEED_COL].nunique()),
                    "selection_sel_final_score": float(scores.mean()) if scores.notna().any() else None,
                    "chosen": (method, setting) in reported})
    table = pd.DataFrame(out, columns=SELECTION_COLUMNS)
    return table.sort_values(["method", "selection_sel_final_score"], ascending=[True, False]).reset_index(drop=True)


def selection_markdown(table: pd.DataFrame) -> str:
    if not len(table):
        return ""
    lines = ["## Selection", "",
             "Each method's candidates from its search, rerun on the selection replicates (their own splits, never "
             "reported); the one with the best mean selection final score there is the setting every reported "
             "replicate runs, the same rule for every method.", "",
             "| method | candidate | search score | selection replicates | selection score | chosen |",
             "|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        search = "-" if pd.isna(r["search_sel_final_score"]) else f"{r['search_sel_final_score']:.4f}"
        sel = "-" if pd.isna(r["selection_sel_final_score"]) else f"{r['selection_sel_final_score']:.4f}"
        lines.append(f"| {r['method']} | {_short(r['hparams'])} | {search} | {int(r['selection_replicates'])} | {sel} | "
                     f"{'yes' if r['chosen'] else ''} |")
    return "\n".join(lines) + "\n"
