"""The search stage proposes the same settings whatever order its trials end in (batched ask and tell)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pandas as pd

from study.spaces import SearchSpace
from study.stages import SearchStage
from study.callback import ItemTrial


def _ctx(tmp_path, batch: int):
    cfg = SimpleNamespace(objective="pareto", results_dir=str(tmp_path), experiment_name="order", protocol="fair",
                          dataset="digits", sampler_seed=0, search_batch=batch)
    tracker = SimpleNamespace(children=lambda stage: pd.DataFrame(), flush=lambda: None)
    return SimpleNamespace(cfg=cfg, tracker=tracker, fixed_hparams=lambda method=None: {}, started=0.0, study_key="k")


def _score(hparams: dict) -> dict:
    """A trial's report as a deterministic function of its setting (as on one machine)."""
    lr = hparams["lr"]
    return {"final": 1.0, "sel_accuracy": 1.0 - abs(lr - 0.01), "sel_forgetting_score": abs(lr - 0.02),
            "sel_final_score": 1.0 - abs(lr - 0.01)}


def _run_search(tmp_path, batch: int, order: str, slots: int = 3, budget: int = 18) -> list[float]:
    """Run one search with `slots` trials at a time; running trials end in `order` (oldest first, newest first,
    or shuffled); returns each trial's setting, by trial number."""
    stage = SearchStage(_ctx(tmp_path, batch), "baseline", "finetune", SearchSpace("finetune"), None, budget)
    stage.activate()
    running, proposed, n, rng = [], [], 0, random.Random(order)
    while stage.done < budget:
        while len(running) < slots and (config := stage.take(f"t{n}")) is not None:
            running.append((f"t{n}", config))
            proposed.append(config["hparams"]["lr"])
            n += 1
        assert running, "the stage handed out nothing while nothing ran"
        pick = {"oldest": 0, "newest": len(running) - 1}.get(order, rng.randrange(len(running)))
        trial_id, config = running.pop(pick)
        report = _score(config["hparams"])
        stage.ended(trial_id, report, False)
        stage.recorded(ItemTrial(trial_id, report), ok=True, run_id=None)
    return proposed


def test_a_batched_search_proposes_the_same_settings_whatever_order_trials_end_in(tmp_path):
    runs = []
    for order in ("oldest", "newest", "shuffled"):
        (tmp_path / order).mkdir()
        runs.append(_run_search(tmp_path / order, 4, order))
    assert len(runs[0]) == 18 and runs[0] == runs[1] == runs[2]


def test_an_unbatched_search_depends_on_the_order_trials_end_in(tmp_path):
    """What batching prevents (the test above would catch its loss): TPE's proposals after its random start
    follow the trials that happened to have ended."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    oldest = _run_search(tmp_path / "a", 0, "oldest")
    newest = _run_search(tmp_path / "b", 0, "newest")
    assert oldest[:10] == newest[:10]  # TPE's random start: order does not matter yet
    assert oldest != newest


def test_a_trial_that_ends_twice_is_told_to_optuna_once(tmp_path):
    """Tune may report an end again (a retried bundle's item, a restored trial): the stage frees the slot and
    tells Optuna once; the second report changes nothing."""
    stage = SearchStage(_ctx(tmp_path, 0), "baseline", "finetune", SearchSpace("finetune"), None, 2)
    stage.activate()
    config = stage.take("t0")
    report = _score(config["hparams"])
    stage.ended("t0", report, False)
    stage.recorded(ItemTrial("t0", report), ok=True, run_id=None)
    assert stage.ended("t0", report, False) is False
    assert not stage.untold and [t.state.name for t in stage.study.trials] == ["COMPLETE"]
