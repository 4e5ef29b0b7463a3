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
    n = 6 if k < 64 else 3  # the brute force compares k scores with ~160,000 thresholds per example
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


def test_shadow_masks_come_in_complementary_pairs_and_repeat():
    """Model 2i and 2i + 1 forget complementary halves, so with S shadows every candidate is forgotten by S/2 and
    never seen by S/2; the masks depend on the split's key and the model's index alone."""
    from trainables.audit import shadow_member_mask

    masks = np.stack([shadow_member_mask(101, "abc", j) for j in range(8)])
    assert (masks[0::2] ^ masks[1::2]).all()  # each pair splits every candidate
    assert (masks.sum(0) == 4).all() and masks[0].sum() == 50
    assert not np.array_equal(masks[0], masks[2])  # pairs draw their own permutation
    assert np.array_equal(masks[3], shadow_member_mask(101, "abc", 3))
    assert not np.array_equal(masks[0], shadow_member_mask(101, "abd", 0))
    with pytest.raises(ValueError, match="at least 2"):
        shadow_member_mask(1, "abc", 0)


def test_a_shadow_data_set_trains_on_retain_and_its_half_only():
    import torch

    from trainables.audit import shadow_dataset, shadow_member_mask
    from trainables.data import DataConfig, load_dataset

    data = load_dataset(DataConfig("digits", forget_count=40))
    member = shadow_member_mask(len(data["forget"]), data.split_fingerprint, 5)
    shadow = shadow_dataset(data, member)
    assert len(shadow["forget"]) == 20 and len(shadow["train"]) == len(data["retain"]) + 20
    kept = set(data["forget"].identities[torch.from_numpy(member)].tolist())
    assert set(shadow["forget"].identities.tolist()) == kept
    assert kept <= set(shadow["train"].identities.tolist())
    never = set(data["forget"].identities.tolist()) - kept
    assert not never & set(shadow["train"].identities.tolist())  # the other half is never trained on
    assert shadow.split_fingerprint != data.split_fingerprint  # its own entry in the bank
    assert shadow["test"] is data["test"] and shadow["retain"] is data["retain"]


