"""Run until settled: stand-in studies with known effects settle as they should, and repeated looks over many
comparisons keep the error rate."""

from __future__ import annotations

import gc
import math

import numpy as np
import pandas as pd

from analysis.sequential import (all_settled, complete_replicates, look_sizes, missing_note, planned_looks, run_looks,
                                 settle, verdicts_markdown)
from analysis.tables import compare


def test_the_looks_are_planned_up_to_the_most_replicates():
    assert planned_looks(3, 20, 1) == 18 and look_sizes(3, 20, 1)[:3] == [3, 4, 5] and look_sizes(3, 20, 1)[-1] == 20
    assert look_sizes(3, 20, 4) == [3, 7, 11, 15, 19, 20] and planned_looks(3, 3, 1) == 1


def _stand_in(rng, effects: dict[str, tuple[float, float]], replicates: int) -> pd.DataFrame:
    """A study's rows: GLI, the retrained model and baselines whose final score is GLI's minus a known effect plus
    noise of a known spread (`effects`: baseline -> (effect, spread)), per replicate."""
    rows = []
    for seed in range(1, replicates + 1):
        gli = 0.8 + rng.normal(0, 0.01)
        rows += [{"method": "gli", "setting": "g", "tags.seed": str(seed), "final_score": gli,
                  "forgetting_score": 0.02, "sel_final_score": 0.8},
                 {"method": "retrain", "setting": "r", "tags.seed": str(seed), "final_score": 0.8,
                  "forgetting_score": 0.02, "sel_final_score": 0.8}]
        for name, (effect, spread) in effects.items():
            rows.append({"method": name, "setting": "b", "tags.seed": str(seed),
                         "final_score": gli - effect + rng.normal(0, spread), "forgetting_score": 0.02,
                         "sel_final_score": 0.8})
    return pd.DataFrame(rows)


def test_a_stand_in_study_settles_each_comparison_as_its_known_effect_says():
    """A baseline 0.05 worse than GLI (noise 0.01) settles `better` for GLI in the rounds expected; one equal to GLI
    within 0.002 settles `equivalent` once its interval fits in +-0.01; a noisy null one (noise 0.05) stays
    `undecided` at 20 replicates, with no false verdict."""
    rows = _stand_in(np.random.default_rng(0), {"worse_b": (0.05, 0.01), "equal_b": (0.0, 0.002),
                                                "noisy_b": (0.0, 0.05)}, 20)
    verdicts = settle(rows, look_sizes(3, 20, 1)).set_index(["baseline", "metric"])
    better = verdicts.loc[("worse_b", "final_score")]
    # expected: Holm tests the first of the 6 comparisons at 0.05 / 18 looks / 6; its half-width
    # t(1 - 0.05 / 216, n - 1) * 0.01 / sqrt(n) first falls below the effect 0.05 at n = 5 (0.047), the third look
    assert better["verdict"] == "better" and better["replicates"] <= 6 and better["lo"] > 0
    equal = verdicts.loc[("equal_b", "final_score")]
    # the interval's half-width is about t * 0.002 * sqrt(2) / sqrt(n) at a Bonferroni-Holm level: inside 0.01 early
    assert equal["verdict"] == "equivalent" and equal["replicates"] <= 8 and -0.01 < equal["lo"] <= equal["hi"] < 0.01
    noisy = verdicts.loc[("noisy_b", "final_score")]
    assert noisy["verdict"] == "undecided" and noisy["replicates"] == 20 and noisy["look"] == 18
    # every row names its look schedule and the settings it compared (the stand-in's rows carry no params)
    assert set(verdicts["schedule"]) == {",".join(map(str, range(3, 21)))}
    assert set(verdicts["gli_setting"]) == {"{}"} and set(verdicts["baseline_setting"]) == {"{}"}
    assert not all_settled(verdicts.reset_index())
    text = verdicts_markdown(verdicts.reset_index(), "t")
    assert "| worse_b | final_score | GLI is better |" in text and "undecided: no claim either way" in text
    # a resumed study replays the same looks: the same verdicts
    assert settle(rows, look_sizes(3, 20, 1)).equals(verdicts.reset_index())


