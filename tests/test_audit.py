"""The challenge's forgetting quality (trainables/audit.py) on hand-made distributions, and against a
brute-force evaluation of the same definition that compares every score with every threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainables.audit import (BUFFER, DELTA, EPSILON_CAP, _torch_linspace, bucket_points, forget_quality,
                              logit_scaled_confidence)


def _brute_epsilon(pos: np.ndarray, neg: np.ndarray) -> float:
    """Every threshold of both decision-rule families, every model's score compared with each."""
    pr, nr = pos.max() - pos.min(), neg.max() - neg.min()
    largest, smallest = (pr, nr) if pr > nr else (nr, pr)
    with np.errstate(divide="ignore", invalid="ignore"):
        if smallest / largest < 0.01:
            return EPSILON_CAP
    peaky, other = (neg, pos) if pr >= nr else (pos, neg)  # the double family's 'positive' is the peakier one
    lo, hi = peaky.min() + smallest - BUFFER, peaky.max() + BUFFER
    right = np.linspace(lo, hi, num=int(np.ceil((hi - lo) * 100)))
    left = np.concatenate([np.linspace(r - smallest - BUFFER, r - smallest + BUFFER, num=400) for r in right])
    right = np.repeat(right, 400)
    inside = lambda c: ((left[None] <= c[:, None]) & (c[:, None] <= right[None])).mean(0, dtype=np.float32)  # noqa: E731
    tpr_d, fpr_d = inside(peaky), inside(other)
    both = np.concatenate([pos, neg])
    t = _torch_linspace(both.min(), both.max(), int(np.ceil((both.max() - both.min()) * 100)))
    tpr_s = (pos[:, None] >= t[None]).mean(0, dtype=np.float32)
    fpr_s = (neg[:, None] >= t[None]).mean(0, dtype=np.float32)
    tpr, fpr = np.concatenate([tpr_d, tpr_s]), np.concatenate([fpr_d, fpr_s])
    fnr, tnr = np.float32(1) - tpr, np.float32(1) - fpr
    eps = []
    for a, b, c, d in zip(tpr, fnr, fpr, tnr):
        if c + b == 0 and a + d == 2:
            eps.append(math.inf)
        elif c * b != 0:
            with np.errstate(invalid="ignore"):
                pair = [np.log(np.float32(1 - DELTA) - c) - np.log(b), np.log(np.float32(1 - DELTA) - b) - np.log(c)]
            if not np.isnan(pair).all():
                eps.append(max(float(np.nanmax(pair)), 0.0))
    return min(max(eps), EPSILON_CAP) if eps else math.nan


def _brute_quality(unlearned: np.ndarray, retrained: np.ndarray) -> float:
    k, n = retrained.shape
    positive = np.median(retrained, 0) > np.median(unlearned, 0)
    score = 0.0
    for i in range(n):
        pos, neg = (retrained[:, i], unlearned[:, i]) if positive[i] else (unlearned[:, i], retrained[:, i])
        e = _brute_epsilon(pos, neg)
        score += next((p for start, p in bucket_points(k) if e < start + 0.5), 0.0)
    return score / n


def test_identical_scores_forget_perfectly():
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 1, (16, 30))
    out = forget_quality(scores, scores.copy())
    assert out["forget_quality"] == 1.0 and np.all(out["epsilons"] == 0)


def test_separated_scores_get_the_lowest_bucket():
    rng = np.random.default_rng(1)
    retrained = rng.normal(0, 1, (16, 20))
    unlearned = retrained + 50.0  # every unlearned model far above every retrained one
    out = forget_quality(unlearned, retrained)
    assert out["forget_quality"] == 0.0  # epsilon past the last bucket (ceil(ln 15) = 3): no points
    assert np.all(out["epsilons"] > 3)


def test_two_models_and_constant_scores_do_not_crash():
    out = forget_quality(np.array([[1.0, 2.0], [1.5, 2.5]]), np.array([[1.2, 2.1], [0.9, 2.4]]))
    assert out["forget_quality"] == 0.0  # K = 2: ceil(ln 1) = 0, no bucket earns points
    constant = forget_quality(np.ones((8, 5)), np.ones((8, 5)))
    assert np.isfinite(constant["forget_quality"]) and constant["epsilons"].shape == (5,)
    peaky = forget_quality(np.ones((8, 3)), np.random.default_rng(2).normal(0, 1, (8, 3)))
    assert np.all(peaky["epsilons"] == EPSILON_CAP)  # one distribution far peakier than the other


@pytest.mark.parametrize("k,shift", [(8, 0.0), (16, 0.3), (32, 1.0), (64, 0.5)])
def test_equals_the_brute_force_evaluation(k, shift):
    rng = np.random.default_rng(k)
    n = 12 if k < 64 else 3  # the brute force compares k scores with ~160,000 thresholds per example
    retrained = rng.normal(0, 1, (k, n))
    unlearned = rng.normal(shift, rng.uniform(0.5, 1.5, n), (k, n))
    ours = forget_quality(unlearned, retrained)["forget_quality"]
    assert abs(ours - _brute_quality(unlearned, retrained)) < 1e-6


def test_logit_scaled_confidence_is_finite_and_exact():
    logits = np.array([[1000.0, 0.0, 0.0], [0.0, 1000.0, 0.0], [2.0, 1.0, 0.5]])
    conf = logit_scaled_confidence(logits, [0, 0, 0])
    assert np.all(np.isfinite(conf))  # p_y = 1 and p_y = 0 in float64, still finite
    assert conf[0] == pytest.approx(1000 - math.log(2)) and conf[1] == pytest.approx(-1000 - 0.0, abs=1e-9)
    p = np.exp(2.0) / np.exp([2.0, 1.0, 0.5]).sum()
    assert conf[2] == pytest.approx(math.log(p) - math.log(1 - p))


