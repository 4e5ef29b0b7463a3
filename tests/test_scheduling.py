"""Tune's placement of the study's trials on workers: a freed worker skips trials whose own worker is starting.

With actor reuse and Tune's FIFO choice, a trial shorter than a worker's start-up killed a
starting worker each time it ended, and the run stayed on the first worker (study/plan.py,
`SpareStartingWorkers`). Here real Tune runs 8 slots (logical CPUs) with a searcher that, like
the study's plan, hands out one trial at a time for each free slot, and workers after the
first take 2 s to start.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
import ray
import ray.cloudpickle
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher

from study.plan import SpareStartingWorkers

SLOTS = 8  # logical CPUs: more worker start-ups than this machine's cores run at once
TRIALS = 48
START_S = 2.0  # a worker's start-up, but the first one's
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=SLOTS, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


class OneAtATime(Searcher):
    """`TRIALS` trials, each asked for only when a slot is free (Tune's concurrency limit), as the study's plan."""

    def __init__(self):
        super().__init__()
        self.given = 0

    def suggest(self, trial_id):
        if self.given >= TRIALS:
            return Searcher.FINISHED
        self.given += 1
        return {"i": self.given}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


def _take_a_number(folder: str) -> "StartGate":
    """Run in a worker whenever it loads the trial function: the first time in each process, the first
    worker starts at once and every later one takes `START_S`, as a worker importing PyTorch and loading
    data does. Each worker process leaves one file, named by its process id."""
    mine = os.path.join(folder, f"worker-{os.getpid()}")
    if not os.path.exists(mine):
        earlier = len(os.listdir(folder))
        open(mine, "w").close()
        if earlier:
            time.sleep(START_S)
    return StartGate(folder)


class StartGate:
    """Held by the trial function, so that each worker unpickles it while it starts (its trial actor's creation)."""

    def __init__(self, folder: str):
        self.folder = folder

    def __reduce__(self):
        return _take_a_number, (self.folder,)


def _run(scheduler, tmp_path) -> tuple[int, int]:
    """Worker processes that ran trials, and workers started in all."""
    folder = tmp_path / "workers"
    folder.mkdir()
    gate = StartGate(str(folder))

    def short_trial(config):
        assert gate.folder  # the gate travels with the function
        time.sleep(0.05)
        tune.report({"pid": os.getpid()})

    tuner = tune.Tuner(
        tune.with_resources(short_trial, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=OneAtATime(), scheduler=scheduler, num_samples=-1,
                                    max_concurrent_trials=SLOTS, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="scheduling", verbose=0),
    )
    results = tuner.fit()
    assert len(results) == TRIALS and not results.errors
    return len({r.metrics["pid"] for r in results}), len(list(folder.iterdir()))


def test_each_slot_starts_one_worker_when_trials_are_shorter_than_its_start(tmp_path):
    used, started = _run(SpareStartingWorkers(), tmp_path)
    assert started <= SLOTS + 1 and used >= SLOTS // 2, (used, started)


def test_tune_fifo_choice_kills_starting_workers(tmp_path):
    """The control, what `SpareStartingWorkers` changes: with Tune's FIFO choice, each short trial's end
    killed a starting worker and started another."""
    used, started = _run(FIFOScheduler(), tmp_path)
    assert started > SLOTS + 1, (used, started)


def test_wait_trials_block_on_the_plans_signal_and_wake_when_it_moves(tmp_path):
    """A wait trial blocks on the study's `PlanSignal` actor (no polling) and returns as the plan's version
    changes; without the actor it reads the marker file instead."""
    import threading

    from study.plan import StudyPlan
    from study.stages import GridStage
    from study.waits import PlanSignal, wait_for_plan
    from tests.test_plan import _ctx, _run

    marker = tmp_path / "study.plan"
    actor = PlanSignal.options(name="test-plan-signal").remote(0)
    ctx = _ctx()
    base = GridStage(ctx, "base", [_run("original", 0), _run("retrain", 0)])
    baseline = GridStage(ctx, "baseline", [_run("scrub", 0)], needs=base.seed_done)
    plan = StudyPlan([base, baseline], marker, signal="test-plan-signal")
    plan.suggest("t1"), plan.suggest("t2")
    plan.on_trial_complete("t1", {"final": 1.0})
    wait = plan.suggest("w1")
    assert wait["hparams"] == {"version": 1, "marker": str(marker), "signal": "test-plan-signal"}
    threading.Timer(0.5, plan.on_trial_complete, args=("t2", {"final": 1.0})).start()
    start = time.monotonic()
    wait_for_plan(**wait["hparams"], limit_s=20)
    assert 0.4 < time.monotonic() - start < 10
    assert ray.get(actor.wait.remote(1, 0.0)) == 2 and marker.read_text() == "2"
    start = time.monotonic()
    wait_for_plan(**wait["hparams"], limit_s=20)  # already moved on: returns at once
    assert time.monotonic() - start < 5
    ray.kill(actor)
    threading.Timer(0.5, lambda: marker.write_text("3")).start()
    start = time.monotonic()
    wait_for_plan(str(marker), 2, limit_s=20, signal="no-such-signal")  # no actor to block on: the file
    assert 0.4 < time.monotonic() - start < 10


def test_the_driver_benchmarks_gate_holds_trials_until_every_slot_has_a_worker():
    """bench/driver.py measures with every slot's worker up: each worker's first trial waits at the gate until
    all have arrived, or until the gate's limit, and the gate says how many came and when it opened."""
    from bench.standin import ReadyGate

    gate = ReadyGate.remote(2, 60.0)
    first = gate.arrive.remote(101)
    held, _ = ray.wait([first], timeout=1.0)
    assert not held and ray.get(gate.state.remote()) == (1, None)
    ray.get([first, gate.arrive.remote(102)], timeout=30)
    arrived, opened = ray.get(gate.state.remote())
    assert arrived == 2 and opened is not None

    late = ReadyGate.remote(3, 0.5)  # one of three ever comes: the gate opens at its limit
    start = time.monotonic()
    ray.get(late.arrive.remote(201), timeout=30)
    assert time.monotonic() - start >= 0.3
    arrived, opened = ray.get(late.state.remote())
    assert arrived == 1 and opened is not None
