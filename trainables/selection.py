"""Checkpoint selection inside a run: evaluations, the best checkpoint, patience.

Evaluations run without the forgetting score's bootstrap (`fs_se`, the larger part of an
evaluation's CPU time): it is computed once, for the checkpoint chosen, from that
evaluation's losses (the same table and resamples, so the same value). An evaluation's
forward passes run when it is asked for; its membership attack and KDE
(tens of milliseconds of CPU work) can run on a worker thread (`background=True`, used
on a GPU), so the next updates are already queued while it computes. Results are taken
in order. With patience, the run may then be a few updates past an evaluation that
turns out to stop it: those updates are discarded (the best checkpoint is restored
and the run's length is the stopping evaluation's), so the outcome is the one a
synchronous run gives.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from .data import Dataset
from .metrics import SELECTION_SPLITS, fs_standard_error, metrics_from, outputs

_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="attack")
    return _POOL


class Diverged(FloatingPointError):
    """The method produced a non-finite loss or metric: the run failed, retrying will not help."""


class Selection:
    def __init__(self, name: str, model: torch.nn.Module, data: Dataset, protocol: str, patience: int | None,
                 select_best: bool, amp: bool, on_eval: Callable[[int, dict], None] | None = None,
                 bootstrap: int = 0, background: bool = False, ahead: int = 3):
        self.name, self.model, self.data, self.protocol = name, model, data, protocol
        self.patience, self.select_best, self.amp, self.on_eval = patience, select_best, amp, on_eval
        self.background, self.ahead, self.bootstrap = background, ahead, bootstrap
        self.pending: deque[tuple[int, Future, dict | None, tuple]] = deque()
        self.curve: list[dict] = []
        self.best_score, self.best_step, self.best_state, self.best_sel = -math.inf, 0, None, {}
        self.best_losses: tuple | None = None  # the chosen evaluation's (forget, unseen) losses, for its fs_se
        self.since_best = 0
        self.stop_step: int | None = None  # the evaluation that ended the run (patience)

    def evaluate(self, step: int, finite: bool) -> bool:
        """Evaluate the model as it is after `step` updates; returns whether the run should stop."""
        if not finite:
            raise Diverged(f"{self.name}: non-finite loss by step {step}")
        test, unseen = SELECTION_SPLITS[self.protocol]
        cache = outputs(self.model, self.data, [test, unseen, "forget"], amp=self.amp)
        # A background result arrives after later updates, so it needs its own copy of the weights; a
        # synchronous one is taken at once, and the model is copied only if it is the best so far.
        state = self._copy() if self.background else None
        work = (metrics_from, cache, self.data, test, unseen, False, 42, self.protocol, 0)
        if self.background:
            future = _pool().submit(*work)
        else:
            future = Future()
            future.set_result(work[0](*work[1:]))
        self.pending.append((step, future, state, (cache["forget"][1], cache[unseen][1])))
        self._take(block=len(self.pending) > self.ahead or not self.background)
        return self.stop_step is not None

    def _copy(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def finish(self) -> None:
        """Take every pending result (the ones after a stop are dropped); then the chosen checkpoint's fs_se."""
        self._take(block=True)
        if self.bootstrap and self.best_losses is not None:
            self.best_sel = {**self.best_sel, "fs_se": fs_standard_error(*self.best_losses, 42, self.protocol,
                                                                         self.bootstrap)}

    def _take(self, block: bool) -> None:
        while self.pending and self.stop_step is None and (block or self.pending[0][1].done()):
            step, future, state, losses = self.pending.popleft()
            sel = future.result()
            if not math.isfinite(sel["final_score"]):
                raise Diverged(f"{self.name}: non-finite selection metrics at step {step}")
            self.curve.append({"step": step, **sel})
            if self.on_eval:
                self.on_eval(step, sel)
            if sel["final_score"] > self.best_score or not self.select_best:
                state = state if state is not None else self._copy()
                self.best_score, self.best_step, self.best_state, self.best_sel = sel["final_score"], step, state, sel
                self.best_losses = losses
                self.since_best = 0
            else:
                self.since_best += 1
                if self.patience is not None and self.since_best >= self.patience:
                    self.stop_step = step
        if self.stop_step is not None:
            self.pending.clear()
