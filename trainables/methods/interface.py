"""The unlearning-method interface and its registry.

A method is a class registered by name. Its hyper-parameters are one frozen dataclass
(`Params`, see `params.py`) with the paper's defaults (SPEC section 5), validated
before any work. A method names its data loop (`draws`, from `loops.py`: the loop the
reference notebook of the data set runs) and overrides `loss` (the loss of one
optimiser step) or `step` (one iteration, returning one `Step` per optimiser update).
`run` yields every optimiser update's `Step` (its loss, epoch, batch, batch sizes,
model mode, learning rate), which is what the runner evaluates between and what
`--trace` writes. `Context.protocol` is `paper` (the notebooks step for step) or `fair`
(SPEC section 5.1).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .. import engine
from ..data import Dataset
from ..metrics import task_loss
from ..records import REFERENCE_ROWS
from . import loops
from .loops import Draw
from .params import HyperParameterError, MethodParams

PROTOCOLS = ("fair", "paper")
SELECTION_ALIAS = {"val": "fair", "test": "paper"}  # the deprecated --selection values, as protocols

REGISTRY: dict[str, type["Method"]] = {}


def register(name: str):
    def add(cls: type[Method]) -> type[Method]:
        if name in REGISTRY or name in REFERENCE_ROWS:
            raise ValueError(f"an unlearning method named {name!r} is already registered")
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return add


def available() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> type["Method"]:
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(available())}")
    return REGISTRY[name]


def resolve(name: str, dataset: str | None = None, **hparams: Any) -> MethodParams:
    """`name`'s hyper-parameters: the data set's defaults overridden by `hparams`, checked."""
    params = get(name).Params
    unknown = sorted(set(hparams) - set(params.names()))
    if unknown:
        raise HyperParameterError(
            f"{name}: unknown hyper-parameter(s) {', '.join(unknown)}; accepted: {', '.join(params.names())}")
    try:
        return params(**{**params.defaults(dataset), **hparams})
    except HyperParameterError as exc:
        raise HyperParameterError(f"{name}: {exc}") from None


def create(name: str, dataset: str | None = None, **hparams: Any) -> "Method":
    """The method `name` with the data set's defaults, overridden by `hparams`."""
    return get(name)(resolve(name, dataset, **hparams))


def resolved_hparams(name: str, dataset: str | None, **hparams: Any) -> dict[str, Any]:
    """Every hyper-parameter a run of `name` uses; {} for the reference rows."""
    return {} if name in REFERENCE_ROWS else resolve(name, dataset, **hparams).as_dict()


