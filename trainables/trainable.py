"""The function Ray Tune runs for every trial of every stage: base models, baselines, GLI, confirmation.

`unlearning_trial(config, data)` reads its stage, method, seed and hyper-parameters
from `config`, receives the decoded data set once through the object store
(`tune.with_parameters`), takes the base models from the shared checkpoint folder
(trained there by the base stage, never retrained), and reports a flat metrics dict
with `tune.report`: one report per evaluation (selection metrics, for curves), then a
last report holding every objective and every final metric.
"""

from __future__ import annotations

import math
import os
import resource
import time
from pathlib import Path

import torch
from ray import tune

from . import engine
from .base import TrainConfig, base_model
from .data import Dataset
from .methods import REFERENCE_ROWS, create
from .models import ModelConfig
from .runner import Diverged, RunnerConfig, reference_row, unlearn

# Keys of a trial's config that are not method hyper-parameters.
TRIAL_KEYS = ("stage", "method", "seed", "hparams", "settings", "run")

# A placeholder the study's plan hands out when a slot is free but no trial can start yet
# (they wait for base models or for the search to end): it holds the worker until the plan
# changes, so Tune keeps every worker process (see study.stages.StudyPlan). Never tracked.
WAIT_STAGE = "wait"


def wait_for_plan(marker: str, version: int, limit_s: float = 30.0, poll_s: float = 0.05) -> None:
    """Return once the plan's version file no longer holds `version` (a trial has ended), or after `limit_s`."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if Path(marker).read_text().strip() != str(version):
                return
        except (OSError, ValueError):
            pass  # not written yet, or mid-write: look again
        time.sleep(poll_s)


def trial_spec(config: dict) -> dict:
    """A trial's config, flat: grid stages put {method, seed, hparams} under "run"."""
    return {**config, **config.get("run", {})}


def trial_hparams(config: dict) -> dict:
    """Hyper-parameters of a trial: fixed ones under "hparams", searched ones at the top level."""
    config = trial_spec(config)
    searched = {k: v for k, v in config.items() if k not in TRIAL_KEYS}
    return {**config.get("hparams", {}), **searched}


def _threads(settings: dict) -> None:
    cpus = max(1, int(settings.get("cpus_per_trial", 1)))
    torch.set_num_threads(cpus)  # Ray's CPU share for this trial, not every core of the node


def _numbers(metrics: dict) -> dict:
    """Numbers only (Tune and MLflow take floats); NaN and inf are kept for the failure checks."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _peak_rss_mb() -> float:
    """Peak resident memory of this worker process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _loss_lists(losses: dict) -> dict:
    """Per-example report losses, for the driver to store as an artifact (the loss plots)."""
    return {f"{k}_losses": [round(float(v), 6) for v in values] for k, values in losses.items()}


def _placement() -> dict:
    """Where this trial ran: wall-clock start, the GPU Ray assigned (-1: none) and the node."""
    import ray

    gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    return {"started_at": time.time(), "gpu_id": float(gpu_ids[0]) if gpu_ids else -1.0, "node_id": node}


def _inject_fault(settings: dict, method: str) -> None:
    """Testing aid for the retry path: kill this worker process once for `method` (never set in a study)."""
    fault = settings.get("fault_injection") or {}
    if fault.get("method") == method and not os.path.exists(fault["marker"]):
        Path(fault["marker"]).write_text("killed once")
        os._exit(3)  # a dying worker, as an out-of-memory kill or a lost node looks to Tune


def unlearning_trial(config: dict, data: Dataset | None = None) -> None:
    if config.get("stage") == WAIT_STAGE:
        wait_for_plan(config["settings"]["plan_marker"], int(config["version"]))
        return
    start = time.perf_counter()
    placement = _placement()
    config = trial_spec(config)
    settings = config["settings"]
    _threads(settings)
    device = engine.pick_device(settings.get("device"))
    name, seed = config["method"], int(config["seed"])
    models_dir = Path(settings["models_dir"])
    model_cfg = ModelConfig(**settings["model"])
    train_cfg = TrainConfig(**settings["train"])
    runner = RunnerConfig(**settings["runner"])
    if name in REFERENCE_ROWS:
        model, seconds, cached = base_model(data, name, model_cfg, train_cfg, seed, device, models_dir)
        losses: dict = {}
        row = reference_row(model, data, runner.selection, seconds, losses)
        row.update(cached=float(cached), trial_seconds=time.perf_counter() - start, final=1.0, ended_at=time.time(),
                   **placement)
        if name == "retrain":
            row["rte"] = 1.0
        tune.report({**_numbers(row), **_loss_lists(losses)})
        return
    original, _, _ = base_model(data, "original", model_cfg, train_cfg, seed, device, models_dir)
    _, retrain_seconds, _ = base_model(data, "retrain", model_cfg, train_cfg, seed, device, models_dir)
    method = create(name, data.name, **trial_hparams(config))
    _inject_fault(settings, name)
    startup = time.perf_counter() - start

    def report_eval(step: int, sel: dict) -> None:
        tune.report({**{f"sel_{k}": v for k, v in _numbers(sel).items()}, "step": float(step), "final": 0.0})

    try:
        result = unlearn(method, original, data, seed, device, runner, retrain_seconds=retrain_seconds,
                         on_eval=report_eval)
        row = _numbers(result["metrics"])
        bad = [k for k in ("sel_accuracy", "sel_forgetting_score", "accuracy", "forgetting_score")
               if not math.isfinite(row.get(k, math.nan))]
        if bad:
            raise Diverged(f"{name}: non-finite {', '.join(bad)}")
    except Diverged as exc:
        # A diverged setting is a result, not a crash: report it as failed and end normally, so
        # Tune does not retry it (retries are for dying workers) and the study goes on.
        # The objectives are present (Tune checks) and NaN (the searcher records the trial as failed).
        nan = {k: math.nan for k in ("sel_accuracy", "sel_forgetting_score", "sel_final_score")}
        tune.report({**nan, "final": 0.0, "diverged": 1.0, "error": str(exc), **placement})
        return
    row.update(final=1.0, startup_seconds=startup, trial_seconds=time.perf_counter() - start,
               pid=float(os.getpid()), ended_at=time.time(), peak_rss_mb=_peak_rss_mb(), **placement)
    tune.report({**row, **_loss_lists(result["losses"])})
