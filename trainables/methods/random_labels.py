"""Random Labels (Golatkar et al., CVPR 2020, as the OPTML group's code runs it; methods-2026.md section 2).

Loop FR (`loops.forget_then_retain`): per epoch one pass over the forget set, each batch
with labels drawn afresh, uniform over all classes (the true class can be drawn, as in the
code), one update per batch; then one pass over the retain set with its true labels, one
update per batch. Train mode; one SGD for the whole run (momentum 0.9, weight decay 5e-4,
batch 256, 10 epochs, lr 0.01: `OptmlParams`). The same loop under both protocols: GLI's
notebooks have no Random Labels, so `paper` runs the authors' defaults.

Multi-label data (MUCAC) is a project decision, no source covers it: each attribute of a
forget image is redrawn as a fair coin."""

from dataclasses import dataclass

import torch

from . import loops
from .interface import Batch, Context, Method, register
from .params import OptmlParams


@dataclass(frozen=True)
class RandomLabelsParams(OptmlParams):
    pass


def random_labels(y: torch.Tensor, num_outputs: int, task: str, gen: torch.Generator) -> torch.Tensor:
    """Labels drawn for a forget batch with true labels `y`: uniform over the classes (the true one included),
    or, multi-label, every attribute a fair coin. Drawn on the CPU generator, then moved beside `y`."""
    if task == "multilabel":
        drawn = torch.randint(0, 2, tuple(y.shape), generator=gen).to(y.dtype)
    else:
        drawn = torch.randint(0, num_outputs, tuple(y.shape), generator=gen)
    return drawn.to(y.device)


@register("random_labels")
class RandomLabels(Method):
    """Train on the forget set with random labels, then on the retain set with true ones, every epoch."""

    Params = RandomLabelsParams
    defaults_from = "authors"

    def draws(self, ctx: Context, gen):
        return loops.forget_then_retain(len(ctx.data["forget"]), len(ctx.data["retain"]), self.hp.batch_size,
                                        self.hp.epochs, gen)

    def loss(self, ctx: Context, batch: Batch):
        if batch.has("forget"):
            x, y = batch.forget
            y = random_labels(y, ctx.data.num_outputs, ctx.data.task, ctx.gen)
        else:
            x, y = batch.retain
        return ctx.loss(ctx.model(x), y)
