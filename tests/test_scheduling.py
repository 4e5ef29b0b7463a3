"""Tune's placement of the study's trials on workers: a freed worker skips trials whose own worker is starting.

With actor reuse and Tune's FIFO choice, a trial shorter than a worker's start-up killed a
starting worker each time it ended, and the run stayed on the first worker (study/plan.py,
`SpareStartingWorkers`). Here real Tune runs 4 slots (logical CPUs) with a searcher that, like
the study's plan, hands out one trial at a time for each free slot, and every worker after the
first finishes starting only once `SLOTS` trials have ended: trials are then shorter than a
start-up by construction, whatever the machine's speed.
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

from study.scheduler import SpareStartingWorkers

SLOTS = 4  # logical CPUs: more worker start-ups than this machine's 2 cores run at once
TRIALS = 24
START_LIMIT_S = 120.0  # a starting worker waits at most this long for the trials to end (a hang guard)
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
    worker starts at once and every later one only once `SLOTS` trials have ended, as a worker importing
    PyTorch and loading data still starts while short trials end. Each worker process leaves one file,
    named by its process id."""
    mine = os.path.join(folder, f"worker-{os.getpid()}")
    if not os.path.exists(mine):
        earlier = len([n for n in os.listdir(folder) if n.startswith("worker-")])
        open(mine, "w").close()
        deadline = time.monotonic() + START_LIMIT_S
        while earlier and len(os.listdir(os.path.join(folder, "ended"))) < SLOTS and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting on a state: trials ended elsewhere
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
    (folder / "ended").mkdir(parents=True)
    gate = StartGate(str(folder))

    def short_trial(config):
        open(os.path.join(gate.folder, "ended", str(config["i"])), "w").close()  # the gate travels with it
        tune.report({"pid": os.getpid()})

    tuner = tune.Tuner(
        tune.with_resources(short_trial, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=OneAtATime(), scheduler=scheduler, num_samples=-1,
                                    max_concurrent_trials=SLOTS, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="scheduling", verbose=0),
    )
    results = tuner.fit()
    assert len(results) == TRIALS and not results.errors
    return len({r.metrics["pid"] for r in results}), len([p for p in folder.iterdir() if p.name.startswith("worker-")])


def test_each_slot_starts_one_worker_when_trials_are_shorter_than_its_start(tmp_path):
    used, started = _run(SpareStartingWorkers(), tmp_path)
    assert started <= SLOTS + 1 and used >= SLOTS // 2, (used, started)


def test_a_freed_worker_goes_to_the_oldest_pending_trial_without_a_worker_starting():
    """`SpareStartingWorkers.choose_trial_to_run` on a controller in a known state: pending trials whose own
    worker is starting are passed over (Tune would kill that worker to reuse the freed one); when every
    pending trial has one, Tune's FIFO choice stands (a trial waiting on a lost node is never starved)."""
    from types import SimpleNamespace

    class Trial:
        def __init__(self, name: str, status: str):
            self.name, self.status = name, status

    trials = [Trial(n, s) for n, s in (("a", "RUNNING"), ("b", "PENDING"), ("c", "PENDING"), ("d", "PENDING"))]
    starting = {"b"}

    class Manager:
        def is_actor_started(self, actor):
            return actor in starting

    class Controller:
        _trial_to_actor = {t: t.name for t in trials if t.status == "PENDING"}
        _actor_manager = Manager()

        def get_trials(self):
            return trials

    controller = Controller()
    wrapper = SimpleNamespace(_tune_controller=controller, get_trials=controller.get_trials)
    assert SpareStartingWorkers().choose_trial_to_run(wrapper).name == "c"  # b's worker is starting
    starting.update({"c", "d"})
    fifo = FIFOScheduler().choose_trial_to_run(wrapper)
    assert SpareStartingWorkers().choose_trial_to_run(wrapper) is fifo  # all starting: Tune's own choice


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
    baseline = GridStage(ctx, "baseline", [_run("scrub", 0)], needs=base)
    plan = StudyPlan([base, baseline], marker, signal="test-plan-signal")
    plan.suggest("t1"), plan.suggest("t2")
    plan.on_trial_complete("t1", {"final": 1.0})
    wait_args = plan.suggest("w1")["wait"]
    assert wait_args == {"version": 1, "marker": str(marker), "signal": "test-plan-signal"}
    seen = []

    def wait(**where):  # what the wait trial runs; it records the version it saw on return
        wait_for_plan(**where, limit_s=60)
        seen.append(ray.get(actor.wait.remote(0, 0.0)))

    waiting = threading.Thread(target=wait, kwargs=wait_args)
    waiting.start()
    plan.on_trial_complete("t2", {"final": 1.0})
    waiting.join()
    assert seen == [2] and marker.read_text() == "2"  # it returned once the plan moved, not before
    wait(**wait_args)  # already moved on: returns at once
    assert seen == [2, 2]
    ray.kill(actor)
    waiting = threading.Thread(target=wait_for_plan, args=(str(marker), 2), kwargs={"limit_s": 60,
                                                                                    "signal": "no-such-signal"})
    waiting.start()  # no actor to block on: the file
    marker.write_text("3")
    waiting.join()
    assert marker.read_text() == "3"


def test_the_driver_benchmarks_gate_holds_trials_until_every_slot_has_a_worker():
    """bench/driver.py measures with every slot's worker up: each worker's first trial waits at the gate until
    all have arrived, or until the gate's limit, and the gate says how many came and when it opened."""
    from bench.standin import ReadyGate

    gate = ReadyGate.remote(2, 60.0)
    first = gate.arrive.remote(101)
    deadline = time.monotonic() + 30
    while ray.get(gate.state.remote())[0] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # until the first has arrived (a state), then it must be held
    assert ray.get(gate.state.remote()) == (1, None)  # one of two has come: closed
    held, _ = ray.wait([first], timeout=0)
    assert not held
    ray.get([first, gate.arrive.remote(102)], timeout=30)
    arrived, opened = ray.get(gate.state.remote())
    assert arrived == 2 and opened is not None

    late = ReadyGate.remote(3, 0.5)  # one of three ever comes: the gate opens at its limit
    ray.get(late.arrive.remote(201), timeout=30)
    arrived, opened = ray.get(late.state.remote())
    assert arrived == 1 and opened is not None


def test_the_plan_s_signal_only_moves_forward_whatever_order_its_calls_run_in():
    """Ray runs an async actor's calls in any order: an older version arriving after a newer one must not
    take the signal back (wait trials then blocked until their limit)."""
    from study.waits import PlanSignal

    signal = PlanSignal.remote(0)
    ray.get(signal.set.remote(2))
    ray.get(signal.set.remote(1))  # the late one
    assert ray.get(signal.wait.remote(1, 0.0)) == 2
