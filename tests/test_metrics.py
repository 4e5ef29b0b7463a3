"""The SPEC section 2 formulas on hand-computed inputs, and `evaluate` on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.data import DataConfig, Dataset, Split, load_dataset
from trainables.data.splits import assemble
from trainables.metrics import evaluate, final_score, forgetting_score, loss_jsd, per_example_loss
from trainables.models import ModelConfig, build_model


def test_spec_worked_check():
    # accuracy 0.60 and M = 0.70 give FS = 0.20 and final score 0.60
    assert final_score(0.60, abs(0.5 - 0.70)) == pytest.approx(0.60)
    assert final_score(1.0, 0.0) == 1.0 and final_score(0.0, 0.5) == 0.0


def test_separable_losses_give_perfect_attack():
    forget = np.full(200, 0.01)
    unseen = np.full(150, 3.0)
    result = forgetting_score(forget, unseen)
    assert result["mia"] == pytest.approx(1.0) and result["forgetting_score"] == pytest.approx(0.5)


def test_the_advantage_is_signed_and_the_auc_says_which_side_looks_trained_on():
    """FS folds the attack's accuracy at 0.5; the advantage M - 0.5 does not, so over sets that cannot be told
    apart it averages 0 where FS averages above it. The AUC is the chance that a forget example's loss is
    below an unseen one's on the balanced table: it says which side looks trained on."""
    rng = np.random.default_rng(0)
    low, high = rng.exponential(0.3, 400), rng.exponential(1.0, 400)
    remembered, overdone = forgetting_score(low, high), forgetting_score(high, low)
    assert remembered["mia_advantage"] > 0.1 and overdone["mia_advantage"] > 0.1  # the attack fits either side
    assert remembered["forgetting_score"] == pytest.approx(abs(remembered["mia_advantage"]))
    null = [forgetting_score(rng.exponential(1.0, 200), rng.exponential(1.0, 200)) for _ in range(40)]
    advantage = np.mean([r["mia_advantage"] for r in null])
    folded = np.mean([r["forgetting_score"] for r in null])
    assert any(r["mia_advantage"] < 0 for r in null) and abs(advantage) < folded  # unfolded: centred nearer 0
    expected = float((low[:, None] < high[None, :]).mean())  # every forget/unseen pair (equal sizes: all kept)
    assert remembered["mia_auc"] == pytest.approx(expected) and overdone["mia_auc"] == pytest.approx(1 - expected)
    assert forgetting_score(np.full(200, 0.01), np.full(150, 3.0))["mia_auc"] == 1.0


def test_identical_distributions_give_no_signal():
    rng = np.random.default_rng(0)
    a, b = rng.exponential(1.0, 2000), rng.exponential(1.0, 2000)
    assert forgetting_score(a, b)["forgetting_score"] < 0.05
    assert loss_jsd(a, b) < 0.05
    assert loss_jsd(a, a) == pytest.approx(0.0, abs=1e-9)


def test_jsd_of_disjoint_distributions_is_the_maximum():
    rng = np.random.default_rng(0)
    d = loss_jsd(rng.normal(0, 0.01, 500), rng.normal(10, 0.01, 500))
    assert d == pytest.approx(math.sqrt(math.log(2)), abs=1e-3)  # natural-log JS distance tops out at sqrt(ln 2)


def test_balancing_uses_the_smaller_side_and_is_seeded():
    rng = np.random.default_rng(1)
    forget, unseen = rng.exponential(0.5, 900), rng.exponential(1.0, 100)
    first, again = forgetting_score(forget, unseen, seed=3), forgetting_score(forget, unseen, seed=3)
    assert first == again
    assert forgetting_score(forget, unseen, seed=4) != first  # a different subsample of the forget losses
    assert forgetting_score(forget[:100], unseen[:40])["mia"] >= 0  # forget smaller than unseen also works


