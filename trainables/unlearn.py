"""`unlearn`: one unlearning method from the original model, with evaluation, checkpoint
selection and the final report (and `reference_row` for the base models).

The protocol decides the evaluation (SPEC section 5.1):
- `fair`: every method is evaluated every `eval_every` updates (about 10 per epoch by
  default) on the selection halves (`val`, `unseen_val`), and the checkpoint with the best
  selection final score is reported on the report halves.
- `paper`: as the notebooks. GLI is evaluated after every update on the full test and
  unseen sets and stops after `patience` (3) evaluations without a strictly better final
  score, reporting its best checkpoint on the same sets; every other method runs its
  fixed epochs and reports its last model.
`seconds` counts the method's own updates, not the evaluations.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import engine
from .data import Dataset
from .methods import Context, Method
from .methods.interface import PROTOCOLS, Step
from .metrics import REPORT_SPLITS, SELECTION_SPLITS, evaluate

EvalCallback = Callable[[int, dict], None]
StepCallback = Callable[[int, Step], None]
PAPER_PATIENCE = 3  # the GLI notebooks stop after 3 evaluations without improvement


@dataclass(frozen=True)
class EvalConfig:
    """How a run is evaluated and which of its checkpoints is reported."""

    protocol: str = "fair"
    eval_every: int | None = None  # updates between evaluations; None: the protocol's
    patience: int | None = None  # stop after this many evaluations without improvement; None: the protocol's

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")

    def schedule(self, method: Method, ctx: Context) -> tuple[int | None, int | None, bool]:
        """(updates between evaluations or None for the end only, patience, keep the best checkpoint)."""
        if self.protocol == "paper":
            if method.selects_under_paper:
                return self.eval_every or 1, self.patience or PAPER_PATIENCE, True
            return None, None, False
        if self.eval_every:
            return self.eval_every, self.patience, True
        per_epoch = method.planned_steps(ctx) / max(1, method.planned_epochs())
        return max(1, round(per_epoch / 10)), self.patience, True


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


def selection_metrics(model, data: Dataset, protocol: str, cache: dict | None = None) -> dict:
    test, unseen = SELECTION_SPLITS[protocol]
    return evaluate(model, data, test=test, unseen=unseen, retain=False, cache=cache, protocol=protocol)


def report_metrics(model, data: Dataset, protocol: str, cache: dict | None = None) -> dict:
    test, unseen = REPORT_SPLITS[protocol]
    return evaluate(model, data, test=test, unseen=unseen, retain=True, cache=cache, protocol=protocol)


def report_losses(cache: dict, protocol: str) -> dict:
    """The per-example forget and unseen (report split) losses behind the reported metrics."""
    unseen = REPORT_SPLITS[protocol][1]
    return {"forget": cache["forget"][1].numpy(), "unseen": cache[unseen][1].numpy()}


def reference_row(model, data: Dataset, protocol: str, seconds: float, losses_out: dict | None = None) -> dict:
    """Metrics of a base model (original or retrain) in the same layout as a method run."""
    cache: dict = {}
    sel = selection_metrics(model, data, protocol, cache)
    out = report_metrics(model, data, protocol, cache)
    out.update({f"sel_{k}": v for k, v in sel.items()})
    out["seconds"] = seconds
    if losses_out is not None:
        losses_out.update(report_losses(cache, protocol))
    return out


def unlearn(
    method: Method,
    original: torch.nn.Module,
    data: Dataset,
    seed: int,
    device: torch.device,
    cfg: EvalConfig | None = None,
    retrain_seconds: float | None = None,
    on_eval: EvalCallback | None = None,
    on_step: StepCallback | None = None,
) -> dict:
    """Run `method` from a copy of `original`; returns {"metrics", "curve", "model", "steps", "losses"}.

    `metrics` holds the report-split metrics under their plain names, the selection
    metrics of the chosen checkpoint as `sel_*`, and `seconds`, `steps`, `best_step`,
    `evaluations` and (given `retrain_seconds`) `rte`. `on_step(n, step)` sees every update.
    """
    cfg = cfg or EvalConfig()
    cfg.validate()
    engine.seed_everything(seed)
    data = _on_device(data, device)
    model = engine.prepare_model(copy.deepcopy(original), device)
    ctx = Context(model=model, original=original.to(device).eval(), data=data, device=device,
                  gen=engine.generator(seed), seed=seed, protocol=cfg.protocol)
    every, patience, select_best = cfg.schedule(method, ctx)
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
        sel = selection_metrics(model, data, cfg.protocol)
        if not math.isfinite(sel["final_score"]):
            raise Diverged(f"{method.name}: non-finite selection metrics at step {step}")
        curve.append({"step": step, **sel})
        if on_eval:
            on_eval(step, sel)
        if sel["final_score"] > best[0] or not select_best:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best, best_sel, since_best = (sel["final_score"], step, state), sel, 0
            return False
        since_best += 1
        return patience is not None and since_best >= patience

    last_eval = 0
    start = time.perf_counter()
    for update in method.run(ctx):
        steps += 1
        finite &= torch.isfinite(update.loss)
        if on_step:
            on_step(steps, update)
        if every and steps % every == 0:
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
    if steps == 0:  # e.g. RD with a forget set smaller than a batch: the notebook's loop skips every batch
        print(f"[unlearn] {method.name}: no update was made (every batch was skipped: is a split smaller than a "
              f"batch of {method.hp.batch_size}?); the original model is reported", file=sys.stderr)
    if last_eval != steps or steps == 0:
        checkpoint(steps)
    model.load_state_dict(best[2])
    cache: dict = {}
    metrics = report_metrics(model, data, cfg.protocol, cache)
    metrics.update({f"sel_{k}": v for k, v in best_sel.items()})
    metrics.update(seconds=seconds, steps=steps, best_step=best[1], evaluations=len(curve))
    if retrain_seconds:
        metrics["rte"] = seconds / retrain_seconds
    return {"metrics": metrics, "curve": curve, "model": model, "steps": steps,
            "losses": report_losses(cache, cfg.protocol)}
