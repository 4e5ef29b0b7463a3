"""Tables from known inputs: means, sample standard deviations, setting choice, formats, paper columns."""

import math

import pandas as pd
import pytest

from analysis.tables import summarise, to_csv, to_latex, to_markdown


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
    assert "| gli | 2 | 0.8500 ± 0.0707 | 0.0300 ± 0.0141 | 0.8950 ± 0.0495 | 3.0 ± 1.4 |" in md
    tex = to_latex(table, "mufac; protocol=paper: the notebooks", "digits")
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"0.8500 $\pm$ 0.0707" in tex and "protocol=paper" in tex


def test_paper_numbers_alongside_on_mufac():
    table = summarise(_rows())
    md = to_markdown(table, "t", "mufac")
    assert "paper acc" in md and "| gli | 2 |" in md and "0.5685" in md and "0.7538" in md
    csv = to_csv(table, "mufac").set_index("method")
    assert csv.loc["original", "paper_final"] == 0.5839
    assert "paper_top2" not in to_csv(table, "mucac")  # the paper gives no top-2 on the multi-label set
    assert "paper" not in to_markdown(table, "t", "digits")
