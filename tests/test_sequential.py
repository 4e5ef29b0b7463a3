"""Run until settled: stand-in studies with known effects settle as they should, and repeated looks over many
comparisons keep the error rate."""

from __future__ import annotations


import math

import numpy as np
import pandas as pd
import pytest

from analysis.groupseq import sign_bounds
from analysis.sequential import (all_settled, complete_replicates, differences, look_sizes, missing_note, settle,
                                 verdicts_markdown)


def test_the_round_size_schedule_is_kept_for_studies_that_set_it():
    assert look_sizes(3, 20, 4) == [3, 7, 11, 15, 19, 20] and look_sizes(3, 3, 1) == [3]


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
    """A baseline 0.05 worse than GLI (noise 0.01) settles `better` for GLI early; one equal to GLI within 0.002
    settles `equivalent` once its interval fits in +-0.01; a noisy null one (noise 0.05) stays `undecided` at 20
    replicates, with no false verdict. Only the primary metric is tested; the others are estimates."""
    rows = _stand_in(np.random.default_rng(0), {"worse_b": (0.05, 0.01), "equal_b": (0.0, 0.002),
                                                "noisy_b": (0.0, 0.05)}, 20)
    sizes = [5, 10, 15, 20]
    verdicts = settle(rows, sizes).set_index(["baseline", "metric"])
    better = verdicts.loc[("worse_b", "final_score")]
    # 5% / 3 comparisons spent over 4 looks with exact sign-test boundaries: none at 5 replicates can reject; every
    # difference positive settles it at the first look that can
    first = next(k for k, b in enumerate(sign_bounds([5, 10, 15, 20], 20, 0.05 / 3)) if b >= 0)
    assert better["verdict"] == "better" and better["replicates"] == [5, 10, 15, 20][first] and better["lo"] > 0
    assert better["tested"]
    equal = verdicts.loc[("equal_b", "final_score")]
    assert equal["verdict"] == "equivalent" and equal["replicates"] <= 15 and -0.01 < equal["lo"] <= equal["hi"] < 0.01
    noisy = verdicts.loc[("noisy_b", "final_score")]
    assert noisy["verdict"] == "undecided" and noisy["replicates"] == 20 and noisy["look"] == 4
    assert noisy["reachable_margin"] > 0.01  # this spread could not have settled equivalence at +-0.01
    secondary = verdicts[verdicts.index.get_level_values("metric") != "final_score"]
    assert len(secondary) == 3 and (secondary["verdict"] == "not tested").all() and not secondary["tested"].any()
    # every row names its look schedule, its primary metric and the settings it compared
    assert set(verdicts["schedule"]) == {"5,10,15,20"} and set(verdicts["primary"]) == {"final_score"}
    assert set(verdicts["gli_setting"]) == {"{}"} and set(verdicts["baseline_setting"]) == {"{}"}
    assert not all_settled(verdicts.reset_index())
    text = verdicts_markdown(verdicts.reset_index(), "t")
    assert f"| worse_b | GLI is better | {[5, 10, 15, 20][first]} |" in text and "undecided: no claim either way" in text
    assert "estimates, not tested" in text
    # a resumed study replays the same looks: the same verdicts
    assert settle(rows, sizes).equals(verdicts.reset_index())


def test_looking_early_costs_width_at_the_last_look():
    """The same rows read with one look at 20 replicates and with a look at every replicate from 5: the
    many-look interval at the last look is at least as wide as the one look's (the price of looking early)."""
    rows = _stand_in(np.random.default_rng(5), {"noisy_b": (0.0, 0.05)}, 20)
    one = settle(rows, [20]).set_index("metric").loc["final_score"]
    many = settle(rows, list(range(5, 21))).set_index("metric").loc["final_score"]
    assert many["bound"] <= one["bound"] and many["hi"] - many["lo"] >= one["hi"] - one["lo"]


def test_no_rows_no_verdicts():
    assert settle(pd.DataFrame(), [3, 4]).empty and not all_settled(pd.DataFrame(columns=["verdict"]))
    assert differences(pd.DataFrame(), ["final_score"]) == []


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
    verdicts = verdicts[verdicts["tested"]]
    # g2's better selection score would make it GLI's row; it failed on replicate 2, so g it is (final ~0.8)
    assert (verdicts["gli_setting"] == "{}").all() and (verdicts["mean_diff"].abs() < 0.5).all()
    worse = verdicts[verdicts["baseline"] == "worse_b"]
    assert (worse["verdict"] == "undecided").all() and (worse["missing"] == 1).all() and (worse["look"] == 3).all()
    other = verdicts[verdicts["baseline"] == "other_b"]
    assert (other["missing"] == 0).all() and (other["replicates"] == other["look"].map({1: 3, 2: 4, 3: 5})).all()
    assert "a compared run failed on 1 of the look's replicates" in verdicts_markdown(verdicts, "t")