def test_paper_balancing_is_the_notebooks():
    """reference-loops.md 2.1: np.random.seed(42), shuffle the forget losses, cut them to the unseen count;
    nothing is cut when forget is the smaller side; unseen rows first."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

    rng = np.random.default_rng(2)
    forget, unseen = rng.exponential(0.5, 300), rng.exponential(1.0, 120)

    def notebook(f, u):
        f = f.copy()
        np.random.seed(42)
        np.random.shuffle(f)
        f = f[: len(u)]
        x = np.concatenate([u, f]).reshape(-1, 1)
        y = np.concatenate([np.zeros(len(u)), np.ones(len(f))])
        scores = cross_val_score(LogisticRegression(), x, y, cv=StratifiedShuffleSplit(n_splits=10, random_state=0),
                                 scoring="accuracy")
        return float(np.mean(scores))

    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    ours = forgetting_score(forget, unseen, protocol="paper")["mia"]
    assert np.array_equal(np.random.get_state()[1], before)  # the caller's global generator is left alone
    assert ours == notebook(forget, unseen)
    # forget smaller than unseen: the notebooks cut nothing, so the classes stay unbalanced
    assert forgetting_score(forget[:50], unseen, protocol="paper")["mia"] == notebook(forget[:50], unseen)
    assert forgetting_score(forget[:50], unseen, protocol="fair")["mia"] != notebook(forget[:50], unseen)


def test_non_finite_losses_give_nan_not_a_crash():
    assert math.isnan(forgetting_score([0.1, float("nan")] * 20, [0.2] * 40)["mia"])
    assert math.isnan(loss_jsd([0.1, float("inf")], [0.2, 0.3]))


def test_multilabel_loss_is_mean_of_attribute_bce():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    by_hand = -(math.log(1 / (1 + math.exp(-2.0))) + math.log(1 - 1 / (1 + math.exp(1.0)))
                + math.log(1 - 1 / (1 + math.exp(-0.5)))) / 3
    assert per_example_loss(logits, labels, "multilabel").item() == pytest.approx(by_hand, rel=1e-5)


def test_evaluate_multiclass_keys_and_consistency():
    data = load_dataset(DataConfig())
    torch.manual_seed(0)
    model = build_model(ModelConfig("resnet18_small", 4), data.in_channels, data.num_outputs)
    cache: dict = {}
    m = evaluate(model, data, test="val", unseen="unseen_val", cache=cache)
    for key in ("accuracy", "top2_accuracy", "retain_accuracy", "forget_accuracy", "unseen_accuracy",
                "mia", "forgetting_score", "final_score", "jsd"):
        assert key in m and math.isfinite(m[key]), key
    assert m["top2_accuracy"] >= m["accuracy"]
    assert m["final_score"] == pytest.approx(final_score(m["accuracy"], m["forgetting_score"]))
    assert set(cache) == {"val", "unseen_val", "forget", "retain"}  # one forward pass per split
    report = evaluate(model, data, test="test_report", unseen="unseen_report", cache=cache)
    assert report["forget_accuracy"] == m["forget_accuracy"]  # the forget pass was reused


def _tiny_multilabel() -> Dataset:
    g = torch.Generator().manual_seed(0)
    def part(n, first_id):
        return Split(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
                     torch.randint(0, 2, (n, 3), generator=g).float(), torch.arange(first_id, first_id + n))
    parts = {"forget": part(40, 0), "retain": part(40, 100), "test": part(40, 200), "unseen": part(40, 300)}
    return assemble("tiny", "multilabel", ["Male", "Smiling", "Young"], parts, "x", False, 0)


def test_evaluate_multilabel_per_attribute():
    data = _tiny_multilabel()
    model = build_model(ModelConfig("resnet18_small", 4), 3, 3)
    m = evaluate(model, data)
    per_attr = [m["accuracy_Male"], m["accuracy_Smiling"], m["accuracy_Young"]]
    assert m["accuracy"] == pytest.approx(sum(per_attr) / 3, abs=1e-6)
    assert "top2_accuracy" not in m


def test_bootstrap_refits_the_attack_as_scikit_learn_does():
    """The vectorised refit finds scikit-learn's solution: on the original table its 10-split accuracy is M."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit

    from trainables.metrics import _logistic_fit, bootstrap_fs_se

    rng = np.random.default_rng(4)
    for n, shift in ((60, 0.2), (200, 0.0), (400, 0.6)):
        x = np.concatenate([rng.exponential(0.5, n), rng.exponential(0.5 + shift, n)])
        y = np.concatenate([np.ones(n), np.zeros(n)])
        for train, test in StratifiedShuffleSplit(n_splits=10, random_state=0).split(x[:, None], y):
            ours_w, ours_b = _logistic_fit(x[None, train], y[train])
            fit = LogisticRegression().fit(x[train, None], y[train])
            assert ours_w[0] == pytest.approx(fit.coef_[0, 0], abs=1e-3) and ours_b[0] == pytest.approx(fit.intercept_[0], abs=1e-3)
            assert np.array_equal((ours_w[0] * x[test] + ours_b[0]) > 0, fit.predict(x[test, None]) == 1)
    small, large = (forgetting_score(rng.exponential(0.5, n), rng.exponential(0.7, n), bootstrap=100)["fs_se"]
                    for n in (60, 600))
    assert 0 < large < small  # ten times the data: about a third of the standard error
    assert bootstrap_fs_se(x, y, 50) == bootstrap_fs_se(x, y, 50)  # seeded


def test_the_attack_loop_is_cross_val_score():
    """`attack_accuracy` fits and scores the same models as SPEC section 2's cross_val_score, to the last bit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

    from trainables.metrics import attack_accuracy, attack_table

    rng = np.random.default_rng(5)
    for n, scale, protocol in ((40, 0.4, "fair"), (179, 1.0, "paper"), (300, 0.05, "fair")):
        x, y = attack_table(rng.exponential(scale, n + 7), rng.exponential(0.6, n), 42, protocol)
        spec = float(np.mean(cross_val_score(LogisticRegression(), x, y,
                                             cv=StratifiedShuffleSplit(n_splits=10, random_state=0), scoring="accuracy")))
        assert attack_accuracy(x, y) == spec


def test_the_chosen_checkpoint_gets_the_fs_se_a_bootstrapped_evaluation_gives():
    """Evaluations skip the bootstrap; the chosen one's fs_se is computed at the end from its own losses."""
    import torch

    from trainables.data import DataConfig, load_dataset
    from trainables.metrics import SELECTION_SPLITS
    from trainables.selection import Selection

    data = load_dataset(DataConfig())
    torch.manual_seed(0)
    model = build_model(ModelConfig("resnet18_small", 4), 1, data.num_outputs).eval()
    selection = Selection("x", model, data, "fair", None, True, False, bootstrap=60)
    selection.evaluate(1, True)
    assert "fs_se" not in selection.curve[0]  # no bootstrap inside the evaluation
    selection.finish()
    test, unseen = SELECTION_SPLITS["fair"]
    direct = evaluate(model, data, test, unseen, retain=False, amp=False, bootstrap=60)
    assert selection.best_sel["fs_se"] == direct["fs_se"] > 0
    assert selection.best_sel["forgetting_score"] == direct["forgetting_score"]
