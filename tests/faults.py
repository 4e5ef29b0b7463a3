"""Trainables injected from outside the study: one that kills its worker process once, one that meets.

The study has no setting for these. A test swaps `study.trainable.study_trial` for one of them
(monkeypatch); each runs the study's own trial function otherwise.
- `dying_once(...)` kills its worker the first time it meets a trial of `method`, as an
  out-of-memory kill or a lost node does. The marker file says that it fired (once, across
  retries and workers).
- `meeting(...)` holds the study's first `count` trials until all of them have started, so a test
  sees that they ran at the same time from a state (each one saw the others arrive), not from clocks.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import ray.cloudpickle

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import the tests


def _die_once(marker: str) -> None:
    if not os.path.exists(marker):
        Path(marker).write_text("killed once")
        os._exit(3)  # a dying worker, as Tune sees one


def dying_once(method: str, marker: str, bundled: bool = False):
    """A study trainable whose worker dies once on a trial of `method`; with `bundled`, only on one that runs
    in a bundle, after the bundle's first item has run (a worker lost mid-bundle)."""

    def trial(config: dict, data=None, settings=None) -> None:
        from ray import tune

        from study.trainable import study_trial
        from trainables.bundle import bundle_items, run_bundle
        from trainables.trial import TrialSpec, run_trial

        items = bundle_items(config)
        if items is None:
            if not bundled and config.get("method") == method:
                _die_once(marker)
            return study_trial(config, data, settings)

        def item(position: int, spec: dict) -> dict:
            if position > 0 and spec["method"] == method:
                _die_once(marker)
            return run_trial(TrialSpec.of(spec), settings, data)

        numbered = iter(range(len(items)))
        tune.report(run_bundle(items, lambda spec: item(next(numbered), spec)))

    return trial


def meeting(folder: str, count: int, limit: float = 300.0):
    """A study trainable whose first `count` trials (any stage) each take a seat `folder/seat-<i>` and wait
    until every seat is taken; a trial that saw all `count` seats taken writes `folder/met-<i>`. `limit`
    only keeps a study that cannot run them together from hanging: it then ends without `met` files."""

    def trial(config: dict, data=None, settings=None) -> None:
        from study.trainable import study_trial

        seat = None
        for i in range(count):
            try:
                os.close(os.open(os.path.join(folder, f"seat-{i}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                seat = i
                break
            except FileExistsError:
                continue
        if seat is not None:
            seats = [os.path.join(folder, f"seat-{i}") for i in range(count)]
            deadline = time.monotonic() + limit
            while not all(os.path.exists(p) for p in seats) and time.monotonic() < deadline:
                time.sleep(0.05)
            if all(os.path.exists(p) for p in seats):
                Path(folder, f"met-{seat}").write_text("every seat was taken while this trial waited")
        return study_trial(config, data, settings)

    return trial