def test_attack_metrics_agree_with_scikit_learn_and_lira_readings():
    """AUC and the ROC against scikit-learn on tied scores; balanced accuracy and TPR at a low FPR by brute force
    over every threshold, LiRA's readings (the best 1 - (FPR + FNR) / 2; the best TPR with FPR below the level)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from trainables.audit import attack_metrics, roc

    rng = np.random.default_rng(3)
    label = rng.random(3000) < 0.5
    score = np.round(rng.normal(0, 1, 3000) + 0.4 * label, 2)  # ties
    got = attack_metrics(score, label)
    assert got["auc"] == pytest.approx(roc_auc_score(label, score), rel=1e-12)
    fpr, tpr, _ = roc_curve(label, score, drop_intermediate=False)
    mine = roc(score, label)
    assert np.allclose(mine[0], fpr, rtol=0, atol=1e-15) and np.allclose(mine[1], tpr, rtol=0, atol=1e-15)
    cuts = np.unique(score)
    tprs = np.array([(score[label] >= c).mean() for c in cuts])
    fprs = np.array([(score[~label] >= c).mean() for c in cuts])
    assert got["balanced_accuracy"] == pytest.approx(max(0.5, np.max(1 - (fprs + 1 - tprs) / 2)), rel=1e-12)
    assert got["tpr_at_0.01"] == pytest.approx(max([0.0, *tprs[fprs < 0.01]]), rel=1e-12)
    assert got["tpr_at_0.05"] > got["tpr_at_0.01"]
    flipped = attack_metrics(-score, label)
    assert flipped["auc"] == pytest.approx(1 - got["auc"], rel=1e-12)


def test_ulira_on_synthetic_shadows_reaches_the_analytic_auc_and_its_floor():
    """Complementary shadow pairs on synthetic scores: the forgotten side N(mu + d, 1), the never-seen side
    N(mu, 1), mu per candidate. With 64 shadows the attack on the targets reaches Phi(d / sqrt(2)) within 0.02
    and its interval covers it; with no difference (d = 0, retraining) it sits at 0.5, its interval covers 0.5,
    and the paired difference from it excludes 0 only where d > 0. Below 64 shadows the fit is LiRA's global
    variance, which attacks better there (16 shadows: AUC 0.726 against 0.700 per candidate, three draws)."""
    from scipy.stats import norm

    from trainables.audit import (attack_draws, attack_intervals, attack_metrics, auc_difference_interval,
                                  shadow_member_mask, ulira_log_ratios)

    rng = np.random.default_rng(4)
    examples, shadows, targets = 400, 64, 4
    members = np.stack([shadow_member_mask(examples, "k", j) for j in range(shadows)]
                       + [shadow_member_mask(examples, "k", 10_000 + j) for j in range(targets)])
    mu = rng.normal(0.0, 3.0, examples)
    attacks = {}
    for d in (1.0, 0.0):
        scores = rng.normal(mu + d * members, 1.0)
        ratio, labels = ulira_log_ratios(scores, members, shadows)
        assert ratio.shape == labels.shape == (targets, examples)
        assert np.array_equal(labels, members[shadows:])
        attacks[d] = (ratio, labels, attack_intervals(ratio, labels, draws=300))
    strong, null = attacks[1.0][2], attacks[0.0][2]
    assert strong["auc"] == pytest.approx(norm.cdf(1 / math.sqrt(2)), abs=0.02)
    assert strong["auc_lo"] <= norm.cdf(1 / math.sqrt(2)) <= strong["auc_hi"]
    assert null["auc_lo"] <= 0.5 <= null["auc_hi"] and abs(null["auc"] - 0.5) < 0.03
    for key in ("auc", "balanced_accuracy", "tpr_at_0.01", "tpr_at_0.05"):
        assert 0 <= strong[f"{key}_lo"] <= strong[key] <= strong[f"{key}_hi"] <= 1
    diff, lo, hi = auc_difference_interval(*attacks[1.0][:2], *attacks[0.0][:2], draws=300)
    assert diff == pytest.approx(strong["auc"] - null["auc"]) and lo > 0
    drawn = [attack_draws(*attacks[d][:2], draws=300) for d in (1.0, 0.0)]  # once each, as a table draws them
    assert auc_difference_interval(*attacks[1.0][:2], *attacks[0.0][:2], samples=drawn[0],
                                   reference_samples=drawn[1]) == (diff, lo, hi)
    assert attack_intervals(*attacks[1.0][:2], samples=drawn[0]) == strong
    same = auc_difference_interval(*attacks[0.0][:2], *attacks[0.0][:2], draws=50)
    assert same == (0.0, 0.0, 0.0)
    few = np.r_[0:16, shadows:shadows + targets]  # 16 shadows and the same targets
    scores = rng.normal(mu + members, 1.0)
    default = ulira_log_ratios(scores[few], members[few], 16)
    assert np.array_equal(default[0], ulira_log_ratios(scores[few], members[few], 16, global_variance=True)[0])
    per_example = ulira_log_ratios(scores[few], members[few], 16, global_variance=False)
    assert attack_metrics(*default)["auc"] > attack_metrics(*per_example)["auc"]
    with pytest.raises(ValueError, match="exactly half"):
        ulira_log_ratios(scores[1:], members[1:], shadows - 2)


def test_the_cheap_ceiling_trains_no_second_set_of_retrained_models():
    """`--audit-ceiling simulated` plans K retrained models, not 2K (the table then reads the simulated ceiling,
    labelled `null_kind` simulated); U-LiRA's targets are seeds from TARGET_SEED on."""
    from types import SimpleNamespace

    import pandas as pd

    from study.config import resolve
    from study.pipeline import Choice, audit_runs, ulira_stages
    from trainables.audit import TARGET_SEED

    for ceiling, retrained in (("retrained", 8), ("simulated", 4)):
        cfg = resolve({"audit": 4, "audit_ceiling": ceiling, "baselines": ["finetune"], "shadows": 4, "targets": 2,
                       "paper_baselines": True}, {})  # finetune at its paper setting: audited without a search
        ctx = SimpleNamespace(cfg=cfg, tracker=SimpleNamespace(children=lambda stage=None, status=None: pd.DataFrame()),
                              fixed_hparams=lambda method: {})
        runs = audit_runs(ctx, Choice(ctx, []))
        assert sum(r["method"] == "retrain" for r in runs) == retrained
        assert sum(r["method"] == "finetune" for r in runs) == 4
    grids = []
    ctx.grid = lambda stage, runs, after=(), needs=None, label=None: grids.append((stage, runs, needs, label)) or label
    models, unlearning = ulira_stages(ctx, Choice(ctx, []), ("confirm",))
    stage, runs, _, _ = grids[0]
    assert stage == "ulira" and sorted({r["seed"] for r in runs}) == [0, 1, 2, 3, TARGET_SEED, TARGET_SEED + 1]
    assert {r["replicate"] for r in runs} == {1}
    assert [r["method"] for r in grids[1][1]()] == ["finetune"] * 6 and grids[1][2] == models


