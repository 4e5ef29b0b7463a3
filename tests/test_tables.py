"""Tables from known inputs: means, confidence intervals, setting choice, formats, paper columns."""

import math

import pandas as pd
import pytest

import numpy as np

from analysis.tables import RANGES, bounded_interval, bounded_intervals, summarise, to_csv, to_latex, to_markdown


def _expit(z):
    return 1 / (1 + math.exp(-z))


def _logit(p):
    return math.log(p / (1 - p))


def _rows():
    return pd.DataFrame([
        {"method": "gli", "setting": "a", "seed": 0, "accuracy": 0.90, "forgetting_score": 0.02, "final_score": 0.93,
         "sel_final_score": 0.90, "seconds": 2.0},
        {"method": "gli", "setting": "a", "seed": 1, "accuracy": 0.80, "forgetting_score": 0.04, "final_score": 0.86,
         "sel_final_score": 0.92, "seconds": 4.0},
        {"method": "gli", "setting": "b", "seed": 0, "accuracy": 0.99, "forgetting_score": 0.00, "final_score": 0.995,
         "sel_final_score": 0.80, "seconds": 1.0},
        {"method": "original", "setting": "x", "seed": 0, "accuracy": 0.95, "forgetting_score": 0.10, "final_score": 0.875,
         "sel_final_score": 0.85, "seconds": 3.0},
    ])


def test_mean_std_and_setting_chosen_on_selection():
    table = summarise(_rows())
    assert table["method"].tolist() == ["original", "gli"]  # the paper's order
    gli = table.set_index("method").loc["gli"]
    # setting "a" has the better mean selection final score (0.91 > 0.80), although "b" reports better
    assert gli["setting"] == "a" and gli["seeds"] == 2
    assert gli["accuracy"] == pytest.approx(0.85) and gli["accuracy_std"] == pytest.approx(math.sqrt(0.005))
    assert gli["seconds"] == pytest.approx(3.0)
    assert table.set_index("method").loc["original", "accuracy_std"] == 0.0  # one seed: no spread


def test_markdown_and_latex_formatting():
    table = summarise(_rows())
    md = to_markdown(table, "digits; selection on held-out halves", "digits")
    assert md.startswith("**digits; selection on held-out halves**")
    defined = md.strip().splitlines()[-1]  # every column defined once, under the table
    for header in ("acc:", "FS: forgetting score", "final: final score", "seconds:"):
        assert defined.count(header) == 1, header
    # accuracy 0.90 and 0.80: two values have no skewness, so the t interval itself, t(0.975, 1) = 12.7062,
    # 0.85 +- 12.7062 * 0.05, clipped to [0, 1]
    lo, hi = 0.85 - 12.7062047 * 0.05, 1.0
    assert f"| gli | 2 | 0.8500 [{lo:.4f}, {hi:.4f}] |" in md
    assert "over 2 seeds (a t interval with Hall's skewness correction" in md and "| original | 1 | 0.9500 |" in md
    tex = to_latex(table, "mufac; protocol=paper: the notebooks", "digits")
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert f"0.8500 [{lo:.4f}, {hi:.4f}]" in tex and "protocol=paper" in tex
    gli = table.set_index("method").loc["gli"]
    assert (gli["accuracy_mean"], gli["accuracy_lo"], gli["accuracy_hi"]) == pytest.approx((0.85, lo, hi))


def test_paper_numbers_alongside_on_mufac():
    table = summarise(_rows())
    md = to_markdown(table, "t", "mufac")
    assert "paper acc" in md and "| gli | 2 |" in md and "0.5685" in md and "0.7538" in md
    csv = to_csv(table, "mufac").set_index("method")
    assert csv.loc["original", "paper_final"] == 0.5839
    assert "paper_top2" not in to_csv(table, "mucac")  # the paper gives no top-2 on the multi-label set
    assert "paper" not in to_markdown(table, "t", "digits")


