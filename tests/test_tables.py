"""Tables from known inputs: means, confidence intervals, setting choice, formats, paper columns, paired differences."""

import math

import pandas as pd
import pytest

import numpy as np

from analysis.tables import interval, paired, paired_markdown, summarise, to_csv, to_latex, to_markdown


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
    # ± is a 95% t interval's half-width: t(0.975, 1) = 12.706 times std / sqrt(2)
    assert "| gli | 2 | 0.8500 ± 0.6353 | 0.0300 ± 0.1271 | 0.8950 ± 0.4447 | 3.0 ± 12.7 |" in md
    assert "over 2 seeds (a t interval)" in md and "| original | 1 | 0.9500 |" in md  # one seed: no interval
    tex = to_latex(table, "mufac; protocol=paper: the notebooks", "digits")
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"0.8500 $\pm$ 0.6353" in tex and "protocol=paper" in tex


def test_paper_numbers_alongside_on_mufac():
    table = summarise(_rows())
    md = to_markdown(table, "t", "mufac")
    assert "paper acc" in md and "| gli | 2 |" in md and "0.5685" in md and "0.7538" in md
    csv = to_csv(table, "mufac").set_index("method")
    assert csv.loc["original", "paper_final"] == 0.5839
    assert "paper_top2" not in to_csv(table, "mucac")  # the paper gives no top-2 on the multi-label set
    assert "paper" not in to_markdown(table, "t", "digits")


def test_interval_t_then_bootstrap():
    three = [0.90, 0.92, 0.97]
    assert interval(three) == pytest.approx(4.302653 * np.std(three, ddof=1) / math.sqrt(3), rel=1e-5)
    assert math.isnan(interval([0.5]))
    many = np.random.default_rng(0).normal(0.9, 0.02, 12)
    boot = interval(many)  # 12 seeds: a percentile bootstrap of the mean, near 1.96 standard errors
    assert 0.5 * 1.96 * many.std(ddof=1) / math.sqrt(12) < boot < 1.5 * 1.96 * many.std(ddof=1) / math.sqrt(12)


def test_paired_differences_per_seed():
    rows = pd.DataFrame([{"method": m, "setting": "s", "tags.seed": str(seed), "final_score": f, "forgetting_score": fs}
                         for m, seed, f, fs in [("gli", 0, 0.90, 0.02), ("gli", 1, 0.92, 0.03), ("gli", 2, 0.91, 0.02),
                                                ("scrub", 0, 0.80, 0.08), ("scrub", 1, 0.81, 0.07), ("scrub", 2, 0.79, 0.09),
                                                ("unsir", 0, 0.91, 0.02), ("unsir", 1, 0.90, 0.04), ("unsir", 2, 0.93, 0.01)]])
    table = paired(rows, summarise(rows)).set_index("versus")
    assert table.loc["scrub", "final_score_diff"] == pytest.approx(0.11) and table.loc["scrub", "final_score_excludes_0"]
    assert not table.loc["unsir", "final_score_excludes_0"]  # differences of -0.01, +0.02, -0.02
    assert "| scrub | 3 | 0.1100 ±" in paired_markdown(table.reset_index(), "t")


def test_paired_table_says_which_direction_favours_gli():
    rows = _rows().assign(**{"tags.seed": lambda d: d["seed"]})
    rows = pd.concat([rows, rows[rows["method"] == "original"].assign(method="finetune")])
    text = paired_markdown(paired(rows, summarise(rows)), "t")
    assert "forgetting score: GLI's minus the baseline's; negative favours GLI" in text
    assert "final score: GLI's minus the baseline's; positive favours GLI" in text