def test_repeated_looks_over_many_comparisons_keep_the_error_rate(monkeypatch):
    """400 simulated null studies of 8 comparisons each, looked at after 3, 4, ..., 12 replicates: the share of
    studies with any `better` or `worse` verdict stays within 5% (plus three standard errors of the
    simulation). Without spending the rate over the looks, the same studies would claim far more often."""
    monkeypatch.setattr(gc, "collect", lambda *args: 0)  # statsmodels collects garbage on every adjustment
    rng = np.random.default_rng(3)
    sizes = look_sizes(3, 12, 1)
    names = [(f"b{i}", "final_score") for i in range(8)]

    def false_claims(alpha_per_look: bool) -> float:
        claims = 0
        for _ in range(400):
            diffs = rng.normal(0.0, 0.03, (8, 12))

            def table_at(size: int, share: float) -> pd.DataFrame:
                tested = compare([d[:size] for d in diffs], [1] * 8, share if alpha_per_look else 0.05, margin=0.0)
                return tested.assign(baseline=[b for b, _ in names], metric=[m for _, m in names])

            verdicts = run_looks(table_at, sizes, 12)
            claims += verdicts["verdict"].isin(["better", "worse"]).any()
        return claims / 400

    spent = false_claims(True)
    assert spent <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)
    naive = false_claims(False)  # Holm within each look but the full 5% at every look
    assert naive > 0.1


def test_no_rows_no_verdicts():
    assert settle(pd.DataFrame(), [3, 4]).empty and not all_settled(pd.DataFrame(columns=["verdict"]))


def test_a_look_counts_complete_replicates_only():
    """A study killed mid-round leaves replicate 5 with GLI's run but no baseline's. The look at 5 replicates must
    not be made on the 4 pairs there are (it settled `better` on them before this rule); resumed and finished,
    the study gives the verdicts of an uninterrupted run."""
    rows = _stand_in(np.random.default_rng(2), {"worse_b": (0.05, 0.015)}, 5)
    cut = rows[~((rows["tags.seed"] == "5") & (rows["method"] == "worse_b"))]
    assert complete_replicates(cut) == [1, 2, 3, 4] and complete_replicates(rows) == [1, 2, 3, 4, 5]
    assert missing_note(cut, 5) == "replicate 5 has no ended run of worse_b (b)" and missing_note(rows, 5) is None
    sizes = [3, 4, 5]
    interrupted = settle(cut, sizes)
    assert (interrupted["look"] <= 2).all()  # no look at 5 on an incomplete replicate
    assert (interrupted["replicates"] == [sizes[n - 1] for n in interrupted["look"]]).all()  # a look: its size
    assert interrupted.equals(settle(rows[pd.to_numeric(rows["tags.seed"]) <= 4], sizes))
    finished = settle(rows, sizes)
    assert finished["replicates"].isin(sizes).all()
    # a replicate past a gap is never read: replicate 6 complete, 5 partial or not begun
    more = _stand_in(np.random.default_rng(2), {"worse_b": (0.05, 0.015)}, 6)
    seeds = pd.to_numeric(more["tags.seed"])
    for gap in (more[~((seeds == 5) & (more["method"] == "worse_b"))], more[seeds != 5]):
        assert complete_replicates(gap) == [1, 2, 3, 4]
        assert settle(gap, [3, 4, 5, 6]).equals(settle(more[seeds <= 4], [3, 4, 5, 6]))


def test_a_failed_run_neither_stalls_the_looks_nor_shrinks_a_comparison():
    """A run that failed (a diverged trial fails again when rerun) ends its replicate's wait: the looks go on. GLI's
    setting that failed on a counted replicate is not the one chosen; a baseline that failed on one leaves its
    comparisons `undecided` at every look that counts that replicate, never read on the pairs that remain (there,
    with little noise, they would settle), and the other comparisons go on."""
    rows = _stand_in(np.random.default_rng(2), {"worse_b": (0.05, 0.002), "other_b": (0.05, 0.015)}, 5)
    second = rows[rows["method"] == "gli"].assign(setting="g2", sel_final_score=0.9, final_score=0.1)
    ended = pd.concat([rows, second], ignore_index=True).assign(status="FINISHED")
    seed = pd.to_numeric(ended["tags.seed"])
    failing = ((seed == 2) & (ended["setting"] == "g2")) | ((seed == 2) & (ended["method"] == "worse_b"))
    ended.loc[failing, "status"] = "FAILED"
    finished = ended[ended["status"] == "FINISHED"]
    assert complete_replicates(ended) == [1, 2, 3, 4, 5] and missing_note(ended, 5) is None
    verdicts = settle(finished, [3, 4, 5], ended=ended)
    assert len(verdicts) == 4 and verdicts["look"].max() == 3  # the looks were not stalled
    # g2's better selection score would make it GLI's row; it failed on replicate 2, so g it is (final ~0.8)
    assert (verdicts["gli_setting"] == "{}").all() and (verdicts["mean_diff"].abs() < 0.5).all()
    worse = verdicts[verdicts["baseline"] == "worse_b"]
    assert (worse["verdict"] == "undecided").all() and (worse["missing"] == 1).all() and (worse["look"] == 3).all()
    other = verdicts[verdicts["baseline"] == "other_b"]
    assert (other["missing"] == 0).all() and (other["replicates"] == other["look"].map({1: 3, 2: 4, 3: 5})).all()
    assert "a compared run failed on 1 of the look's replicates" in verdicts_markdown(verdicts, "t")
