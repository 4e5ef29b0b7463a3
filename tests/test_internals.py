"""The private attributes of Ray Tune and Optuna the study reads (study/internals.py), on the installed versions.

Each test runs the real object: an upgrade that renames what `study.internals` reads fails
here, in one place, naming it.
"""

from __future__ import annotations

import inspect

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from study import internals


def test_optuna_search_trials_objectives_and_study_are_where_the_study_reads_them():
    search = OptunaSearch(space={"x": tune.uniform(0.0, 1.0)}, metric=["a", "b"], mode=["max", "min"], seed=0)
    config = search.suggest("t1")
    trials = internals.optuna_trials(search)
    assert set(trials) == {"t1"} and trials["t1"].params == config
    assert internals.objectives(search) == ["a", "b"]
    study = internals.optuna_study(search)
    assert isinstance(study, optuna.Study) and [t.number for t in study.trials] == [0]
    search.on_trial_complete("t1", {"a": 1.0, "b": 0.5})
    assert internals.completed_trials(search) == {"t1"} and study.trials[0].state == TrialState.COMPLETE
    # a setting asked for ahead of its Tune trial (a batch) is handed to the trial that runs it
    ahead = search.suggest("placeholder")
    internals.rename_trial(search, "placeholder", "t2")
    assert "placeholder" not in trials and trials["t2"].params == ahead
    search.on_trial_complete("t2", {"a": 0.5, "b": 0.5})
    assert internals.completed_trials(search) == {"t1", "t2"} and study.trials[1].state == TrialState.COMPLETE


def test_a_stored_trial_s_storage_id_is_what_the_storage_takes():
    study = optuna.create_study()
    study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    trial_id = internals.storage_id(frozen)
    study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
    assert study.get_trials(deepcopy=False)[0].state == TrialState.FAIL


def test_tune_s_controller_keeps_its_trials_actors_where_the_scheduler_reads_them():
    """The scheduler reads the controller's trial-to-actor map and its actor manager's start state; without
    them it falls back to Tune's FIFO choice (it runs, but workers that are starting get killed again)."""
    from ray.air.execution._internal.actor_manager import RayActorManager
    from ray.tune.execution.tune_controller import TuneController

    source = inspect.getsource(TuneController.__init__)
    missing = [name for name in ("self._trial_to_actor", "self._actor_manager") if name not in source]
    assert not missing, f"Ray {internals.CHECKED['ray']}'s TuneController attributes are gone: {missing}"
    assert callable(getattr(RayActorManager, "is_actor_started", None))

    class Manager:
        def is_actor_started(self, actor):
            return actor == "starting"

    class Controller:
        _trial_to_actor = {"a": "starting", "b": "up"}
        _actor_manager = Manager()

    assert internals.worker_starting(Controller(), "a") and not internals.worker_starting(Controller(), "b")
    assert not internals.worker_starting(Controller(), "c") and not internals.worker_starting(object(), "a")
    wrapper = type("Wrapper", (), {"_tune_controller": "inner"})()
    assert internals.tune_controller(wrapper) == "inner" and internals.tune_controller("bare") == "bare"
