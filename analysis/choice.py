"""Which settings a study chooses: one source for confirm, the report, the audits and export.

A search's chosen settings come from its finished trials as MLflow holds them (the study's
record), never from a second copy: `search_front` gives the Pareto front (or the best trial
under a scalar objective), best selection final score first, and `candidates` a method's k
best settings (its front first, then its best others) that the selection replicates choose
among. `ranked_settings` orders settings by mean selection final score over replicates: the
selection replicates' choice.
Ties are broken by the trial key or the setting's digest, so every reader gets the same order.
"""

from __future__ import annotations

import math

import pandas as pd

from trainables.records import SEL_FINAL, TRIAL_KEY_COL, setting_of

from .pareto import pareto_front


def _score(value) -> float:
    value = pd.to_numeric(value, errors="coerce")
    return float(value) if pd.notna(value) and math.isfinite(value) else -math.inf


def search_front(trials: pd.DataFrame, objective: str, limit: int) -> pd.DataFrame:
    """The settings a search chose, from its finished trials' rows (`Tracker.children`): its Pareto front over
    (selection accuracy, selection forgetting score) under the `pareto` objective, its best selection final
    score otherwise; best selection final score first, ties by trial key; one row per setting; at most
    `limit`."""
    if len(trials) == 0:
        return trials
    if objective == "final_score":  # a trial with no finite score is never chosen (the front drops them too)
        front = trials[[math.isfinite(_score(v)) for v in trials[SEL_FINAL]]]
    else:
        front = pareto_front(trials)
    order = sorted(range(len(front)), key=lambda i: (-_score(front[SEL_FINAL].iloc[i]),
                                                     str(front[TRIAL_KEY_COL].iloc[i])))
    front = front.iloc[order]
    front = front[~front[TRIAL_KEY_COL].map(setting_of).duplicated()]
    return front.head(1 if objective == "final_score" else limit)


def ranked_settings(rows: pd.DataFrame, setting_col: str = "setting") -> list[str]:
    """One method's settings by mean selection final score over its rows, best first; ties by the setting's
    digest (a setting with no finite score comes last)."""
    if not len(rows) or setting_col not in rows:
        return []
    if SEL_FINAL not in rows:
        return sorted(rows[setting_col].astype(str).unique())
    means = pd.to_numeric(rows[SEL_FINAL], errors="coerce").groupby(rows[setting_col]).mean()
    return sorted(means.index, key=lambda s: (-_score(means[s]), str(s)))


def candidates(trials: pd.DataFrame, objective: str, k: int) -> pd.DataFrame:
    """A search's `k` candidates, the same number for every method: its front (`search_front`: Pareto-optimal
    settings under `pareto`, the best trial under `final_score`), best selection final score first, then its
    other settings by selection final score (ties by trial key) until there are k; one row per setting, trials
    with no finite score never."""
    if len(trials) == 0 or k < 1:
        return trials.iloc[:0] if len(trials) else trials
    front = search_front(trials, objective, k)
    scored = trials[[math.isfinite(_score(v)) for v in trials[SEL_FINAL]]]
    order = sorted(range(len(scored)), key=lambda i: (-_score(scored[SEL_FINAL].iloc[i]),
                                                      str(scored[TRIAL_KEY_COL].iloc[i])))
    out = pd.concat([front, scored.iloc[order]])
    out = out[~out[TRIAL_KEY_COL].map(setting_of).duplicated()]
    return out.head(k)
