"""`unlearn`: one unlearning method from the original model, with evaluation, checkpoint
selection and the final report (and `reference_row` for the base models).

The protocol decides the evaluation (SPEC section 5.1):
- `fair`: every method is evaluated every `eval_every` updates (by default about 10 per
  epoch, and at most about `MAX_EVALUATIONS` per run for the 10-epoch methods) on the selection halves (`val`, `unseen_val`), and the checkpoint with the best
  selection final score is reported on the report halves.
- `paper`: as the notebooks. GLI is evaluated after every update on the full test and
  unseen sets and stops after `patience` (3) evaluations without a strictly better final
  score, reporting its best checkpoint on the same sets; every other method runs its
  fixed epochs and reports its last model.
`seconds` counts the method's own updates, not the evaluations.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import engine
from .data import Dataset
from .methods import Context, Method
from .methods.interface import PROTOCOLS, Step
from .metrics import BOOTSTRAP, REPORT_SPLITS, SELECTION_SPLITS, evaluate
from .selection import Selection

# `fair`'s default evaluations: about 10 per epoch, as many as the notebooks' 2-epoch methods get (20), and no more
# per run than that for the authors' 10-epoch loops (an evaluation costs several updates on the CPU)
MAX_EVALUATIONS = 20

EvalCallback = Callable[[int, dict], None]
StepCallback = Callable[[int, Step], None]
PAPER_PATIENCE = 3  # the GLI notebooks stop after 3 evaluations without improvement


@dataclass(frozen=True)
class EvalConfig:
    """How a run is evaluated and which of its checkpoints is reported."""

    protocol: str = "fair"
    eval_every: int | None = None  # updates between evaluations; None: the protocol's
    patience: int | None = None  # stop after this many evaluations without improvement; None: the protocol's
    bootstrap: int = BOOTSTRAP  # resamples behind fs_se at the chosen checkpoint (0: none)

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.bootstrap < 0 or self.bootstrap == 1:
            raise ValueError(f"bootstrap must be 0 (none) or >= 2 resamples, got {self.bootstrap}")

    def schedule(self, method: Method, ctx: Context) -> tuple[int | None, int | None, bool]:
        """(updates between evaluations or None for the end only, patience, keep the best checkpoint)."""
        if self.protocol == "paper":
            if method.selects_under_paper:
                return self.eval_every or 1, self.patience or PAPER_PATIENCE, True
            return None, None, False
        if self.eval_every:
            return self.eval_every, self.patience, True
        steps = method.planned_steps(ctx)
        per_epoch = steps / max(1, method.planned_epochs())
        return max(1, round(per_epoch / 10), round(steps / MAX_EVALUATIONS)), self.patience, True


def _on_device(data: Dataset, device: torch.device) -> Dataset:
    """Retain and forget (the batches' source) on the device; on CUDA also every evaluation split,
    so an evaluation copies nothing from the host. `train` (= forget + retain) stays behind."""
    splits = dict(data.splits)
    names = [n for n in splits if n != "train"] if device.type == "cuda" else ["retain", "forget"]
    for name in names:
        splits[name] = splits[name].to(device)
    return dataclasses.replace(data, splits=splits)


def selection_metrics(model, data: Dataset, protocol: str, cache: dict | None = None, amp: bool = True,
                      bootstrap: int = BOOTSTRAP) -> dict:
    test, unseen = SELECTION_SPLITS[protocol]
    return evaluate(model, data, test=test, unseen=unseen, retain=False, cache=cache, protocol=protocol, amp=amp,
                    bootstrap=bootstrap)


def report_metrics(model, data: Dataset, protocol: str, cache: dict | None = None, amp: bool = True,
                   bootstrap: int = BOOTSTRAP) -> dict:
    test, unseen = REPORT_SPLITS[protocol]
    return evaluate(model, data, test=test, unseen=unseen, retain=True, cache=cache, protocol=protocol, amp=amp,
                    bootstrap=bootstrap)


def report_losses(cache: dict, protocol: str) -> dict:
    """The per-example forget and unseen (report split) losses behind the reported metrics."""
    unseen = REPORT_SPLITS[protocol][1]
    return {"forget": cache["forget"][1].numpy(), "unseen": cache[unseen][1].numpy()}


def reference_row(model, data: Dataset, protocol: str, seconds: float, losses_out: dict | None = None,
                  bootstrap: int = BOOTSTRAP) -> dict:
    """Metrics of a base model (original or retrain) in the same layout as a method run."""
    cache: dict = {}
    sel = selection_metrics(model, data, protocol, cache, bootstrap=bootstrap)
    out = report_metrics(model, data, protocol, cache, bootstrap=bootstrap)
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
    accel: engine.Accel | None = None,
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
    accel = accel or engine.Accel()
    accel.validate()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = accel.cudnn_benchmark
    model = engine.working_copy(original, device)
    ctx = Context(model=model, original=original.to(device).eval(), data=data, device=device,
                  gen=engine.generator(seed), seed=seed, protocol=cfg.protocol, accel=accel)
    every, patience, select_best = cfg.schedule(method, ctx)
    selection = Selection(method.name, model, data, cfg.protocol, patience, select_best, accel.precision == "bf16",
                          on_eval, cfg.bootstrap, background=device.type == "cuda" if accel.async_attack is None else accel.async_attack)
    steps, seconds, last_eval = 0, 0.0, -1
    finite = torch.ones((), dtype=torch.bool, device=device)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    start = time.perf_counter()
    for update in method.run(ctx):
        steps += 1
        finite &= torch.isfinite(update.loss)
        if on_step:
            on_step(steps, update)
        if every and steps % every == 0:
            seconds += clock() - start
            last_eval = steps
            if selection.evaluate(steps, bool(finite)):
                break
            start = time.perf_counter()
    else:
        seconds += clock() - start
    if steps == 0:  # e.g. RD with a forget set smaller than a batch: the notebook's loop skips every batch
        print(f"[unlearn] {method.name}: no update was made (every batch was skipped: is a split smaller than a "
              f"batch of {method.hp.batch_size}?); the original model is reported", file=sys.stderr)
    if last_eval != steps and selection.stop_step is None:
        selection.evaluate(steps, bool(finite))
    selection.finish()
    steps = selection.stop_step or steps  # updates made past the stopping evaluation do not count
    model.load_state_dict(selection.best_state)
    cache: dict = {}
    metrics = report_metrics(model, data, cfg.protocol, cache, amp=accel.precision == "bf16", bootstrap=cfg.bootstrap)
    metrics.update({f"sel_{k}": v for k, v in selection.best_sel.items()})
    metrics.update(seconds=seconds, steps=steps, best_step=selection.best_step, evaluations=len(selection.curve))
    if retrain_seconds:
        metrics["rte"] = seconds / retrain_seconds
    return {"metrics": metrics, "curve": selection.curve, "model": model, "steps": steps,
            "losses": report_losses(cache, cfg.protocol)}
