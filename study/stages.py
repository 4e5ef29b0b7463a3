"""The study's stages, base, baseline, gli (Optuna) and confirm, as one Ray Tune run of one trainable.

A trial starts as soon as what it needs exists (a seed's baseline and GLI trials need
that seed's base models; the confirm stage needs the searches' results), so stages
share the slots instead of each waiting for the last one's tail. Every stage skips the
trials MLflow already holds as finished (by trial key), and the Optuna searches continue
from their journal file, so a rerun resumes a study rather than repeating it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from trainables.base import default_configs
from trainables.data import Dataset
from trainables.methods import resolved_hparams
from trainables.runner import RunnerConfig
from trainables.trainable import WAIT_STAGE, unlearning_trial

from .cluster import trial_resources
from .config import StudyConfig
from .tracking import Tracker, TrackingCallback, trial_key

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the study prints its own progress lines instead
optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVES = {
    "pareto": (["sel_accuracy", "sel_forgetting_score"], ["max", "min"]),
    "final_score": ("sel_final_score", "max"),
}


class StudySearch(OptunaSearch):
    """OptunaSearch that records errored trials and non-finite objectives as FAIL.

    The stock searcher tells Optuna COMPLETE whenever the last result holds the
    objectives, which an errored trial's intermediate report can; a diverged trial
    must never reach the front.
    """

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        values = [(result or {}).get(m) for m in metrics]
        final = (result or {}).get("final") == 1.0
        if error or not final or any(v is None or not math.isfinite(v) for v in values):
            self._ot_study.tell(self._ot_trials[trial_id], None, state=TrialState.FAIL)
        else:
            self._ot_study.tell(self._ot_trials[trial_id], values if len(values) > 1 else values[0])
        self._completed_trials.add(trial_id)


class Stage:
    """One stage of the study's single Tune run, handing out trial configs when they can run.

    A stage is activated once the stages named in `after` are complete (so it may be built
    from their results); activation decides how many trials are left to run. A trial of
    seed s waits for `needs(s)` (the base models of that seed), not for a whole stage. A
    stage is complete when it has handed out all its trials and every one has ended.
    """

    def __init__(self, stage: str, label: str, after: tuple[str, ...] = (), needs=None):
        self.stage, self.label, self.after, self.needs = stage, label, tuple(after), needs
        self.active = False
        self.planned = self.issued = self.done = self.failed = 0
        self.live: dict[str, int] = {}  # trial id -> seed
        self.best, self.started = -math.inf, 0.0

    @property
    def complete(self) -> bool:
        return self.active and self.issued >= self.planned and not self.live

    def activate(self) -> None:
        self.active, self.started = True, time.time()
        self.planned = self._plan()
        if self.planned:
            print(f"[study] stage {self.label}: {self.planned} trial(s)", file=sys.stderr, flush=True)

    def next_config(self, trial_id: str) -> dict | None:
        return self._suggest(trial_id) if self.issued < self.planned else None

    def ready(self, seed: int) -> bool:
        return self.needs is None or self.needs(seed)

    def ended(self, trial_id: str, result: dict | None, error: bool) -> None:
        self.live.pop(trial_id, None)

    def trial_done(self, trial, ok: bool) -> None:
        """Progress, once the trial is recorded in MLflow."""
        self.done += 1
        self.failed += not ok
        score = (trial.last_result or {}).get("sel_final_score", -math.inf) if ok else -math.inf
        self.best = max(self.best, score if math.isfinite(score) else -math.inf)
        best = f"; best selection final score {self.best:.4f}" if math.isfinite(self.best) else ""
        failed = f" ({self.failed} failed)" if self.failed else ""
        print(f"[study] {self.label}: {self.done}/{self.planned} done{failed}{best} [{time.time() - self.started:.0f}s]",
              file=sys.stderr, flush=True)

    def _plan(self) -> int:
        raise NotImplementedError

    def _suggest(self, trial_id: str) -> tuple[dict, int] | None:
        raise NotImplementedError


class GridStage(Stage):
    """One trial per {method, seed, hparams} entry, skipping those MLflow holds as finished.

    `runs` may be a function, called on activation: the confirm stage's settings exist
    only once the searches have ended.
    """

    def __init__(self, ctx: "StudyContext", stage: str, runs, after: tuple[str, ...] = (), needs=None):
        super().__init__(stage, stage, after, needs)
        self.ctx, self.runs, self.pending = ctx, runs, []

    def _plan(self) -> int:
        runs = self.runs() if callable(self.runs) else self.runs
        done = self.ctx.tracker.finished_keys()
        self.pending = [r for r in runs if self.ctx.key(self.stage, r["method"], r["seed"], r["hparams"]) not in done]
        if len(self.pending) < len(runs):
            print(f"[study] stage {self.stage}: {len(runs) - len(self.pending)} of {len(runs)} trial(s) already finished",
                  file=sys.stderr, flush=True)
        return len(self.pending)

    def _suggest(self, trial_id: str) -> tuple[dict, int] | None:
        for i, run in enumerate(self.pending):
            if self.ready(run["seed"]):
                del self.pending[i]
                return {"stage": self.stage, "run": run}, run["seed"]
        return None

    def seed_done(self, seed: int) -> bool:
        """Every trial of `seed` has ended (the base models of that seed exist)."""
        return (self.active and all(r["seed"] != seed for r in self.pending)
                and seed not in self.live.values())


class SearchStage(Stage):
    """An Optuna search for one method on the first seed, resumable from the journal file."""

    def __init__(self, ctx: "StudyContext", stage: str, method: str, space, point: dict | None, budget: int,
                 after: tuple[str, ...] = (), needs=None):
        super().__init__(stage, stage if stage == method else f"{stage}-{method}", after, needs)
        self.ctx, self.method, self.space, self.point, self.budget = ctx, method, space, point, budget
        self.study: optuna.Study | None = None
        self.searcher: StudySearch | None = None

    def _plan(self) -> int:
        cfg = self.ctx.cfg
        metric, mode = OBJECTIVES[cfg.objective]
        storage = JournalStorage(JournalFileBackend(f"{cfg.results_dir}/optuna.journal"))
        study_name = f"{cfg.experiment_name}-{self.method}-{cfg.objective}"
        directions = ["maximize", "minimize"] if isinstance(mode, list) else ["maximize"]
        study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True, directions=directions)
        self.study = study
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # Left behind by a killed study: it will never report. Closed as failed, marked so that
            # it does not use up the budget (its setting may be drawn again).
            storage.set_trial_system_attr(t._trial_id, "interrupted", True)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        finished = len([t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
                        if not t.system_attrs.get("interrupted")])
        remaining = self.budget - finished
        if remaining <= 0:
            print(f"[study] stage {self.stage} ({self.method}): all {self.budget} trials already in the Optuna study",
                  file=sys.stderr, flush=True)
            return 0
        self.searcher = StudySearch(
            space=self.space, metric=metric, mode=mode, study_name=study_name, storage=storage,
            sampler=optuna.samplers.TPESampler(seed=cfg.sampler_seed + finished),
            points_to_evaluate=[self.point] if self.point and not study.trials else None,  # enqueued once, ever
        )
        return remaining

    def _suggest(self, trial_id: str) -> tuple[dict, int] | None:
        if not self.ready(0):
            return None
        params = self.searcher.suggest(trial_id)
        if params is None or params == Searcher.FINISHED:
            if not self.live:
                self.planned = self.issued  # nothing running and nothing more to give: never wait forever
            return None
        config = {"stage": self.stage, "method": self.method, "seed": 0,
                  "hparams": self.ctx.fixed_hparams(self.method), **params}
        return config, 0

    def on_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def ended(self, trial_id: str, result: dict | None, error: bool) -> None:
        super().ended(trial_id, result, error)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)


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

    Resumes come from MLflow (finished trial keys) and the Optuna journal, so Tune's
    searcher checkpoint is not written.
    """

    def __init__(self, stages: list[Stage], marker: str | os.PathLike | None = None):
        super().__init__()
        labels = [s.label for s in stages]
        missing = {a for i, s in enumerate(stages) for a in s.after if a not in labels[:i]}
        if len(set(labels)) != len(labels) or missing:
            raise ValueError(f"stages must have distinct labels and wait only for earlier ones: {labels}")
        self.stages, self.owner = stages, {}
        self.marker, self.version, self.waiting = marker, 0, set()
        self._publish()

    def _publish(self) -> None:
        if self.marker is not None:
            tmp = f"{self.marker}.tmp"
            with open(tmp, "w") as f:
                f.write(str(self.version))
            os.replace(tmp, self.marker)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        by_label = {s.label: s for s in self.stages}
        for s in self.stages:  # in order: a stage activated here may let a later one start at once
            if not s.active and all(by_label[a].complete for a in s.after):
                s.activate()
        if all(s.complete for s in self.stages):
            return Searcher.FINISHED
        for stage in self.stages:
            if stage.active and (given := stage.next_config(trial_id)) is not None:
                config, seed = given
                stage.issued += 1
                stage.live[trial_id] = seed
                self.owner[trial_id] = stage
                return config
        if self.marker is not None and any(not s.active or s.issued < s.planned for s in self.stages):
            self.waiting.add(trial_id)  # more trials will come once a running one ends
            return {"stage": WAIT_STAGE, "version": self.version}
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(stage := self.owner.get(trial_id), SearchStage):
            stage.on_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.waiting:
            self.waiting.discard(trial_id)
        elif (stage := self.owner.get(trial_id)) is not None and trial_id in stage.live:
            stage.ended(trial_id, result, error)
            self.version += 1
            self._publish()  # the wait trials end; the plan is asked again

    def trial_done(self, trial, ok: bool) -> None:
        if (stage := self.owner.get(trial.trial_id)) is not None:
            stage.trial_done(trial, ok)

    def save_to_dir(self, *args, **kwargs) -> None:
        pass


