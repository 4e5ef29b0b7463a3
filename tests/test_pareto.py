"""Pareto selection on hand-made points: domination, ties, duplicates, non-finite values."""

import math

import numpy as np
import pandas as pd

from analysis.pareto import pareto_front, pareto_mask


def test_dominated_points_drop_out():
    acc = [0.9, 0.8, 0.95, 0.85]
    fs = [0.10, 0.05, 0.20, 0.12]  # (0.85, 0.12) is dominated by (0.9, 0.10)
    assert pareto_mask(acc, fs).tolist() == [True, True, True, False]


def test_ties_and_duplicates():
    # equal accuracy, lower FS wins; identical points both stay
    assert pareto_mask([0.9, 0.9], [0.1, 0.2]).tolist() == [True, False]
    assert pareto_mask([0.9, 0.9, 0.8], [0.1, 0.1, 0.3]).tolist() == [True, True, False]


def test_non_finite_never_on_front_and_never_dominates():
    acc = [0.9, math.nan, 0.99, 0.7]
    fs = [0.1, 0.0, math.inf, 0.2]
    assert pareto_mask(acc, fs).tolist() == [True, False, False, False]
    assert not pareto_mask([math.nan], [0.1]).any()


def test_front_frame_sorted_for_plotting():
    df = pd.DataFrame({"sel_accuracy": [0.9, 0.8, 0.95, 0.85], "sel_forgetting_score": [0.10, 0.05, 0.20, 0.12]})
    front = pareto_front(df)
    assert front["sel_forgetting_score"].tolist() == [0.05, 0.10, 0.20]
    assert np.all(np.diff(front["sel_accuracy"]) > 0)
