"""`unlearn`: one unlearning method from the original model, with periodic evaluation,
best-checkpoint selection and the final report (and `reference_row` for the base models).

It evaluates every `eval_every` steps on the selection splits only (SPEC
section 3: `val` / `unseen_val`, or the full sets under `selection=test`), keeps the
checkpoint with the best selection final score, and reports that checkpoint on the
report splits. `seconds` counts the method's own steps, not the evaluations.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import engine
from .data import Dataset
from .methods import Context, Method
from .metrics import REPORT_SPLITS, SELECTION_SPLITS, evaluate

EvalCallback = Callable[[int, dict], None]


@dataclass(frozen=True)
class EvalConfig:
    """How a run is evaluated and which of its checkpoints is reported."""

    eval_every: int | None = None  # steps between evaluations; None: about 10 per epoch of the driver split
    selection: str = "val"  # "val" (honest halves) or "test" (the paper's protocol)
    patience: int | None = None  # stop after this many evaluations without improvement; None: run every step
    select_best: bool = True  # False: keep the last step's model (the paper's fixed-epoch baselines)

    def validate(self) -> None:
        if self.selection not in SELECTION_SPLITS:
            raise ValueError(f"selection must be 'val' or 'test', got {self.selection!r}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")


class Diverged(FloatingPointError):
    """The method produced a non-finite loss or metric: the run failed, retrying will not help."""


def _on_device(data: Dataset, device: torch.device) -> Dataset:
    """Retain and forget (the batches' source) on the device; on CUDA also every evaluation split,
    so an evaluation copies nothing from the host. `train` (= forget + retain) stays behind."""
    splits = dict(data.splits)
    names = [n for n in splits if n != "train"] if device.type == "cuda" else ["retain", "forget"]
    for name in names:
        splits[name] = splits[name].to(device)
    return dataclasses.replace(data, splits=splits)


def selection_metrics(model, data: Dataset, selection: str, cache: dict | None = None) -> dict:
    test, unseen = SELECTION_SPLITS[selection]
    return evaluate(model, data, test=test, unseen=unseen, retain=False, cache=cache)


def report_metrics(model, data: Dataset, selection: str, cache: dict | None = None) -> dict:
    test, unseen = REPORT_SPLITS[selection]
    return evaluate(model, data, test=test, unseen=unseen, retain=True, cache=cache)


def report_losses(cache: dict, selection: str) -> dict:
    """The per-example forget and unseen (report split) losses behind the reported metrics."""
    unseen = REPORT_SPLITS[selection][1]
    return {"forget": cache["forget"][1].numpy(), "unseen": cache[unseen][1].numpy()}


def reference_row(model, data: Dataset, selection: str, seconds: float, losses_out: dict | None = None) -> dict:
    """Metrics of a base model (original or retrain) in the same layout as a method run."""
    cache: dict = {}
    sel = selection_metrics(model, data, selection, cache)
    out = report_metrics(model, data, selection, cache)
    out.update({f"sel_{k}": v for k, v in sel.items()})
    out["seconds"] = seconds
    if losses_out is not None:
        losses_out.update(report_losses(cache, selection))
    return out


def default_eval_every(method: Method, data: Dataset) -> int:
    steps_per_epoch = math.ceil(len(data[method.driver]) / method.hp.batch_size)
    return max(1, steps_per_epoch // 10)


def unlearn(
    method: Method,
    original: torch.nn.Module,
    data: Dataset,
    seed: int,
    device: torch.device,
    cfg: EvalConfig | None = None,
    retrain_seconds: float | None = None,
    on_eval: EvalCallback | None = None,
) -> dict:
    """Run `method` from a copy of `original`; returns {"metrics", "curve", "model", "steps", "losses"}.

    `metrics` holds the report-split metrics under their plain names, the selection
    metrics of the chosen checkpoint as `sel_*`, and `seconds`, `steps`, `best_step`,
    `evaluations` and (given `retrain_seconds`) `rte`.
    """
    cfg = cfg or EvalConfig()
    cfg.validate()
    engine.seed_everything(seed)
    data = _on_device(data, device)
    model = engine.prepare_model(copy.deepcopy(original), device)
    ctx = Context(model=model, original=original.to(device).eval(), data=data, device=device,
                  gen=engine.generator(seed), seed=seed)
    every = cfg.eval_every or default_eval_every(method, data)
    curve: list[dict] = []
    best: tuple[float, int, dict | None] = (-math.inf, 0, None)
    best_sel: dict = {}
    since_best, steps, seconds = 0, 0, 0.0
    finite = torch.ones((), dtype=torch.bool, device=device)

    def checkpoint(step: int) -> bool:
        """Evaluate; returns whether to stop early."""
        nonlocal best, best_sel, since_best
        if not bool(finite):
            raise Diverged(f"{method.name}: non-finite loss by step {step}")
        sel = selection_metrics(model, data, cfg.selection)
        if not math.isfinite(sel["final_score"]):
            raise Diverged(f"{method.name}: non-finite selection metrics at step {step}")
        curve.append({"step": step, **sel})
        if on_eval:
            on_eval(step, sel)
        if sel["final_score"] > best[0] or not cfg.select_best:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best, best_sel, since_best = (sel["final_score"], step, state), sel, 0
            return False
        since_best += 1
        return cfg.patience is not None and since_best >= cfg.patience

    last_eval = 0
    start = time.perf_counter()
    for loss in method.run(ctx):
        steps += 1
        finite &= torch.isfinite(loss)
        if steps % every == 0:
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - start
            last_eval = steps
            if checkpoint(steps):
                break
            start = time.perf_counter()
    else:
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
    if last_eval != steps or steps == 0:
        if steps == 0:
            raise ValueError(f"{method.name}: the method took no steps (is its driver split smaller than a batch?)")
        checkpoint(steps)
    model.load_state_dict(best[2])
    cache: dict = {}
    metrics = report_metrics(model, data, cfg.selection, cache)
    metrics.update({f"sel_{k}": v for k, v in best_sel.items()})
    metrics.update(seconds=seconds, steps=steps, best_step=best[1], evaluations=len(curve))
    if retrain_seconds:
        metrics["rte"] = seconds / retrain_seconds
    return {"metrics": metrics, "curve": curve, "model": model, "steps": steps,
            "losses": report_losses(cache, cfg.selection)}
