"""The tuning card: each searched method's space, budget, finished trials, best-so-far curve and chosen setting."""

from __future__ import annotations

import json

import optuna
import pandas as pd

from analysis.tuning import tuning_markdown, tuning_tables


def _search(scores):
    """A two-objective search whose trials score `scores` (None: the trial failed)."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for score in scores:
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)})
        if score is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            trial.set_user_attr("final_score", score)
            study.tell(trial, [0.9, 0.1])
    return study


def test_the_card_counts_the_budget_spent_and_the_best_so_far_never_falls():
    study = _search([0.80, None, 0.85, 0.82, 0.90])
    chosen_lr = study.trials[2].params["lr"]
    rows = pd.DataFrame({"method": ["finetune", "finetune"], "setting": ["aaa", "bbb"],
                         "params.lr": [json.dumps(chosen_lr), "0.5"], "params.epochs": ["5", "5"]})
    summary = pd.DataFrame({"method": ["finetune"], "setting": ["aaa"]})
    cards, curves = tuning_tables({"finetune": study}, 5, rows, summary)
    card = cards.iloc[0]
    assert (card["budget"], card["finished"], card["failed"]) == (5, 5, 1)
    assert card["best_sel_final_score"] == 0.90
    assert json.loads(card["space"]) == {"lr": [1e-4, 0.1, "log"]}
    assert json.loads(card["chosen"]) == {"lr": chosen_lr}  # the table's setting, only what was searched
    assert list(curves["trial"]) == [0, 1, 2, 3, 4]
    assert list(curves["best_so_far"]) == [0.80, 0.80, 0.85, 0.85, 0.90]  # a failed trial keeps the best
    assert curves["sel_final_score"].isna().tolist() == [False, True, False, False, False]
    text = tuning_markdown(cards)
    assert "| finetune | 5 | 5 (1) | 0.9000 |" in text and "lr=[0.0001, 0.1, 'log']" in text


def test_no_searched_method_no_card():
    cards, curves = tuning_tables({}, 24, pd.DataFrame(), pd.DataFrame())
    assert len(cards) == 0 and len(curves) == 0 and tuning_markdown(cards) == ""
