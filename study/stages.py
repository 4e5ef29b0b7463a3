"""The study's stages as Ray Tune runs of one trainable: base, baseline, gli (Optuna), confirm.

Every stage skips the trials MLflow already holds as finished (by trial key), and the
Optuna searches continue from their journal file, so a rerun resumes a study rather
than repeating it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from trainables.base import default_configs
from trainables.data import Dataset
from trainables.methods import resolved_hparams
from trainables.runner import RunnerConfig
from trainables.trainable import unlearning_trial

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


@dataclass
class Progress:
    stage: str = ""
    planned: int = 0
    done: int = 0
    failed: int = 0
    best: float = -math.inf
    started: float = field(default_factory=time.time)

    def begin(self, stage: str, planned: int) -> None:
        self.stage, self.planned, self.done, self.failed, self.best, self.started = stage, planned, 0, 0, -math.inf, time.time()
        print(f"[study] stage {stage}: {planned} trial(s)", file=sys.stderr, flush=True)

    def trial_done(self, trial, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        score = (trial.last_result or {}).get("sel_final_score", -math.inf) if ok else -math.inf
        self.best = max(self.best, score if math.isfinite(score) else -math.inf)
        best = f"; best selection final score {self.best:.4f}" if math.isfinite(self.best) else ""
        failed = f" ({self.failed} failed)" if self.failed else ""
        print(f"[study] {self.stage}: {self.done}/{self.planned} done{failed}{best} [{time.time() - self.started:.0f}s]",
              file=sys.stderr, flush=True)


@dataclass
class StudyContext:
    cfg: StudyConfig
    data: Dataset
    tracker: Tracker
    slots: int
    progress: Progress = field(default_factory=Progress)
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

    def _fit(self, stage: str, name: str, param_space: dict, planned: int, search=None, samples: int = 1) -> None:
        self.progress.begin(stage, planned)
        tuner = tune.Tuner(
            self.trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(search_alg=search, num_samples=samples, max_concurrent_trials=self.slots,
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=name, storage_path=self.cfg.storage_path, verbose=0,
                callbacks=[TrackingCallback(self.tracker, self.data.name, self.progress.trial_done)],
                failure_config=tune.FailureConfig(max_failures=self.cfg.max_failures),
            ),
        )
        tuner.fit()

    def run_grid(self, stage: str, runs: list[dict]) -> None:
        """One trial per entry of `runs` ({method, seed, hparams}), skipping those already finished."""
        done = self.tracker.finished_keys()
        pending = [r for r in runs if self.key(stage, r["method"], r["seed"], r["hparams"]) not in done]
        if len(pending) < len(runs):
            print(f"[study] stage {stage}: {len(runs) - len(pending)} of {len(runs)} trial(s) already finished",
                  file=sys.stderr)
        if pending:
            space = {"stage": stage, "settings": self.settings, "run": tune.grid_search(pending)}
            self._fit(stage, stage, space, len(pending))

    def run_search(self, stage: str, method: str, space, point: dict | None, budget: int) -> optuna.Study:
        """An Optuna search over `space` for `method` on the first seed, resumable from its journal."""
        metric, mode = OBJECTIVES[self.cfg.objective]
        storage = JournalStorage(JournalFileBackend(f"{self.cfg.results_dir}/optuna.journal"))
        study_name = f"{self.cfg.experiment_name}-{method}-{self.cfg.objective}"
        directions = ["maximize", "minimize"] if isinstance(mode, list) else ["maximize"]
        study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True, directions=directions)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # Left behind by a killed study: it will never report. Closed as failed, marked so that
            # it does not use up the budget (its setting may be drawn again).
            storage.set_trial_system_attr(t._trial_id, "interrupted", True)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        finished = len([t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
                        if not t.system_attrs.get("interrupted")])
        remaining = budget - finished
        if remaining <= 0:
            print(f"[study] stage {stage} ({method}): all {budget} trials already in the Optuna study", file=sys.stderr)
            return study
        search = StudySearch(
            space=space, metric=metric, mode=mode, study_name=study_name, storage=storage,
            sampler=optuna.samplers.TPESampler(seed=self.cfg.sampler_seed + finished),
            points_to_evaluate=[point] if point and not study.trials else None,  # enqueued once, ever
        )
        param_space = {"stage": stage, "method": method, "seed": 0, "settings": self.settings,
                       "hparams": self.fixed_hparams(method)}
        self._fit(stage, f"{stage}-{method}", param_space, remaining, search=search, samples=remaining)
        return study
