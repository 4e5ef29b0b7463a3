"""Tune's experiment state holds no per-example arrays (issue 36): the tracking callback takes them out of each
report before Tune keeps it as the trial's `last_result`, and hands them to the trial's MLflow write at its end.

A real Tune run (one trial and one bundle of two) with the study's `TrackingCallback` and a tracker that keeps
what it is asked to write: Tune wrote every trial's arrays into `experiment_state-*.json` on every save.
"""

from __future__ import annotations

import sys

import pytest
import ray
import ray.cloudpickle
from ray import tune
from ray.tune.search import Searcher

from study.callback import TrackingCallback
from trainables.records import PER_EXAMPLE as ARRAYS
from trainables import records
from trainables.bundle import bundle_config
from trainables.trial import TrialSpec

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
N = 50  # examples per array


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def _report(i: int, audit: bool) -> dict:
    report = {records.FINAL: 1.0, records.SEL_FINAL: 0.5 + i / 10, "accuracy": 0.9, "steps": 3,
              records.FORGET_LOSSES: [i + k / N for k in range(N)], records.UNSEEN_LOSSES: [2.0 + i] * N}
    if audit:
        report.update({records.FORGET_SCORES: [0.25 + i] * N, records.SHADOW_MEMBERS: [k % 2 for k in range(N)]})
    return report


def trial(config: dict) -> None:
    if config["stage"] == records.BUNDLE_STAGE:
        tune.report({records.ITEMS: [{**_report(item["config"]["seed"], audit=True), records.ITEM_SECONDS: 0.1}
                                     for item in config[records.ITEMS]]})
    else:
        tune.report(_report(config["seed"], audit=False))


def _spec(seed: int) -> dict:
    return TrialSpec("baseline", "finetune", seed, {"epochs": 1}).config()


class Given(Searcher):
    """One trial, then a bundle of two; keeps what Tune tells it of their ends (a search stage tells Optuna)."""

    def __init__(self):
        super().__init__()
        self.configs = [_spec(0), bundle_config([("b#0", _spec(1)), ("b#1", _spec(2))])]
        self.ended: list[dict] = []

    def suggest(self, trial_id):
        return self.configs.pop(0) if self.configs else Searcher.FINISHED

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.ended.append(result or {})


class Kept:
    """A tracker that keeps the writes it is asked for, as the writer's queue holds them until they are sent."""

    def __init__(self):
        self.written: dict[str, dict] = {}

    def open_child(self, key, stage, method, seed, params, trial_id, first=None):
        return trial_id

    def log(self, handle, metrics=None, step=0, tags=None):
        pass

    def finish(self, handle, status, metrics=None, step=0, tags=None, arrays=None, curve=None, then=None):
        self.written[handle] = {"status": status, "arrays": arrays}
        then("run")

    def write_ended(self, key, stage, method, seed, params, trial_id, status, metrics=None, step=0, tags=None,
                    arrays=None, curve=None, started=None, ended=None, then=None):
        self.written[trial_id] = {"status": status, "arrays": arrays}
        then("run")


def test_the_experiment_state_holds_no_arrays_and_the_runs_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # as the study: no per-trial CSV/JSON copies
    tracker, searcher = Kept(), Given()
    callback = TrackingCallback(tracker, "digits", {"baseline"})
    tune.Tuner(trial, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, max_concurrent_trials=1),
               run_config=tune.RunConfig(name="state", storage_path=str(tmp_path), verbose=0,
                                         callbacks=[callback])).fit()

    folder = tmp_path / "state"
    [state] = folder.glob("experiment_state-*.json")
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert state in files
    for path in files:  # the experiment state, the trials' state, the searcher's, the tuner's
        text = path.read_bytes()
        assert not [k for k in ARRAYS if k.encode() in text], path.name
    assert all(not set(ARRAYS) & set(result) for result in searcher.ended)  # what a search stage tells Optuna
    assert [r.get(records.SEL_FINAL) for r in searcher.ended[:1]] == [0.5]

    # ... and every trial's run got its arrays whole, after Tune dropped them
    assert sorted(tracker.written) == sorted([next(iter(tracker.written)), "b#0", "b#1"])
    assert all(w["status"] == "FINISHED" for w in tracker.written.values())
    single = next(w for k, w in tracker.written.items() if "#" not in k)
    assert single["arrays"] == {records.LOSSES_ARTIFACT: {"forget": [k / N for k in range(N)], "unseen": [2.0] * N}}
    item = tracker.written["b#1"]["arrays"]
    assert item[records.LOSSES_ARTIFACT]["forget"] == [2 + k / N for k in range(N)]
    assert item[records.SCORES_ARTIFACT] == {"forget": [2.25] * N, "member": [k % 2 for k in range(N)]}
    assert not callback.arrays  # nothing kept past the trials' ends
