"""Pareto front over (accuracy up, forgetting score down), for GLI's trials against the baselines.

Only finished trials with finite objectives can enter the front: failed, pruned or
diverged trials are dropped before any comparison.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trainables.records import SEL_ACCURACY, SEL_FORGETTING


def pareto_mask(accuracy, forgetting) -> np.ndarray:
    """True where no other point has accuracy >= and forgetting <=, with one of them strict.

    Non-finite points are never on the front and never dominate; identical points are
    all kept (neither dominates the other).
    """
    acc = np.asarray(accuracy, dtype=float)
    fs = np.asarray(forgetting, dtype=float)
    finite = np.isfinite(acc) & np.isfinite(fs)
    mask = finite.copy()
    idx = np.flatnonzero(finite)
    for i in idx:
        others = idx[idx != i]
        dominated = (acc[others] >= acc[i]) & (fs[others] <= fs[i]) & ((acc[others] > acc[i]) | (fs[others] < fs[i]))
        mask[i] = not dominated.any()
    return mask


def pareto_front(df: pd.DataFrame, accuracy: str = SEL_ACCURACY, forgetting: str = SEL_FORGETTING) -> pd.DataFrame:
    """The front's rows, sorted by forgetting score (ascending) for plotting as a line."""
    if len(df) == 0:
        return df
    mask = pareto_mask(df[accuracy], df[forgetting])
    return df[mask].sort_values([forgetting, accuracy], ascending=[True, False])