def test_intervals_never_leave_the_metric_s_range():
    """Spreads that a plain t interval carries past a bound (an accuracy of 0.34 +- 0.40 and a forgetting score of
    0.019 +- 0.037 were reported so) stay inside [0, 1] and [0, 0.5]; over many random small samples too."""
    from scipy import stats

    for values, (low, high) in (([0.02, 0.05, 0.95], RANGES["accuracy"]), ([0.001, 0.002, 0.06], RANGES["forgetting_score"]),
                                ([0.999, 1.0, 0.7], RANGES["final_score"])):
        t_lo, t_hi = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
        assert t_lo < low or t_hi > high  # what the tables used to print
        lo, hi = bounded_interval(values, low, high)
        assert low <= lo < np.mean(values) < hi <= high
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 12):
        for _ in range(200):
            x = np.clip(rng.normal(rng.choice([0.01, 0.5, 0.99]), 0.1, n), 0, 1)
            lo, hi = bounded_interval(x, 0.0, 1.0)
            assert 0.0 <= lo <= hi <= 1.0
    assert all(math.isnan(b) for b in bounded_interval([0.5], 0, 1))  # one value: no interval
    assert all(math.isnan(b) for b in bounded_interval([2.0, 2.0, 2.0], 0, math.inf))  # equal, inside: no interval
    seconds = bounded_interval([1.0, 2.0, 8.0], *RANGES["seconds"])
    assert 0 <= seconds[0] < seconds[1]  # a time's interval: never negative
    assert bounded_interval([0.0, 0.0, 0.0], 0, 1) == pytest.approx((0.0, 1 - 0.025 ** (1 / 3)))  # all at a bound
    assert bounded_interval([1.0, 1.0], 0, 1) == pytest.approx((0.025 ** 0.5, 1.0))
    assert bounded_interval([0.5, 0.5, 0.5], 0, 1, floor=0.01 ** 2) == pytest.approx(
        (0.5 - 4.3027 * 0.01 / math.sqrt(3), 0.5 + 4.3027 * 0.01 / math.sqrt(3)), abs=1e-4)


SHAPES = {  # per-replicate values of a metric in [0, 1], as the study's metrics come
    "accuracy": lambda rng, n: rng.beta(90, 10, n),  # interior, mean 0.9
    "accuracy at 1": lambda rng, n: rng.binomial(50, 0.98, n) / 50,  # a small test set: often exactly 1
    "at 0": lambda rng, n: np.where(rng.random(n) < 0.6, 0.0, rng.uniform(0, 0.1, n)),  # a score that is often 0
    "at 1": lambda rng, n: np.where(rng.random(n) < 0.6, 1.0, rng.uniform(0.9, 1.0, n)),
    "folded": lambda rng, n: np.abs(rng.normal(0.01, 0.015, n)),  # a forgetting score |M - 0.5| near 0
}


def _coverage(shape, n, sims=5000, plain=False):
    """The share of `sims` samples of n values whose interval covers the shape's true mean. The accuracy on a test
    set of 50 comes with what a study records beside it: its binomial standard error."""
    from scipy import stats

    truth = SHAPES[shape](np.random.default_rng(8), 1_000_000).mean()
    x = SHAPES[shape](np.random.default_rng(7), (sims, n))
    floor = (x * (1 - x) / 50).mean(axis=1) if shape == "accuracy at 1" else 0.0
    if plain:
        half = stats.t.ppf(0.975, n - 1) * x.std(axis=1, ddof=1) / math.sqrt(n)
        lo, hi = x.mean(axis=1) - half, x.mean(axis=1) + half
    else:
        lo, hi = bounded_intervals(x, 0.0, 1.0, floor=floor)
    return float(np.mean((lo <= truth) & (truth <= hi)))


def test_summary_intervals_cover_at_every_number_of_replicates():
    """5,000 simulated tables per shape and size: the intervals cover the true mean at least 94% of the time at 3, 5,
    9, 10 and 20 replicates (one method throughout: no jump where one hands over to another), values at 0 and 1
    included. The forgetting score's folded shape falls short at 3 and 5 replicates (0.938 and 0.939; the guide
    says so) and is held to 0.93 there. Without the skewness correction a plain t interval covers values piled at
    a bound about 90%."""
    for shape in SHAPES:
        for n in (3, 5, 9, 10, 20):
            assert _coverage(shape, n) >= (0.93 if shape == "folded" and n <= 5 else 0.94), (shape, n)
    assert _coverage("at 0", 5, plain=True) < 0.92

def test_the_preamble_names_only_the_study_s_own_authors_default_baselines():
    from analysis.report import StudyInfo

    base = {"experiment_name": "x", "dataset": "digits", "protocol": "paper", "objective": "pareto",
            "paper_baselines": True, "results_dir": "/tmp/x"}
    some = StudyInfo.from_params({**base, "baselines": ["finetune", "ssd"]}).baselines_note
    assert "ssd (which the notebooks do not have)" in some and "salun" not in some
    assert "(which the notebooks do not have)" not in StudyInfo.from_params({**base, "baselines": ["finetune"]}).baselines_note
    every = StudyInfo.from_params(base).baselines_note  # a study recorded before the list: all of the registry's
    assert all(m in every for m in ("salun", "random_labels", "l1_sparse", "ssd"))
