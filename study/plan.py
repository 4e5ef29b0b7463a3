"""The study's Tune searcher: the plan that hands out every stage's trials.

One run means the worker processes (their imports, the data set, the base checkpoints)
last the whole study. `StudyPlan` is Tune's searcher: it asks the stages in order for a
trial whenever a slot is free. What Ray runs for each trial is `study.trainable`'s; the
scheduler is `study.scheduler`'s; `study.context.StudyContext` builds the stages and runs them.

A trial's life, each step in one place:
0. `StudyPlan.suggest` (Tune's thread) asks the stages in order; `Stage.take` hands the trial out and
   counts it issued and live.
1. Tune reports its end: `StudyPlan.on_trial_complete` (Tune's thread) calls `Stage.ended`, which frees
   its slot in the stage (the stage may complete; that, or the end of a trial another stage `needs`, wakes the wait trials). A search stage
   also notes the objectives for Optuna.
2. `tracking.TrackingCallback` writes its MLflow run; the writer's acknowledgement (the writer's thread)
   calls `StudyPlan.trial_recorded` -> `Stage.recorded`: a search stage tells Optuna (whichever of steps 1
   and 2 comes second does, so Optuna and MLflow agree one to one), then the stage counts it done and
   prints progress.
The slot is freed at step 1, not after the write, so a trial's successor never waits for the store.
"""

from __future__ import annotations

import os

import ray
from ray.tune.search import Searcher

from trainables.bundle import bundle_config
from trainables.records import ITEM_SECONDS, ITEMS, WAIT_STAGE
from trainables.trial import TrialSpec

from .stages import SearchStage, Stage

TIMED_BEFORE_BUNDLING = 3  # a stage's trials that must have ended before its typical length is trusted
BRIEF = 0.1  # a bundle shorter than this fraction of bundle_seconds is never split for the tail's sake
MAX_BUNDLE = 32  # trials per bundle at most: what a lost worker takes with it stays small