@dataclass
class StudyContext:
    cfg: StudyConfig
    data: Dataset
    tracker: Tracker
    slots: int
    trainable: object = None

    def __post_init__(self):
        # One object-store copy of the data set for every stage's trials.
        self.trainable = tune.with_resources(tune.with_parameters(unlearning_trial, data=self.data),
                                             trial_resources(self.cfg))

    @property
    def settings(self) -> dict:
        model_cfg, train_cfg = default_configs(self.data.name)
        if self.cfg.base_epochs:
            train_cfg.epochs = self.cfg.base_epochs
        runner = RunnerConfig(eval_every=self.cfg.eval_every, selection=self.cfg.selection, patience=self.cfg.patience)
        return {"models_dir": self.cfg.models_dir, "model": asdict(model_cfg), "train": asdict(train_cfg),
                "runner": asdict(runner), "cpus_per_trial": self.cfg.cpus_per_trial,
                "fault_injection": self.cfg.fault_injection}

    def fixed_hparams(self, method: str | None = None) -> dict:
        """Settings every trial of `method` gets: the smoke test's epochs, then the user's overrides."""
        fixed = {"epochs": self.cfg.method_epochs} if self.cfg.method_epochs else {}
        return {**fixed, **self.cfg.method_hparams.get(method or "", {})}

    def key(self, stage: str, method: str, seed: int, hparams: dict) -> str:
        return trial_key(stage, method, seed, resolved_hparams(method, self.data.name, **hparams))

    def grid(self, stage: str, runs, after: tuple[str, ...] = (), needs=None) -> GridStage:
        return GridStage(self, stage, runs, after, needs)

    def search(self, stage: str, method: str, space, point: dict | None, budget: int, needs=None) -> SearchStage:
        return SearchStage(self, stage, method, space, point, budget, needs=needs)

    def run(self, stages: list[Stage]) -> None:
        """All stages in one Tune run (worker processes reused throughout)."""
        marker = Path(self.cfg.storage_path) / f"{self.cfg.experiment_name}.plan"  # shared by every node
        marker.parent.mkdir(parents=True, exist_ok=True)
        plan = StudyPlan(stages, marker)
        tuner = tune.Tuner(
            self.trainable,
            param_space={"settings": {**self.settings, "plan_marker": str(marker)}},
            tune_config=tune.TuneConfig(search_alg=plan, num_samples=-1, max_concurrent_trials=self.slots,
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name="study", storage_path=self.cfg.storage_path, verbose=0,
                callbacks=[TrackingCallback(self.tracker, self.data.name, plan.trial_done)],
                failure_config=tune.FailureConfig(max_failures=self.cfg.max_failures),
            ),
        )
        tuner.fit()
