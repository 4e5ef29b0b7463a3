"""`StudyContext`: one study's settings, data, tracker and slots; it builds the stages and runs them as one
Tune run (`StudyPlan` as the searcher, `study_trial` as the trainable)."""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from trainables import engine
from trainables.base_models import default_configs
from trainables.data import Dataset
from trainables.methods import resolved_hparams
from trainables.records import trial_key
from trainables.trial import TrialSettings
from trainables.unlearn import EvalConfig

from .cluster import trial_resources
from .config import StudyConfig, data_config
from .plan import StudyPlan
from .scheduler import SpareStartingWorkers
from .stages import GridStage, SearchStage, Stage
from .callback import TrackingCallback
from .tracking import Tracker
from . import trainable as trial_fn
from .trainable import StudyJsonLogger
from .waits import PlanSignal

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the study prints its own progress lines instead
# Tune's default loggers write every report three times (CSV, JSON, TensorBoard, the last with an fsync
# per flush): half the driver's time per report (bench/driver.py). MLflow holds the study's record;
# the JSON log (result.json per trial) is kept, added explicitly in `StudyContext.run`.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


@dataclass
class StudyContext:
    cfg: StudyConfig
    data: Dataset
    tracker: Tracker
    slots: int
    settings: TrialSettings = field(init=False)
    trainable: Any = None  # what Tune runs for each trial (default `study_trial`; bench/driver.py a stand-in)
    started: float = field(default_factory=time.time)  # the study's clock, for every progress line
    study_key: str = ""  # the study key (`study.pipeline.study_key`): names its Optuna studies, journal and Tune folder

    def __post_init__(self):
        self.dataset = self.data.name
        model_cfg, recipe = default_configs(self.data.name, self.cfg.width, self.cfg.base_epochs)
        evaluation = EvalConfig(protocol=self.cfg.protocol, eval_every=self.cfg.eval_every, patience=self.cfg.patience,
                                bootstrap=self.cfg.bootstrap)
        self.settings = TrialSettings(models_dir=self.cfg.models_dir, model=model_cfg, train=recipe,
                                      evaluation=evaluation, threads=self.cfg.trial_threads,
                                      accel=engine.Accel.exact() if self.cfg.deterministic else engine.Accel(),
                                      data=data_config(self.cfg))

    def __getstate__(self) -> dict:
        """Tune pickles its searcher, the plan, whose stages hold this context: the data set (hundreds of MB
        on MUFAC) and the trainable stay behind; workers get the data through Ray's object store."""
        return {**self.__dict__, "data": None, "trainable": None}

    def fixed_hparams(self, method: str | None = None) -> dict:
        """Settings every trial of `method` gets: the smoke test's epochs, then the user's overrides."""
        fixed = {"epochs": self.cfg.method_epochs} if self.cfg.method_epochs else {}
        return {**fixed, **self.cfg.method_hparams.get(method or "", {})}

    def key(self, stage: str, method: str, seed: int, hparams: dict, replicate: int | None = None) -> str:
        return trial_key(stage, method, seed, resolved_hparams(method, self.dataset, **hparams), replicate)

    def grid(self, stage: str, runs, after: tuple[str, ...] = (), needs: GridStage | None = None,
             label: str | None = None) -> GridStage:
        return GridStage(self, stage, runs, after, needs, label)

    def search(self, stage: str, method: str, space, point: dict | None, budget: int,
               needs: GridStage | None = None) -> SearchStage:
        return SearchStage(self, stage, method, space, point, budget, needs=needs)

    def run(self, stages: list[Stage]) -> None:
        """All stages in one Tune run (worker processes reused throughout)."""
        name = f"{self.cfg.experiment_name}-{self.study_key}" if self.study_key else self.cfg.experiment_name  # one folder a study
        marker = Path(self.cfg.storage_path) / f"{name}.plan"  # shared by every node
        marker.parent.mkdir(parents=True, exist_ok=True)
        # Wait trials block on this actor (study.waits): named per launcher process, so two studies never share one.
        signal = f"study-plan-{os.getpid()}-{self.cfg.experiment_name}"
        # On the launcher's own node: a node taken back mid-study must not take the signal with it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        actor = PlanSignal.options(name=signal, scheduling_strategy=here).remote(0)
        plan = StudyPlan(stages, marker, self.slots, self.cfg.bundle_seconds, signal)
        # The data set and the shared settings reach every worker once, through the object store.
        trainable = self.trainable or tune.with_parameters(trial_fn.study_trial, data=self.data, settings=self.settings)
        trainable = tune.with_resources(trainable, trial_resources(self.cfg))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=plan, scheduler=SpareStartingWorkers(), num_samples=-1,
                                        max_concurrent_trials=self.slots, reuse_actors=True),
            run_config=tune.RunConfig(
                # one folder per study: two studies may share a storage path and an experiment name
                name=name, storage_path=self.cfg.storage_path, verbose=0,
                callbacks=[TrackingCallback(self.tracker, self.data.name, {s.stage for s in stages}, plan.trial_recorded),
                           StudyJsonLogger()],
                failure_config=tune.FailureConfig(max_failures=self.cfg.max_failures),
            ),
        )
        try:
            tuner.fit()
        finally:
            try:
                ray.kill(actor)
            except ValueError:  # Ray already stopped (an interrupt): the actor went with it; keep the first error
                pass
        # Tune's controller leaves cycles holding Ray object references (seen: the controller, its trials, 15
        # ObjectRefs after the smoke study). Collected later, on whichever thread allocates, after Ray has
        # stopped (the launcher stops it while the report is built), their finalizers reach a core worker
        # that is gone and the process exits with code 1 (once in three default studies). Collected now.
        del tuner
        gc.collect()