@dataclass
class Context:
    """What a method may read: the model to unlearn (a copy of the original), a frozen
    original, the data (retain and forget already on the device), a seeded generator and
    the protocol."""

    model: torch.nn.Module
    original: torch.nn.Module
    data: Dataset
    device: torch.device
    gen: torch.Generator
    seed: int
    protocol: str = "fair"
    accel: engine.Accel = engine.Accel()

    @property
    def paper(self) -> bool:
        return self.protocol == "paper"

    @property
    def family(self) -> str:
        """Whose notebook loops apply: `multilabel` (MUCAC), `binary` (MUCAC binary), else `multiclass` (MUFAC's)."""
        if self.data.task == "multilabel":
            return "multilabel"
        return "binary" if self.data.name == "mucac-binary" else "multiclass"

    def autocast(self, capture: bool = False):
        return engine.autocast(self.device, self.accel, capture)

    def inputs(self, split: str, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return engine.inputs(self.data[split], idx, self.device, augment=self.data.augment, gen=self.gen)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return task_loss(logits.float(), labels, self.data.task)


class Batch:
    """One iteration's data, loaded when a step first reads it; records which splits it read.

    `replay` holds the forget tensors of replayed draws (`itertools.cycle` repeats tensors,
    augmentation included)."""

    def __init__(self, ctx: Context | None, draw: Draw, replay: dict | None = None,
                 tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.ctx, self.draw, self.replay = ctx, draw, replay
        self.loaded: dict[str, tuple[torch.Tensor, torch.Tensor]] = dict(tensors or {})
        self.used: set[str] = set()

    @classmethod
    def of(cls, retain=None, forget=None, index: int = 0, count: int = 1, epoch: int = 1) -> "Batch":
        """A batch of given tensors (x, y), for running one step by hand."""
        tensors = {k: v for k, v in (("retain", retain), ("forget", forget)) if v is not None}
        return cls(None, Draw(epoch, index, count, None, None), tensors=tensors)

    def _get(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.used.add(split)
        if split not in self.loaded:
            idx = self.draw.retain if split == "retain" else self.draw.forget
            if split == "forget" and self.draw.slot is not None and self.replay is not None:
                if self.draw.slot not in self.replay:
                    self.replay[self.draw.slot] = self.ctx.inputs(split, idx)
                self.loaded[split] = self.replay[self.draw.slot]
            else:
                self.loaded[split] = self.ctx.inputs(split, idx)
        return self.loaded[split]

    @property
    def retain(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._get("retain")

    @property
    def forget(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._get("forget")

    def has(self, split: str) -> bool:
        """Whether this iteration has a batch of `split` (loaded or to load)."""
        rows = self.draw.retain if split == "retain" else self.draw.forget
        return split in self.loaded or rows is not None

    def size(self, split: str) -> int:
        return len(self.loaded[split][1]) if split in self.used else 0


@dataclass
class Step:
    """One optimiser update, as `--trace` writes it."""

    loss: torch.Tensor  # detached
    epoch: int
    batch: int
    retain: int  # batch sizes the update read (0: unused)
    forget: int
    mode: str  # the model's mode during the update: train or eval
    lr: float
    phase: str | None = None
    extra: dict = field(default_factory=dict)  # method-specific trace fields (GLI's w)

    def trace(self) -> dict:
        out = {"epoch": self.epoch, "batch": self.batch, "retain": self.retain, "forget": self.forget,
               "mode": self.mode, "lr": self.lr}
        if self.phase:
            out["phase"] = self.phase
        return {**out, **self.extra}


class Method:
    name: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    steps_per_draw: ClassVar[int] = 1  # optimiser updates per loop iteration (SCRUB: 2)
    selects_under_paper: ClassVar[bool] = False  # paper: only GLI evaluates per step and keeps its best checkpoint
    # whose settings `paper` runs: "paper" (the GLI notebooks') or "authors" (the method's own code's defaults, for
    # methods the notebooks do not have)
    defaults_from: ClassVar[str] = "paper"

    def __init__(self, params: MethodParams):
        if not isinstance(params, self.Params):
            raise TypeError(f"{self.name} takes {self.Params.__name__}, got {type(params).__name__}")
        self.hp = params

    def config(self) -> dict[str, Any]:
        return self.hp.as_dict()

    # --- hooks ---------------------------------------------------------------------------
    def draws(self, ctx: Context, gen: torch.Generator) -> Iterator[Draw]:
        """The data loop (default: retain batches only, RO)."""
        return self.retain_epochs(ctx, self.hp.epochs, gen)

    def retain_epochs(self, ctx: Context, epochs: int, gen: torch.Generator, helper: bool = False) -> Iterator[Draw]:
        """RO. `helper`: the multi-label notebook runs this loop through its `train()` helper, which
        seeds at every epoch, so under `paper` every epoch sees the same order."""
        reseed = ctx.seed if helper and ctx.paper and ctx.family == "multilabel" else None
        return loops.retain_only(len(ctx.data["retain"]), self.hp.batch_size, epochs, gen, reseed)

    def pairs(self, ctx: Context, gen: torch.Generator, loop: str, epochs: int | None = None, **options
              ) -> Iterator[Draw]:
        """A loop over retain and forget: `rd`, `zip` or `cycle` (see `loops.py`)."""
        n_r, n_f, size = len(ctx.data["retain"]), len(ctx.data["forget"]), self.hp.batch_size
        epochs = self.hp.epochs if epochs is None else epochs
        if self.small_forget(ctx):  # batches of the forget set's size, so the forget batch is the whole set
            size = n_f
        make = {"rd": loops.retain_driven, "zip": loops.zipped, "cycle": loops.cycled}[loop]
        return make(n_r, n_f, size, epochs, gen, **options)

    def small_forget(self, ctx: Context) -> bool:
        """A forget set smaller than one batch under `fair` (one person's photos): the paired loops draw
        batches of the forget set's size, so every forget batch is the whole set (reshuffled) and no
        pair is skipped for mismatched sizes. Under `paper` the notebooks' loops run as they are,
        skips and all (possibly no update at all, which `unlearn` says in one line)."""
        small = not ctx.paper and len(ctx.data["forget"]) < self.hp.batch_size
        if small and not getattr(self, "_said_small", False):
            self._said_small = True
            print(f"[unlearn] {self.name}: the forget set ({len(ctx.data['forget'])}) is smaller than a batch of "
                  f"{self.hp.batch_size}: paired batches of {len(ctx.data['forget'])}, the forget set whole in "
                  "each, reshuffled (protocol fair)",
                  file=sys.stderr, flush=True)
        return small

    def forget_batch_size(self, ctx: Context) -> int:
        return len(ctx.data["forget"]) if self.small_forget(ctx) else self.hp.batch_size

    def setup(self, ctx: Context) -> None:
        """Prepare before the first step: by default an SGD optimiser over the trainable parameters."""
        self.optimizer = self.sgd(ctx, self.hp.lr)

    def sgd(self, ctx: Context, lr: float) -> torch.optim.Optimizer:
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=lr, momentum=self.hp.momentum,
                               weight_decay=getattr(self.hp, "weight_decay", 0.0))

    def set_mode(self, ctx: Context, batch: Batch) -> None:
        """The model's mode for the next update (train; the paper's accidents override this)."""
        ctx.model.train()

    def loss(self, ctx: Context, batch: Batch) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} must override loss() or step()")

    def update(self, loss: torch.Tensor) -> None:
        """One optimiser update on `loss`."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def step_taken(self, ctx: Context, batch: Batch, loss: torch.Tensor, phase: str | None = None,
               reads: tuple[str, ...] | None = None, **extra) -> Step:
        """The update just made; `reads` names the splits it read when the batch served several updates."""
        sizes = {s: batch.size(s) if reads is None or s in reads else 0 for s in ("retain", "forget")}
        return Step(loss.detach(), batch.draw.epoch, batch.draw.index, sizes["retain"], sizes["forget"],
                    "train" if ctx.model.training else "eval", self.optimizer.param_groups[0]["lr"], phase, extra)

    def step(self, ctx: Context, batch: Batch) -> Step | list[Step]:
        """One iteration: by default one update on `loss`."""
        self.set_mode(ctx, batch)
        with ctx.autocast():
            loss = self.loss(ctx, batch)
        self.update(loss)
        return self.step_taken(ctx, batch, loss)

    # --- the loop ------------------------------------------------------------------------
    def iterate(self, ctx: Context, draws: Iterator[Draw]) -> Iterator[Step]:
        replay: dict = {}
        for draw in draws:
            out = self.step(ctx, Batch(ctx, draw, replay))
            yield from (out if isinstance(out, list) else [out])

    def run(self, ctx: Context) -> Iterator[Step]:
        """Yields each optimiser update's `Step`; `unlearn` evaluates between them."""
        self.setup(ctx)
        yield from self.iterate(ctx, self.draws(ctx, ctx.gen))

    def planned_steps(self, ctx: Context) -> int:
        """How many updates `run` will make (the loops' skip rules depend on sizes only)."""
        return self.steps_per_draw * sum(1 for _ in self.draws(ctx, torch.Generator().manual_seed(0)))

    def planned_epochs(self) -> int:
        return self.hp.epochs
