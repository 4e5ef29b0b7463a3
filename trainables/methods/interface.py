"""The unlearning-method interface and its registry.

A method is a class registered by name. Its hyper-parameters are one frozen dataclass
(`Params`, see `params.py`) with the paper's defaults (SPEC section 5), validated
before any work. The base class owns the loop: for each epoch, shuffled batches of the
`driver` split (retain or forget), optionally paired with a batch of the other split
(the forget loader cycled, as GLI's reference does, instead of skipping mismatched
batches). A method overrides `loss` (the loss of one step) or, when one step is more
than one optimiser update, `step`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .. import engine
from ..data import Dataset
from ..metrics import task_loss
from ..records import REFERENCE_ROWS
from .params import HyperParameterError, MethodParams

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
    original, the data (retain and forget already on the device) and a seeded generator."""

    model: torch.nn.Module
    original: torch.nn.Module
    data: Dataset
    device: torch.device
    gen: torch.Generator
    seed: int

    def inputs(self, split: str, idx: torch.Tensor, augment: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        aug = self.data.augment if augment is None else augment
        return engine.inputs(self.data[split], idx, self.device, augment=aug, gen=self.gen)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return task_loss(logits.float(), labels, self.data.task)


@dataclass
class Batch:
    x: torch.Tensor  # the driver split's batch
    y: torch.Tensor
    xf: torch.Tensor | None  # the paired batch of the other split, when the method pairs
    yf: torch.Tensor | None
    index: int  # batch number within the epoch, 0-based
    count: int  # batches in the epoch


class Method:
    name: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    driver: ClassVar[str] = "retain"  # the split whose batches make the epoch
    pairs: ClassVar[bool] = False  # also draw a same-size batch of the other split per step

    def __init__(self, params: MethodParams):
        if not isinstance(params, self.Params):
            raise TypeError(f"{self.name} takes {self.Params.__name__}, got {type(params).__name__}")
        self.hp = params
        self.frozen: list[torch.nn.Module] = []  # modules kept in eval mode and out of the optimiser

    def config(self) -> dict[str, Any]:
        return self.hp.as_dict()

    # --- hooks ---------------------------------------------------------------------------
    def setup(self, ctx: Context) -> None:
        """Prepare before the first step: by default an SGD optimiser over the trainable parameters."""
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=self.hp.lr, momentum=self.hp.momentum)

    def loss(self, ctx: Context, batch: Batch) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} must override loss() or step()")

    def update(self, loss: torch.Tensor) -> None:
        """One optimiser update on `loss`."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def step(self, ctx: Context, batch: Batch) -> torch.Tensor:
        """One update; returns the detached loss."""
        with engine.autocast(ctx.device):
            loss = self.loss(ctx, batch)
        self.update(loss)
        return loss.detach()

    # --- the loop ------------------------------------------------------------------------
    def train_mode(self, ctx: Context) -> None:
        ctx.model.train()
        for module in self.frozen:  # frozen blocks keep their batch-norm statistics too
            module.eval()

    def epoch_batches(self, ctx: Context, split: str, epochs: int, pairs: bool | None = None) -> Iterator[Batch]:
        """`epochs` shuffled passes over `split`; with `pairs` (default: the method's), each batch
        comes with a same-size batch of the other split from a cycled loader."""
        pairs = self.pairs if pairs is None else pairs
        other = "forget" if split == "retain" else "retain"
        size = self.hp.batch_size
        cycle = engine.cycle_batches(len(ctx.data[other]), size, ctx.gen) if pairs else None
        for _ in range(epochs):
            indices = engine.batch_indices(len(ctx.data[split]), size, ctx.gen)
            for b, idx in enumerate(indices):
                x, y = ctx.inputs(split, idx)
                xf = yf = None
                if cycle is not None:
                    pidx = next(cycle)[: len(idx)]  # same size as the driver batch
                    xf, yf = ctx.inputs(other, pidx)
                yield Batch(x, y, xf, yf, b, len(indices))

    def run(self, ctx: Context) -> Iterator[torch.Tensor]:
        """Yields each step's loss; `unlearn` evaluates between steps."""
        self.setup(ctx)
        for batch in self.epoch_batches(ctx, self.driver, self.hp.epochs):
            self.train_mode(ctx)
            yield self.step(ctx, batch)
