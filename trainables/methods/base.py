"""The unlearning-method interface and its registry.

A method is a class registered by name. Its hyper-parameters are keyword arguments of
`__init__` with the paper's defaults (SPEC section 5), validated before any work. The
base class owns the loop: for each epoch, shuffled batches of the `driver` split
(retain or forget), optionally paired with a batch of the other split (the forget
loader cycled, as GLI's reference does, instead of skipping mismatched batches). A
method overrides `loss` (the loss of one step) or, when one step is more than one
optimiser update, `step`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .. import engine
from ..data import Dataset
from ..metrics import task_loss

REGISTRY: dict[str, type["Method"]] = {}
REFERENCE_ROWS = ("original", "retrain")  # listed with the methods wherever methods are listed


class HyperParameterError(ValueError):
    """An invalid hyper-parameter: one line naming the method, the value and the rule."""


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


def create(name: str, dataset: str | None = None, **hparams: Any) -> "Method":
    """Instantiate with the data set's paper defaults, overridden by `hparams`."""
    cls = get(name)
    merged = {**cls.paper_defaults(dataset), **hparams}
    unknown = sorted(set(merged) - set(cls.hyperparameters()))
    if unknown:
        raise HyperParameterError(
            f"{name}: unknown hyper-parameter(s) {', '.join(unknown)}; accepted: {', '.join(cls.hyperparameters())}"
        )
    return cls(**merged)


def resolved_hparams(name: str, dataset: str | None, **hparams: Any) -> dict[str, Any]:
    """Every hyper-parameter a run of `name` uses (paper defaults, then `hparams`); {} for the reference rows."""
    return {} if name in REFERENCE_ROWS else create(name, dataset, **hparams).config()


def require(condition: bool, message: str) -> None:
    if not condition:
        raise HyperParameterError(message)


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


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, task: str, temperature: float = 4.0) -> torch.Tensor:
    """KL(student || teacher) of the temperature-softened outputs, scaled by T^2 (SPEC section 5).

    Multi-label outputs are independent Bernoullis: the KL is summed over the two
    outcomes of each attribute and averaged over attributes.
    """
    s, t = student.float() / temperature, teacher.float() / temperature
    if task == "multiclass":
        log_s, log_t = F.log_softmax(s, dim=1), F.log_softmax(t, dim=1)
        kl = (log_s.exp() * (log_s - log_t)).sum(dim=1)
    else:
        ls1, ls0, lt1, lt0 = F.logsigmoid(s), F.logsigmoid(-s), F.logsigmoid(t), F.logsigmoid(-t)
        kl = (ls1.exp() * (ls1 - lt1) + ls0.exp() * (ls0 - lt0)).mean(dim=1)
    return kl.mean() * temperature**2


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class Method:
    name: ClassVar[str] = ""
    driver: ClassVar[str] = "retain"  # the split whose batches make the epoch
    pairs: ClassVar[bool] = False  # also draw a same-size batch of the other split per step
    trains: ClassVar[bool] = True
    # Search space for the study (declared next to the method): name -> (kind, low, high), kind in log/int/float
    search_space: ClassVar[dict[str, tuple[str, float, float]]] = {"lr": ("log", 1e-4, 1e-1)}

    def __init__(self, lr: float = 0.001, epochs: int = 2, batch_size: int = 64, momentum: float = 0.0):
        require(lr > 0, f"{self.name}: learning rate must be positive, got {lr}")
        require(int(epochs) == epochs and epochs >= 1, f"{self.name}: epochs must be a whole number >= 1, got {epochs}")
        require(int(batch_size) == batch_size and batch_size >= 1, f"{self.name}: batch size must be >= 1, got {batch_size}")
        require(0 <= momentum < 1, f"{self.name}: momentum must be in [0, 1), got {momentum}")
        self.lr, self.epochs, self.batch_size, self.momentum = lr, int(epochs), int(batch_size), momentum
        self.frozen: list[torch.nn.Module] = []  # modules kept in eval mode and out of the optimiser

    @classmethod
    def hyperparameters(cls) -> list[str]:
        import inspect

        # Every method's __init__ lists all its keyword arguments, inherited ones included.
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    @classmethod
    def paper_defaults(cls, dataset: str | None) -> dict[str, Any]:
        """Per-data-set overrides of the keyword defaults (the paper's settings differ by data set)."""
        return {}

    def config(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.hyperparameters()}

    # --- hooks ---------------------------------------------------------------------------
    def setup(self, ctx: Context) -> None:
        """Prepare before the first step: by default an SGD optimiser over the trainable parameters."""
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)

    def loss(self, ctx: Context, batch: Batch) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} must override loss() or step()")

    def step(self, ctx: Context, batch: Batch) -> torch.Tensor:
        """One update; returns the detached loss."""
        with engine.autocast(ctx.device):
            loss = self.loss(ctx, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    # --- the loop ------------------------------------------------------------------------
    def train_mode(self, ctx: Context) -> None:
        ctx.model.train()
        for module in self.frozen:  # frozen blocks keep their batch-norm statistics too
            module.eval()

    def epoch_batches(self, ctx: Context, split: str, epochs: int) -> Iterator[Batch]:
        other = "forget" if split == "retain" else "retain"
        cycle = engine.cycle_batches(len(ctx.data[other]), self.batch_size, ctx.gen) if self.pairs else None
        for _ in range(epochs):
            indices = engine.batch_indices(len(ctx.data[split]), self.batch_size, ctx.gen)
            for b, idx in enumerate(indices):
                x, y = ctx.inputs(split, idx)
                xf = yf = None
                if cycle is not None:
                    pidx = next(cycle)[: len(idx)]  # same size as the driver batch
                    xf, yf = ctx.inputs(other, pidx)
                yield Batch(x, y, xf, yf, b, len(indices))

    def run(self, ctx: Context) -> Iterator[torch.Tensor]:
        """Yields each step's loss; the runner evaluates between steps."""
        self.setup(ctx)
        for batch in self.epoch_batches(ctx, self.driver, self.epochs):
            self.train_mode(ctx)
            yield self.step(ctx, batch)


class DistillationMethod(Method):
    """A method that distils from teachers at a temperature (SCRUB, Bad Teaching)."""

    pairs = True
    search_space = {"lr": ("log", 1e-4, 1e-1), "temperature": ("float", 1.0, 8.0)}

    def __init__(self, temperature: float = 4.0, lr: float = 0.001, epochs: int = 2, batch_size: int = 64,
                 momentum: float = 0.0):
        super().__init__(lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum)
        require(temperature > 0, f"{self.name}: temperature must be positive, got {temperature}")
        self.temperature = temperature
