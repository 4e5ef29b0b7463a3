"""One trial of the study, as Ray Tune runs it: a base model, a baseline, a GLI setting or a confirmation.

Every trial's config has one shape, `TrialSpec` (stage, method, seed, hparams). A trial's
seed is its replicate: split seed r and training seed r together (the audit's models alone
share one replicate's split, `replicate`). What
every trial shares, `TrialSettings` (model, base training, evaluation, where the base
checkpoints live), and the decoded data set reach the worker once, beside the config
(`tune.with_parameters`). `run_trial` takes the base models from the shared checkpoint
folder (trained there by the base stage), and returns the flat metrics dict that the
trainable (`study.trainable.study_trial`) reports: one report, at the end, holding every
objective, every final metric and the curve (the selection metrics at each evaluation).
One report rather than one per evaluation: each report costs the driver a round trip
and its processing (`bench/driver.py`), and nothing reads the curve before the trial ends.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import engine
from .base_models import BaseRecipe, base_model, checkpoint_path
from .data import DataConfig, Dataset, for_replicate
from .audit import audit_scores, shadow_dataset, shadow_member_mask
from .methods import REFERENCE_ROWS, create
from .records import (ACCEL_TAG, AUDIT_STAGE, BANK_TAG, CURVE, ERROR, FINAL, FORGET_LOSSES, FORGET_SCORES,
                      HARDWARE_TAG, ITEMS, REPLICATE_TAG, SEL_ACCURACY, SEL_FINAL, SEL_FORGETTING, SHADOW_MEMBERS,
                      SPLIT_FINGERPRINT_TAG, SPLIT_SEED_TAG, ULIRA_STAGE, UNSEEN_LOSSES, WAIT, numbers)
from .models import ModelConfig
from .selection import Diverged
from .unlearn import EvalConfig, reference_row, unlearn


@dataclass(frozen=True)
class TrialSpec:
    """What one trial computes. `hparams` holds the method's settings that differ from its
    defaults (fixed ones and, for a search, the searcher's suggestion), and nothing else: a wait
    trial's plan version and marker go in `wait`, a bundle's trials in `items` (`trainables.bundle`)."""

    stage: str
    method: str
    seed: int
    hparams: dict[str, Any] = field(default_factory=dict)
    wait: dict[str, Any] | None = None
    items: list[dict[str, Any]] | None = None
    replicate: int | None = None  # the split seed, where it is not `seed` (the audit's models)

    @property
    def split_seed(self) -> int:
        return self.seed if self.replicate is None else self.replicate

    def config(self) -> dict[str, Any]:
        """The trial's config as Tune holds it (`wait`, `items` and `replicate` only where set)."""
        out = {"stage": self.stage, "method": self.method, "seed": self.seed, "hparams": dict(self.hparams)}
        extra = {WAIT: self.wait, ITEMS: self.items, REPLICATE_TAG: self.replicate}
        return {**out, **{k: v for k, v in extra.items() if v is not None}}

    @classmethod
    def of(cls, config: dict[str, Any]) -> "TrialSpec":
        replicate = config.get(REPLICATE_TAG)
        return cls(config["stage"], config["method"], int(config["seed"]), dict(config.get("hparams") or {}),
                   config.get(WAIT), config.get(ITEMS), None if replicate is None else int(replicate))


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a study shares."""

    models_dir: str  # base-model checkpoints, on storage every node reads ("": the local checkpoint cache)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: BaseRecipe = field(default_factory=BaseRecipe)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    threads: int = 1  # torch threads per trial: the trial's CPU share, not every core of the node
    accel: engine.Accel = field(default_factory=engine.Accel)  # bf16 and CUDA graphs on a GPU
    data: DataConfig | None = None  # the data settings: another replicate's split is drawn from them

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _peak_rss_mb() -> float:
    """Peak resident memory of this worker process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _loss_lists(losses: dict) -> dict:
    """Per-example report losses, for the driver to store as an artifact (the loss plots)."""
    names = {"forget": FORGET_LOSSES, "unseen": UNSEEN_LOSSES}
    return {names[k]: [round(float(v), 6) for v in values] for k, values in losses.items()}


def _placement() -> dict:
    """Where this trial ran: wall-clock start, the GPU Ray assigned (-1: none) and the node."""
    ray = sys.modules.get("ray")  # not imported: not in a Ray worker (`python -m trainables.run`)
    up = ray is not None and ray.is_initialized()
    gpu_ids = ray.get_gpu_ids() if up else []
    node = ray.get_runtime_context().get_node_id() if up else "local"
    return {"started_at": time.time(), "gpu_id": float(gpu_ids[0]) if gpu_ids else -1.0, "node_id": node,
            HARDWARE_TAG: json.dumps(engine.hardware(), sort_keys=True)}


def run_trial(spec: TrialSpec, settings: TrialSettings, data: Dataset, on_step=None, on_eval=None) -> dict:
    """The trial's one report (what the caller hands to `tune.report`). The one way a method runs: the study's
    trials, `python -m trainables.run` and `study.reproduce` all come here. `on_step(n, step)` and
    `on_eval(n, selection_metrics)` see every update and evaluation (`trainables.run --trace`)."""
    start = time.perf_counter()
    placement = _placement()
    data = for_replicate(data, spec.split_seed, settings.data)
    placement.update({REPLICATE_TAG: str(spec.split_seed), SPLIT_SEED_TAG: str(data.split_seed),
                      SPLIT_FINGERPRINT_TAG: data.split_fingerprint})
    torch.set_num_threads(max(1, settings.threads))
    if settings.accel.deterministic:
        engine.make_deterministic()
    device = engine.pick_device()
    placement[ACCEL_TAG] = json.dumps(settings.accel.in_effect(device), sort_keys=True)  # what ran, for exports
    models_dir = Path(settings.models_dir) if settings.models_dir else None  # None: the local checkpoint cache
    audit = spec.stage in (AUDIT_STAGE, ULIRA_STAGE)  # a trial that scores the replicate's forget examples
    evaluation = replace(settings.evaluation, bootstrap=0) if audit else settings.evaluation
    # An audit's unlearning runs all start from its replicate's original (the challenge's setup: one original);
    # its retrained models are one per seed. Elsewhere a trial's seed is its base models' seed.
    base_seed = spec.split_seed if spec.stage == AUDIT_STAGE and spec.method != "retrain" else spec.seed
    # U-LiRA's model `seed` trains on the retain set and its half of the forget candidates and forgets that half
    # (`trainables.audit.shadow_member_mask`); the retrained model is the replicate's own (the retain set alone).
    member = (shadow_member_mask(len(data["forget"]), data.split_fingerprint, spec.seed)
              if spec.stage == ULIRA_STAGE else None)
    work = shadow_dataset(data, member) if member is not None else data  # the data the model trains and unlearns on
    source = {"original": work, "retrain": data}
    kinds = (spec.method,) if spec.method in REFERENCE_ROWS else REFERENCE_ROWS  # a base trial trains only its own
    bases = {kind: base_model(source[kind], kind, settings.model, settings.train, base_seed, device, models_dir)
             for kind in kinds}
    members = {SHADOW_MEMBERS: member.astype(int).tolist()} if member is not None else {}
    if spec.method in REFERENCE_ROWS:
        model, seconds, cached = bases[spec.method]
        losses: dict = {}
        row = reference_row(model, source[spec.method], evaluation.protocol, seconds, losses, evaluation.bootstrap)
        row.update({FINAL: 1.0}, cached=float(cached), trial_seconds=time.perf_counter() - start,
                   ended_at=time.time(), **placement)
        if spec.method == "retrain":
            row["rte"] = 1.0
        scores = {FORGET_SCORES: audit_scores(model, data, device).tolist(), **members} if audit else {}
        where = {k: v for k, v in placement.items() if isinstance(v, str)}  # node, hardware, accel: tags
        where[BANK_TAG] = checkpoint_path(source[spec.method], spec.method, settings.model, settings.train[spec.method],
                                          base_seed, models_dir).name  # the bank entry, which an export names
        return {**numbers(row), **where, **_loss_lists(losses), **scores}
    method = create(spec.method, data.name, **spec.hparams)
    startup = time.perf_counter() - start

    curve: list[dict] = []

    def report_eval(step: int, sel: dict) -> None:
        curve.append({**{f"sel_{k}": v for k, v in numbers(sel).items()}, "step": float(step)})
        if on_eval is not None:
            on_eval(step, sel)

    try:
        result = unlearn(method, bases["original"][0], work, spec.seed, device, evaluation,
                         retrain_seconds=bases["retrain"][1], on_eval=report_eval, on_step=on_step,
                         accel=settings.accel)
        row = numbers(result["metrics"])
        bad = [k for k in (SEL_ACCURACY, SEL_FORGETTING, "accuracy", "forgetting_score")
               if not math.isfinite(row.get(k, math.nan))]
        if bad:
            raise Diverged(f"{spec.method}: non-finite {', '.join(bad)}")
    except Diverged as exc:
        # A diverged setting is a result, not a crash: report it as failed and end normally, so
        # Tune does not retry it (retries are for dying workers) and the study goes on.
        # The objectives are present (Tune checks) and NaN (the searcher records the trial as failed).
        nan = {k: math.nan for k in (SEL_ACCURACY, SEL_FORGETTING, SEL_FINAL)}
        return {**nan, FINAL: 0.0, "diverged": 1.0, ERROR: str(exc), CURVE: curve, **placement}
    row.update({FINAL: 1.0}, startup_seconds=startup, trial_seconds=time.perf_counter() - start,
               pid=float(os.getpid()), ended_at=time.time(), peak_rss_mb=_peak_rss_mb(), **placement)
    scores = {FORGET_SCORES: audit_scores(result["model"], data, device).tolist(), **members} if audit else {}
    return {**row, **_loss_lists(result["losses"]), **scores, CURVE: curve}
