"""Every use of Ray Tune's and Optuna's private attributes, in one place.

Neither library has a public way to do these things; each function says what it reads and
what the study does without it. They were written against the versions in `CHECKED`;
`tests/test_internals.py` exercises each one on the installed libraries (and checks that Tune's
controller still creates the attributes the scheduler reads), so an upgrade that renames what
they read fails there, naming it, rather than somewhere in a study.
"""

from __future__ import annotations

CHECKED = {"ray": "2.60.0", "optuna": "5.1.0"}


# --- Ray Tune: the controller, for the scheduler (study.scheduler.SpareStartingWorkers) ----------------------
def tune_controller(given):
    """Tune hands its scheduler a wrapper of the controller (`_tune_controller` inside it)."""
    return getattr(given, "_tune_controller", given)


def worker_starting(controller, trial) -> bool:
    """Whether `trial` already has a worker of its own being created (its resources granted): Tune's map from
    trials to actors and its actor manager's state. When they cannot be read, False: the scheduler then
    makes Tune's own FIFO choice."""
    try:
        actor = controller._trial_to_actor.get(trial)
        return actor is not None and controller._actor_manager.is_actor_started(actor)
    except AttributeError:
        return False


# --- Ray Tune's OptunaSearch: its Optuna trials, for the study's searcher (study.stages.StudySearch) ----
def optuna_trials(search) -> dict:
    """Tune trial id -> the Optuna trial OptunaSearch asked for it."""
    return search._ot_trials


def rename_trial(search, old: str, new: str) -> None:
    """The Optuna trial asked for Tune trial id `old` now belongs to `new` (a batch is asked for before the
    Tune trials that run it exist: study.stages.SearchStage)."""
    search._ot_trials[new] = search._ot_trials.pop(old)


def completed_trials(search) -> set:
    """The Tune trial ids OptunaSearch has told Optuna of."""
    return search._completed_trials


def objectives(search) -> list[str]:
    """The metric names OptunaSearch reports to Optuna, as a list (one or several)."""
    return search._metric if isinstance(search._metric, list) else [search._metric]


def optuna_study(search):
    """The Optuna study behind an OptunaSearch."""
    return search._ot_study


# --- Optuna: a stored trial's storage id, to close a trial left running by a killed study ----------------
def storage_id(frozen_trial) -> int:
    """The storage's id of a FrozenTrial (Optuna's storage API takes it; the trial only has it privately)."""
    return frozen_trial._trial_id
