"""Faults injected from outside the study: a trainable that kills its worker process once.

The study has no setting for this. A test swaps `study.plan.study_trial` for `dying_once(...)`
(monkeypatch): the trainable Tune runs then kills its worker the first time it meets a trial
of `method`, as an out-of-memory kill or a lost node does, and runs the study's own trial
function otherwise. The marker file says that it fired (once, across retries and workers).
"""

from __future__ import annotations

import os
import sys
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

        from study.plan import study_trial
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