def test_the_audit_figures_mark_the_ceiling_label_their_axes_and_call_unbounded_epsilons_so(monkeypatch, tmp_path):
    """The epsilon panels: a share of the examples per bin, the ceiling's own epsilons (retrained against
    retrained) drawn beside, the capped epsilons in a bar of their own ticked "inf", F and its ceiling in each
    title. The F figure: each F with its interval and the ceiling as a line with its interval."""
    import pandas as pd

    from analysis import plots
    from analysis.audit import CEILING, epsilon_shares, plot_epsilons, plot_forget_quality

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, base: figures.append(fig) or [base])
    eps = np.array([0.5, 1.0, 7.0, EPSILON_CAP, EPSILON_CAP, np.nan])
    bounded, weights, unbounded = epsilon_shares(eps)
    assert bounded.tolist() == [0.5, 1.0, 6.0] and weights == pytest.approx([0.2] * 3) and unbounded == 0.4
    row = {"forget_quality_null": 0.17, "forget_quality_null_lo": 0.16, "forget_quality_null_hi": 0.18,
           "null_kind": "retrained"}
    table = pd.DataFrame([{"method": "gli", "setting": "abcdef12", "forget_quality": 0.04, "forget_quality_lo": 0.03,
                           "forget_quality_hi": 0.05, **row},
                          {"method": "original", "setting": "0123", "forget_quality": 0.0, "forget_quality_lo": 0.0,
                           "forget_quality_hi": 0.0, **row}])
    plot_epsilons({"gli/abcdef12": eps, "original/0123": np.full(6, EPSILON_CAP), CEILING: np.array([1.0, 2.0])},
                  "t", tmp_path / "e", table)
    plot_forget_quality(table, "t", tmp_path / "f")
    panels, quality = figures
    assert len(panels.axes) == 1  # one panel: the original and the ceiling are drawn in it, not beside it
    ax = panels.axes[0]
    assert "F 0.040 [0.030, 0.050] of 0.170 (retrained)" in ax.get_title()
    assert ax.get_xticklabels()[-1].get_text() == "inf"
    inf_tick = ax.get_xticks()[-1]
    bars = [p for p in ax.patches if hasattr(p, "get_x")]  # the step outline is a polygon
    apart = sorted(round(p.get_height(), 6) for p in bars if abs(p.get_x() + p.get_width() / 2 - inf_tick) < 1e-9)
    assert apart == [0.0, 0.4, 1.0]  # the ceiling's none, the unlearned 2 of 5 defined, the original all
    assert panels._supylabel.get_text() == "share of forget examples" and "epsilon" in panels._supxlabel.get_text()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "retrained vs retrained (the ceiling)" in labels
    qa = quality.axes[0]
    ceiling = [line for line in qa.lines if list(line.get_xdata()) == [0.17, 0.17]]
    assert ceiling and "ceiling (retrained vs retrained): 0.170" in [t.get_text() for t in qa.get_legend().get_texts()]
    assert "not 1" in qa.get_xlabel() and qa.get_ylabel()
    assert qa.get_xlim()[0] == 0 and qa.get_xlim()[1] > 0.18  # the ceiling's interval is in view
