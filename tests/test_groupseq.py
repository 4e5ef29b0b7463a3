"""Group-sequential boundaries against published values, and the design's error rate by simulation: each
protection, removed, lets the rate climb past 5%."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.groupseq import boundaries, crossing_probabilities, nominal_levels, obf_spending, sign_bounds
from analysis.sequential import decide_rows, default_looks, median_intervals, verdict
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


def test_the_sign_test_boundaries_are_exact():
    """One look: the classical sign test (n = 20 at 5%: at most 5 or at least 15 positive, 2 P(S <= 5) = 0.041).
    Two looks at 8 and 12 differences: every one of the 2^12 sign sequences enumerated, the chance of a first
    crossing by each look stays within the spending function's; the widest boundaries that do."""
    import itertools

    from scipy.stats import binom

    assert sign_bounds([20], 20, 0.05) == [5] and 2 * binom.cdf(5, 20, 0.5) <= 0.05 < 2 * binom.cdf(6, 20, 0.5)
    assert sign_bounds([5, 10, 15, 20], 20, 0.05 / 12) == [-1, -1, 0, 3]  # none can reject at 5 or 10
    counts, alpha = [8, 12], 0.2
    b = sign_bounds(counts, 12, alpha)
    spent = obf_spending([8 / 12, 1.0], alpha)
    first = [0, 0]
    for signs in itertools.product((0, 1), repeat=12):
        for k, n in enumerate(counts):
            s = sum(signs[:n])
            if b[k] >= 0 and (s <= b[k] or s >= n - b[k]):
                first[k] += 1
                break
    chance = np.cumsum(first) / 2 ** 12
    assert (chance <= spent + 1e-12).all() and chance[-1] > 0
    with pytest.raises(ValueError):
        sign_bounds([10, 5], 10, 0.05)


def test_equal_differences_give_no_verdict_by_themselves():
    """Two equal differences of 0.003, or three zeros: too few replicates for any look's level, so no interval
    and no verdict, whatever their spread."""
    for diff in ([0.003, 0.003], [0.0, 0.0, 0.0]):
        bound = sign_bounds([len(diff)], len(diff), 0.05 / 12)[0]
        _, lo, hi = median_intervals([np.array(diff)], bound)
        assert bound == -1 and math.isnan(lo[0]) and verdict(lo[0], hi[0], +1) == "undecided"


def _look(diffs):
    return [{"baseline": f"b{i}", "metric": "final_score", "favour": 1, "gli_setting": "", "baseline_setting": "",
             "diff": np.asarray(d, dtype=float)} for i, d in enumerate(diffs)]


def test_a_comparison_keeps_the_verdict_of_the_look_that_settled_it():
    rng = np.random.default_rng(0)
    big = 0.05 + rng.normal(0, 0.01, 20)  # every difference positive: settles at the first look that can (15)
    null = rng.normal(0, 0.03, 20)  # never settles
    sizes = [5, 10, 15, 20]
    rows = decide_rows([_look([big[:n], null[:n]]) for n in sizes], sizes, 0.01)
    bounds = sign_bounds(sizes, 20, 0.025)  # 5% / 2 comparisons
    look = rows[0]["look"]
    assert rows[0]["verdict"] == "better" and bounds[look - 2] == -1 and rows[0]["lo"] > 0  # the first look able to
    n, b = sizes[look - 1], bounds[look - 1]
    assert (rows[0]["lo"], rows[0]["hi"]) == (np.sort(big[:n])[b], np.sort(big[:n])[n - 1 - b])
    assert rows[1]["verdict"] == "undecided" and rows[1]["look"] == 4 and rows[1]["replicates"] == 20
    assert rows[1]["bound"] == bounds[-1]
    ordered = np.sort(null)
    assert (rows[1]["lo"], rows[1]["hi"]) == (ordered[rows[1]["bound"]], ordered[19 - rows[1]["bound"]])
    assert rows[1]["median_diff"] == pytest.approx(np.median(null)) and rows[1]["mean_diff"] == pytest.approx(null.mean())
    assert rows[1]["reachable_margin"] > 0


NULL = [0.0] * 12
BOUND = 0.05 + 2 * math.sqrt(0.05 * 0.95 / 2000)  # 5% and two standard errors of 2,000 simulated studies


@pytest.mark.parametrize("shape", ["normal", "skewed", "outliers"])
def test_the_family_wise_error_holds_over_looks_and_comparisons(shape):
    """2,000 simulated studies of 12 comparisons with no true difference, looked at after 5, 10, 15 and 20
    replicates, GLI choosing among 3 candidates of equal quality on 2 selection replicates of its own: a false
    `better` or `worse` in at most 5% of the studies, for normal, skewed (exponential, skewness 2, in each
    difference itself) and outlier-contaminated (10% of replicates with ten times the spread) differences."""
    assert study_error(2000, NULL, shape=shape, candidates=3, seed=1) <= BOUND


def test_the_equivalence_path_keeps_the_error_rate():
    """True differences at the margin itself (an `equivalent` verdict is false there) beside null ones and
    real ones, with little noise: no more than 5% of the studies make any false claim."""
    truth = [0.01] * 4 + [-0.01] * 4 + [0.0] * 2 + [0.03, -0.03]
    assert study_error(2000, truth, sd=0.01, margin=0.01, seed=2) <= BOUND


def test_each_protection_removed_lets_the_error_rate_climb():
    """The same studies without each protection: with a look at every replicate from 5 to 20, each at the full
    rate (no spending) against the rate spent over them; GLI's setting picked among 8 candidates at each look on
    the very replicates it is reported on, against on selection replicates of its own."""
    looks = tuple(range(5, 21))
    assert study_error(1000, NULL, sizes=looks, seed=3) <= BOUND < 0.08 < study_error(1000, NULL, sizes=looks,
                                                                                      spend=False, seed=3)
    assert study_error(1000, NULL, candidates=8, select="selection", seed=4) <= BOUND < 0.06 < study_error(
        1000, NULL, candidates=8, select="reported", seed=4)
