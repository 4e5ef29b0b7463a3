"""The study's Tune scheduler: FIFO, except that a freed worker never kills one that is starting."""

from __future__ import annotations

from ray.tune.schedulers import FIFOScheduler

from . import internals


class SpareStartingWorkers(FIFOScheduler):
    """Tune's FIFO scheduler, except that a freed worker skips pending trials whose own worker is starting.

    With actor reuse, Tune gives a worker freed by an ended trial to the trial its scheduler
    chooses and, if that trial already had a worker starting for it, kills that worker. FIFO
    chooses the oldest pending trial, the one whose worker has been starting longest. While
    workers start (the study's start; a lost node's replacements) and trials are shorter than a
    worker's start-up, every ended trial thus killed a starting worker and the freed slot began
    another one, which met the same end: the run stayed on the workers that were up when the
    first trial ended (measured in docs/benchmarks.md). Here the freed worker goes to the oldest
    pending trial with no worker starting (in practice the one made for the slot that just
    freed), and the starting workers finish starting. A trial waiting for resources that are
    gone (its node was lost) has no worker starting either, so it is not passed over for ever.
    Whether a worker is starting is read from Tune's internals (`study.internals`).
    """

    def choose_trial_to_run(self, tune_controller):
        controller = internals.tune_controller(tune_controller)
        for trial in tune_controller.get_trials():
            if trial.status == "PENDING" and not internals.worker_starting(controller, trial):
                return trial
        return super().choose_trial_to_run(tune_controller)  # every pending trial has a worker starting
