"""The reference notebooks' data loops (reference-loops.md section 7), as batches of row indices.

A loop yields `Draw`s: which retain and forget rows one iteration may read, its epoch
and the driving loader's batch index (skipped batches counted, as the notebooks'
counters are). No loader drops its last, smaller batch, so the skip rules decide
what happens to it. Codes as in reference-loops.md:
- RO `retain_only`: every retain batch (with `reseed`, the same order every epoch: the
  multi-label notebooks' `train()` helper seeds at each epoch).
- FO `forget_only`: every full forget batch.
- RD `retain_driven`: per retain batch the next forget batch, the forget loader
  restarted (reshuffled) when exhausted, skipped when the sizes differ (the forget batch
  is used up all the same).
- Z `zipped`: `zip` of two loaders, a new pass of each per epoch, so the shorter sets
  the length; skipped when the sizes differ, or with `full_only` when either batch is
  not full.
- CY `cycled`: per retain batch the next batch of a cycled forget loader, never skipped;
  `replay` is `itertools.cycle`, whose later passes repeat the first pass's batches
  (the same tensors: `Draw.slot` names them), otherwise every pass is reshuffled.
- FR `forget_then_retain`: per epoch one pass over the forget set, then one over the
  retain set, every batch (the last, smaller ones included), one update each: the loop of
  SalUn's and Random Labels' code (methods-2026.md sections 1-2), not a notebook's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .. import engine


@dataclass(frozen=True)
class Draw:
    epoch: int  # 1-based
    index: int  # the driving loader's batch index within the epoch, 0-based, skipped batches counted
    count: int  # batches of the driving loader per epoch
    retain: torch.Tensor | None  # rows of the retain split
    forget: torch.Tensor | None  # rows of the forget split
    slot: int | None = None  # a replayed batch: the same slot means the same forget tensors


def _batches(n: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    return engine.batch_indices(n, size, gen)


def retain_only(n_retain: int, size: int, epochs: int, gen: torch.Generator, reseed: int | None = None
                ) -> Iterator[Draw]:
    for epoch in range(1, epochs + 1):
        if reseed is not None:
            gen.manual_seed(reseed)
        batches = _batches(n_retain, size, gen)
        for b, idx in enumerate(batches):
            yield Draw(epoch, b, len(batches), idx, None)


def forget_only(n_forget: int, size: int, epochs: int, gen: torch.Generator) -> Iterator[Draw]:
    for epoch in range(1, epochs + 1):
        batches = _batches(n_forget, size, gen)
        for b, idx in enumerate(batches):
            if len(idx) == size:
                yield Draw(epoch, b, len(batches), None, idx)


def retain_driven(n_retain: int, n_forget: int, size: int, epochs: int, gen: torch.Generator) -> Iterator[Draw]:
    pending: list[torch.Tensor] = []  # the forget loader, created once before the epoch loop
    for epoch in range(1, epochs + 1):
        batches = _batches(n_retain, size, gen)
        for b, idx in enumerate(batches):
            if not pending:
                pending = _batches(n_forget, size, gen)  # StopIteration: a new, reshuffled forget loader
            fidx = pending.pop(0)
            if len(fidx) == len(idx):
                yield Draw(epoch, b, len(batches), idx, fidx)


def zipped(n_retain: int, n_forget: int, size: int, epochs: int, gen: torch.Generator, forget_first: bool = False,
           full_only: bool = False) -> Iterator[Draw]:
    for epoch in range(1, epochs + 1):
        if forget_first:  # zip(forget, retain): the forget loader's pass is drawn first
            fb = _batches(n_forget, size, gen)
            rb = _batches(n_retain, size, gen)
        else:
            rb = _batches(n_retain, size, gen)
            fb = _batches(n_forget, size, gen)
        count = min(len(rb), len(fb))
        for b, (ridx, fidx) in enumerate(zip(rb, fb)):
            if len(ridx) != len(fidx) or (full_only and len(ridx) != size):
                continue
            yield Draw(epoch, b, count, ridx, fidx)


def cycled(n_retain: int, n_forget: int, size: int, epochs: int, gen: torch.Generator, replay: bool
           ) -> Iterator[Draw]:
    first = _batches(n_forget, size, gen)
    pending, position = list(first), 0
    for epoch in range(1, epochs + 1):
        batches = _batches(n_retain, size, gen)
        for b, idx in enumerate(batches):
            if not pending:
                pending = list(first) if replay else _batches(n_forget, size, gen)
            slot = position % len(first) if replay else None
            yield Draw(epoch, b, len(batches), idx, pending.pop(0), slot)
            position += 1


def forget_then_retain(n_forget: int, n_retain: int, size: int, epochs: int, gen: torch.Generator
                       ) -> Iterator[Draw]:
    for epoch in range(1, epochs + 1):
        fb = _batches(n_forget, size, gen)  # the forget loader's pass is drawn first, as it is iterated first
        rb = _batches(n_retain, size, gen)
        count = len(fb) + len(rb)
        for b, idx in enumerate(fb):
            yield Draw(epoch, b, count, None, idx)
        for b, idx in enumerate(rb):
            yield Draw(epoch, len(fb) + b, count, idx, None)