def test_differences_are_taken_replicate_by_replicate():
    rows = pd.DataFrame([{"method": m, "setting": "s", "tags.seed": str(seed), "final_score": f, "forgetting_score": fs}
                         for m, seed, f, fs in [("gli", 1, 0.90, 0.02), ("gli", 2, 0.92, 0.03), ("gli", 3, 0.91, 0.02),
                                                ("scrub", 1, 0.80, 0.08), ("scrub", 2, 0.81, 0.07), ("scrub", 3, 0.79, 0.09),
                                                ("unsir", 1, 0.91, 0.02), ("unsir", 2, 0.90, 0.04), ("unsir", 3, 0.93, 0.01)]])
    table = settle(rows, [3]).set_index(["baseline", "metric"])
    scrub = table.loc[("scrub", "final_score")]
    assert scrub["mean_diff"] == pytest.approx(0.11) and scrub["median_diff"] == pytest.approx(0.11)
    assert scrub["replicates"] == 3
    # three positive differences of three: 2 (1/2)^3 = 0.25, far above 5% / 2: no verdict on three replicates
    assert scrub["verdict"] == "undecided" and math.isnan(scrub["lo"])
    assert table.loc[("unsir", "final_score"), "verdict"] == "undecided"  # differences of -0.01, +0.02, -0.02
    fs = table.loc[("scrub", "forgetting_score")]
    assert fs["verdict"] == "not tested" and fs["median_diff"] == pytest.approx(-0.06)
    # on twelve replicates with every difference positive the sign test settles it: 2 (1/2)^12 < 0.025
    many = pd.concat([rows.assign(**{"tags.seed": rows["tags.seed"].astype(int) + 3 * k}) for k in range(4)])
    table = settle(many, [12]).set_index(["baseline", "metric"])
    assert table.loc[("scrub", "final_score"), "verdict"] == "better"


def test_privacy_is_compared_as_the_distance_to_the_same_replicate_s_retrained_model():
    """A baseline whose advantage is lower than GLI's is not better for it: what counts is how far each is from
    the retrained model of the same replicate (here GLI sits on it, the baseline 0.05 to 0.07 below it)."""
    retrain = [0.06, 0.02, 0.04, 0.05, 0.03]
    rows = pd.DataFrame(
        [{"method": "retrain", "setting": "r", "tags.seed": s, "final_score": 0.9, "forgetting_score": abs(a),
          "mia_advantage": a} for s, a in enumerate(retrain, start=1)]
        + [{"method": "gli", "setting": "g", "tags.seed": s, "final_score": 0.9, "forgetting_score": abs(a),
            "mia_advantage": a + d} for s, (a, d) in enumerate(zip(retrain, [0.001, -0.002, 0.0, 0.002, -0.001]), start=1)]
        + [{"method": "neggrad", "setting": "n", "tags.seed": s, "final_score": 0.9, "forgetting_score": abs(a - d),
            "mia_advantage": a - d} for s, (a, d) in enumerate(zip(retrain, [0.05, 0.06, 0.07, 0.06, 0.05]), start=1)])
    table = settle(rows, [5], alpha=0.1, primary="privacy_gap").set_index(["baseline", "metric"])
    gap = table.loc[("neggrad", "privacy_gap")]
    assert gap["mean_diff"] == pytest.approx(np.mean([0.001, 0.002, 0.0, 0.002, 0.001]) - 0.058)
    # five of five replicates closer to retraining: 2 (1/2)^5 = 0.0625 <= 10% (one comparison: the whole rate)
    assert gap["verdict"] == "better" and gap["hi"] < 0 and gap["tested"]  # GLI is closer to retraining
    # the folded score says the opposite: neggrad's FS is lower, it "forgets better"
    assert table.loc[("neggrad", "forgetting_score"), "mean_diff"] > 0
    # the final score, equal everywhere: zero spread, no verdict and no interval
    final = table.loc[("neggrad", "final_score")]
    assert final["verdict"] == "not tested" and math.isnan(final["lo"])


def test_the_markdown_says_which_direction_favours_gli():
    rows = _stand_in(np.random.default_rng(1), {"b": (0.0, 0.01)}, 3)
    text = verdicts_markdown(settle(rows, [3]), "t")
    assert "forgetting score: negative favours GLI" in text and "final score: GLI's minus the baseline's; positive" in text