class StudyPlan(Searcher):
    """Every stage of the study as one Tune run.

    One run means the worker processes (and their imports, data and checkpoints) last the
    whole study, and a trial starts as soon as what it needs exists: the base models of
    its seed, or for the confirm stage the searches' results. Stages are asked in list
    order, so the earlier ones (base, then the searches) go first and the baselines fill
    the slots that would otherwise wait, e.g. while the search's last trials finish.

    When a slot is free but no trial can start yet, the plan hands out a wait trial that
    holds the worker until a trial ends (the version in `marker` changes). Answering
    "nothing yet" instead would cost workers: Tune then keeps one finished worker for
    reuse and stops the others, and a replacement, which must import PyTorch, loses every
    race against the next reused worker when trials are shorter than its start-up, so the
    run falls to one trial at a time (seen on 2 CPUs and on a two-node cluster).

    When a stage's trials are short (shorter than half of `bundle_seconds`, judged from its
    last ended ones), a slot gets a bundle of them as one Tune trial (`bundle_size`,
    `trainables.bundle`): Tune's own cost per trial, which then would set the pace, is paid
    once per bundle. Each item has its own id (`<tune trial id>#<i>`), ends on its own in
    the stages (Optuna is told of each), and is recorded as its own MLflow run.

    Resumes come from MLflow (finished trial keys) and the Optuna journal, so Tune's
    searcher checkpoint is not written.
    """

    def __init__(self, stages: list[Stage], marker: str | os.PathLike | None = None, slots: int = 1,
                 bundle_seconds: float = 0.0, signal: str | None = None):
        super().__init__()
        labels = [s.label for s in stages]
        missing = {a for i, s in enumerate(stages) for a in s.after if a not in labels[:i]}
        if len(set(labels)) != len(labels) or missing:
            raise ValueError(f"stages must have distinct labels and wait only for earlier ones: {labels}")
        self.stages, self.owner = stages, {}
        self.marker, self.version, self.waiting = marker, 0, set()
        self.signal, self._signal = signal, None  # the study's `PlanSignal` actor (study.waits): name, handle
        self.slots, self.bundle_seconds = max(1, slots), bundle_seconds
        self.bundles: dict[str, list[str]] = {}  # Tune trial id -> its items' ids (see trainables.bundle)
        # Stages whose trials, as they end, can let another stage's trials start (some stage `needs` them).
        self.providers = {s.needs.label for s in stages if s.needs is not None}
        self._publish()

    def _publish(self) -> None:
        if self.marker is not None:
            tmp = f"{self.marker}.tmp"
            with open(tmp, "w") as f:
                f.write(str(self.version))
            os.replace(tmp, self.marker)
        if self.signal is not None:
            # Fire and forget, in order (one caller, one actor). A dead actor does not fail this call: the
            # wait trials find it dead and read the marker file instead (study.waits).
            try:
                if self._signal is None:
                    self._signal = ray.get_actor(self.signal)
            except ValueError:  # never created (or gone before the first publish): the file alone from now on
                self.signal = None
                return
            self._signal.set.remote(self.version)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def bundle_size(self, stage: Stage) -> int:
        """Trials of `stage` per Tune trial: 1, or as many as fill `bundle_seconds` when the stage's trials
        are shorter than that (typical of its last ended ones), never more than an even share of what is
        left across the slots, so that the last trials still run side by side; unless the bundle is brief
        (under `BRIEF` of `bundle_seconds`): then the tail it could add is as short, and trials handed out
        one or two at a time would cost the driver more than the slots gain (measured with
        `bench/driver.py`, docs/benchmarks.md)."""
        if self.bundle_seconds <= 0 or (typical := stage.typical_seconds(TIMED_BEFORE_BUNDLING)) is None:
            return 1
        share = -(-stage.to_issue // self.slots)
        fill = self.bundle_seconds / max(typical, 1e-3)  # trials that fill bundle_seconds
        return max(1, min(MAX_BUNDLE, int(fill), max(share, int(BRIEF * fill))))

    def _take(self, stage: Stage, trial_id: str) -> dict | None:
        if (config := stage.take(trial_id)) is not None:
            self.owner[trial_id] = stage
        return config

    def suggest(self, trial_id: str):
        by_label = {s.label: s for s in self.stages}
        for s in self.stages:  # in order: a stage activated here may let a later one start at once
            if not s.active and all(by_label[a].complete for a in s.after):
                s.activate()
        if all(s.complete for s in self.stages):
            return Searcher.FINISHED
        for stage in self.stages:
            if not stage.active:
                continue
            if (size := self.bundle_size(stage)) == 1:
                if (config := self._take(stage, trial_id)) is not None:
                    return config
                continue
            items = []
            for i in range(size):
                if (config := self._take(stage, f"{trial_id}#{i}")) is None:
                    break
                items.append((f"{trial_id}#{i}", config))
            if items:
                self.bundles[trial_id] = [item_id for item_id, _ in items]
                return bundle_config(items)
        if self.marker is not None and any(not s.active or s.to_issue > 0 for s in self.stages):
            self.waiting.add(trial_id)  # more trials will come once a running one ends
            where = {"marker": str(self.marker), **({"signal": self.signal} if self.signal else {})}
            return TrialSpec(WAIT_STAGE, WAIT_STAGE, 0, wait={"version": self.version, **where}).config()
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(stage := self.owner.get(trial_id), SearchStage):
            stage.on_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.waiting:
            self.waiting.discard(trial_id)
            return
        if trial_id in self.bundles:
            reports = (result or {}).get(ITEMS) or []
            ended = [(item_id, reports[i] if i < len(reports) else None)
                     for i, item_id in enumerate(self.bundles.pop(trial_id))]
        else:
            ended = [(trial_id, result)]
        # Only an end that can let trials start (a provider stage's, a stage completing) wakes the wait trials:
        # waking them on every end would restart every idle slot's wait trial each time, work that grows
        # with the slots.
        wake = False
        for item_id, report in ended:
            if (stage := self.owner.get(item_id)) is None:
                continue
            seconds = (report or {}).get(ITEM_SECONDS, (report or {}).get("time_total_s"))
            completed = stage.ended(item_id, report, error or report is None,
                                    float(seconds) if isinstance(seconds, (int, float)) else None)
            wake |= completed or stage.label in self.providers
        if wake:
            self.version += 1
            self._publish()  # the wait trials end; the plan is asked again

    def trial_recorded(self, trial, ok: bool, run_id: str | None = None) -> None:
        """Step 2 of a trial's end, from the tracking callback (module docstring)."""
        if (stage := self.owner.get(trial.trial_id)) is not None:
            stage.recorded(trial, ok, run_id)

    def save_to_dir(self, *args, **kwargs) -> None:
        pass
