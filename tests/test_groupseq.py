"""Group-sequential boundaries against published values, and the design's error rate by simulation: each
protection, removed, lets the rate climb past 5%."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.groupseq import boundaries, crossing_probabilities, nominal_levels, obf_spending
from analysis.sequential import decide_rows, default_looks, interval, verdict
from analysis.simulate import study_error


def test_boundaries_match_published_lan_demets_obrien_fleming_values():
    """Two-sided 5%, symmetric (2.5% a side): four equally spaced looks give 4.3326, 2.9631, 2.3590, 2.0141
    (ld98 / R's ldbounds and gsDesign); looks at 0.10, 0.33 and 1 give 6.9913, 3.7308, 1.9605 with cumulative
    exit probabilities 2.7227e-12, 1.9097e-04 and 0.05 (ldbounds' `bounds(t, iuse=c(1, 1), alpha=c(0.025,
    0.025))`)."""
    assert boundaries([1, 2, 3, 4], 0.05) == pytest.approx([4.3326, 2.9631, 2.3590, 2.0141], abs=1e-4)
    uneven = boundaries([10, 33, 100], 0.05)  # ld98 integrates on a coarser grid: its second value is 1.3e-4 off
    assert uneven == pytest.approx([6.9913, 3.7308, 1.9605], abs=2e-4)
    exits = np.cumsum(crossing_probabilities(uneven, [0.10, 0.33, 1.0]))
    assert exits == pytest.approx([2.7227e-12, 1.9097e-04, 0.05], rel=1e-3)
    assert obf_spending([1.0], 0.01)[0] == pytest.approx(0.01)  # the whole rate by the last look
    one = nominal_levels([7], 0.05 / 12)  # one look: Bonferroni's level itself
    assert one[0] == pytest.approx(0.05 / 12)
    with pytest.raises(ValueError):
        boundaries([5, 5, 10], 0.05)


def test_default_looks_are_four_equally_spaced():
    assert default_looks(20) == [5, 10, 15, 20] and default_looks(12) == [3, 6, 9, 12] and default_looks(3) == [2, 3]


def test_zero_spread_gives_no_verdict_by_itself():
    """Two equal differences of 0.003, or three zeros, have no spread: no interval, no verdict. With the runs'
    own measurement error as the floor of the spread, the interval is as wide as that error allows."""
    for diff in ([0.003, 0.003], [0.0, 0.0, 0.0]):
        mean, lo, hi = interval(np.array(diff), 0.0, 0.01)
        assert math.isnan(lo) and verdict(lo, hi, +1) == "undecided"
    mean, lo, hi = interval(np.array([0.003, 0.003]), 0.01 ** 2, 0.05)
    assert lo < 0 < hi and hi - lo == pytest.approx(2 * 12.706 * 0.01 / math.sqrt(2), rel=1e-3)


def _look(diffs, floor=0.0):
    return [{"baseline": f"b{i}", "metric": "final_score", "favour": 1, "floor": floor, "gli_setting": "",
             "baseline_setting": "", "diff": np.asarray(d, dtype=float)} for i, d in enumerate(diffs)]


def test_a_comparison_keeps_the_verdict_of_the_look_that_settled_it():
    rng = np.random.default_rng(0)
    big = 0.05 + rng.normal(0, 0.01, 20)  # settles early
    null = rng.normal(0, 0.03, 20)  # never settles
    sizes = [5, 10, 15, 20]
    rows = decide_rows([_look([big[:n], null[:n]]) for n in sizes], sizes, 0.01)
    assert rows[0]["verdict"] == "better" and rows[0]["look"] < 4 and rows[0]["lo"] > 0
    assert rows[1]["verdict"] == "undecided" and rows[1]["look"] == 4 and rows[1]["replicates"] == 20
    # each interval is at its look's nominal level for 5% / 2 comparisons
    assert rows[1]["level"] == pytest.approx(1 - nominal_levels(sizes, 0.025)[-1])
    # the reachable margin: |mean| plus the last look's half-width, from the spread seen
    assert rows[1]["reachable_margin"] == pytest.approx(max(abs(rows[1]["lo"]), abs(rows[1]["hi"])))


NULL = [0.0] * 12
BOUND = 0.05 + 2 * math.sqrt(0.05 * 0.95 / 2000)  # 5% and two standard errors of 2,000 simulated studies


@pytest.mark.parametrize("shape", ["normal", "skewed", "outliers"])
def test_the_family_wise_error_holds_over_looks_and_comparisons(shape):
    """2,000 simulated studies of 12 null comparisons (GLI's value shared by all, as in a study), looked at after
    5, 10, 15 and 20 replicates, GLI choosing among 3 candidates of equal quality on 2 selection replicates of its
    own: a false `better` or `worse` in at most 5% of the studies, for normal, skewed (centred exponential) and
    outlier-contaminated (10% of replicates with ten times the spread) differences."""
    assert study_error(2000, NULL, shape=shape, candidates=3, seed=1) <= BOUND


def test_the_equivalence_path_keeps_the_error_rate():
    """True differences at the margin itself (an `equivalent` verdict is false there) beside null ones and
    real ones, with little noise: no more than 5% of the studies make any false claim."""
    truth = [0.01] * 4 + [-0.01] * 4 + [0.0] * 2 + [0.03, -0.03]
    assert study_error(2000, truth, sd=0.01, margin=0.01, seed=2) <= BOUND


def test_each_protection_removed_lets_the_error_rate_climb():
    """The same studies without each protection: every look at the full 5% (no spending), or GLI's setting picked
    at each look on the very replicates it is reported on (5 candidates): each exceeds 5% clearly."""
    assert study_error(1000, NULL, spend=False, seed=3) > 0.08
    assert study_error(1000, NULL, candidates=5, select="reported", seed=4) > 0.07