def test_an_audit_with_a_missing_array_says_so_and_counts_only_what_it_used(tmp_path, capfd):
    """A run whose scores artifact is missing is named in one line, and the table's `models` column is the
    number of runs whose scores were used, not the number that ran."""
    from mlflow.tracking import MlflowClient

    from analysis.audit import audit_table
    from analysis.results import StudyRecords
    from trainables import records

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db")
    experiment = client.create_experiment("a", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment).info.run_id
    rng = np.random.default_rng(0)
    missing = None
    for method, seed in [("retrain", s) for s in range(4)] + [("scrub", s) for s in range(4)] + [("original", 0)]:
        run = client.create_run(experiment, tags={records.PARENT_TAG: parent, "stage": records.AUDIT_STAGE,
                                                  "method": method, "seed": str(seed),
                                                  "trial_key": f"audit/{method}/seed{seed}/abc"}).info.run_id
        if (method, seed) == ("scrub", 2):
            missing = run  # this run's scores never reached the store
        else:
            records.save_arrays(client, run, records.SCORES_ARTIFACT, tmp_path, forget=rng.normal(size=30))
        client.set_terminated(run)
    table, _ = audit_table(StudyRecords(client, experiment, parent))
    row = table.set_index("method").loc["scrub"]
    assert row["models"] == 3 and row["retrained"] == 3  # compared with as many retrained models
    control = table.set_index("method").loc["original"]  # one deterministic model, scored as K copies
    assert control["models"] == 1 and control["retrained"] == 4
    err = capfd.readouterr().err
    assert f"run {missing}: scores.npz missing or unreadable" in err and err.count("missing or unreadable") == 1
    # a torn file is named the same way
    (tmp_path / "torn").mkdir()
    torn = client.create_run(experiment).info.run_id
    (tmp_path / "torn" / records.SCORES_ARTIFACT).write_bytes(b"PK\x03\x04 not a whole zip")
    client.log_artifact(torn, str(tmp_path / "torn" / records.SCORES_ARTIFACT))
    assert records.load_arrays(client, torn, records.SCORES_ARTIFACT) is None
    assert f"run {torn}: scores.npz missing or unreadable" in capfd.readouterr().err


def test_lira_log_ratio_reaches_the_analytic_auc_and_flips_with_its_sides():
    """Shadows drawn from two known Gaussians per example (means d standard deviations apart, each example its
    own location): the likelihood ratio's AUC over (target, example) pairs is the optimal test's,
    Phi(d / sqrt(2)), within 0.02; swapping the two sides negates it."""
    from scipy.stats import norm
    from sklearn.metrics import roc_auc_score

    from trainables.audit import lira_log_ratio

    rng = np.random.default_rng(0)
    examples, shadows, targets, d = 200, 64, 16, 1.0
    mu_out = rng.normal(0.0, 3.0, examples)
    mu_in, sd = mu_out + d, 1.0
    unlearned = rng.normal(mu_in, sd, (shadows, examples))
    retrained = rng.normal(mu_out, sd, (shadows, examples))
    t_in, t_out = rng.normal(mu_in, sd, (targets, examples)), rng.normal(mu_out, sd, (targets, examples))
    scores = np.concatenate([lira_log_ratio(t_in, unlearned, retrained), lira_log_ratio(t_out, unlearned, retrained)])
    labels = np.concatenate([np.ones((targets, examples)), np.zeros((targets, examples))])
    auc = roc_auc_score(labels.ravel(), scores.ravel())
    assert auc == pytest.approx(norm.cdf(d / math.sqrt(2)), abs=0.02)
    assert np.array_equal(lira_log_ratio(t_in, retrained, unlearned), -lira_log_ratio(t_in, unlearned, retrained))
    pooled = lira_log_ratio(t_in, unlearned, retrained, global_variance=True)
    assert pooled.shape == (targets, examples) and np.isfinite(pooled).all()
    with pytest.raises(ValueError, match="same examples"):
        lira_log_ratio(t_in[:, :5], unlearned, retrained)


def test_forget_quality_interval_covers_the_known_value():
    """Examples whose points are drawn from a known population (F = its mean): the bootstrap interval over
    examples covers F in about 95% of 300 simulated audits (94% when written)."""
    from trainables.audit import bucket_points, forget_quality_interval

    k = 8
    buckets = bucket_points(k)  # epsilons at each bucket's middle, and one past the last bucket (0 points)
    eps_values = np.array([start + 0.25 for start, _ in buckets] + [buckets[-1][0] + 1.0])
    probs = np.array([0.05, 0.15, 0.3, 0.3, 0.2][:len(eps_values)])
    probs = probs / probs.sum()
    truth = float(np.dot(probs, [p for _, p in buckets] + [0.0]))
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(300):
        eps = rng.choice(eps_values, size=100, p=probs)
        lo, hi = forget_quality_interval(eps, k)
        assert 0 <= lo <= hi <= 1
        covered += lo <= truth <= hi
    assert 0.92 <= covered / 300 <= 0.98


def test_the_simulated_null_ceiling_is_far_below_one():
    """Two sets of models from one distribution: F at K = 4 and 100 examples is about 0.26, at K = 32 about 0.18
    (the values to read an audit against, never 1)."""
    from trainables.audit import forget_quality_null

    small, large = forget_quality_null(4, 100, draws=4), forget_quality_null(32, 100, draws=3)
    assert 0.22 < small["mean"] < 0.30 and 0.15 < large["mean"] < 0.21
    assert small["lo"] <= small["mean"] <= small["hi"]
