"""l1-sparse (Jia et al., NeurIPS 2023): fine-tuning on the retain set with a decaying l1 penalty
(methods-2026.md section 3; the code path `FT_prune` -> `FT_l1` -> `FT_iter(with_l1=True)`).

Loop RO (retain batches only), train mode. Per batch: mean cross-entropy + alpha_t * ||theta||_1,
the l1 norm over every parameter of the model (convolutions, batch-norm weights and biases,
the classifier), with alpha_t = alpha * (1 - t / (E - E0)) in 0-based epoch t < E - E0, else 0
(alpha throughout when E0 = E), E the epochs and E0 `no_l1_epochs`. Optimiser as Random
Labels' (`OptmlParams`: weight decay 5e-4 on top of the l1 term), lr 0.01, 10 epochs.

alpha: the authors' code requires `--alpha` and documents no value (the parser's 0.2 is
another method's noise level). The default here, 1e-4, is this project's choice: the
geometric middle of the searched range [1e-6, 1e-2]."""

from dataclasses import dataclass

import torch

from .interface import Batch, Context, Method, register
from .params import POSITIVE, HyperParameterError, OptmlParams, Search, declare, whole


@dataclass(frozen=True)
class L1SparseParams(OptmlParams):
    alpha: float = declare(1e-4, POSITIVE, Search("log", 1e-6, 1e-2), label="l1 weight alpha")
    no_l1_epochs: int = declare(0, whole(0), label="no_l1_epochs")

    def check(self) -> None:
        if self.no_l1_epochs > self.epochs:
            raise HyperParameterError(f"no_l1_epochs ({self.no_l1_epochs}) must be at most epochs ({self.epochs})")


def l1_weight(alpha: float, epoch: int, epochs: int, no_l1_epochs: int) -> float:
    """alpha_t for 0-based `epoch`: linear decay from alpha over the first epochs - no_l1_epochs epochs, then 0;
    alpha throughout when no_l1_epochs equals epochs."""
    span = epochs - no_l1_epochs
    if epoch < span:
        return alpha * (1 - epoch / span)
    return alpha if span == 0 else 0.0


def l1_norm(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in model.parameters()]).abs().sum()


@register("l1_sparse")
class L1Sparse(Method):
    """Fine-tune on D_retain with alpha_t * ||theta||_1 added to every batch's loss."""

    Params = L1SparseParams
    defaults_from = "authors"

    def loss(self, ctx: Context, batch: Batch):
        x, y = batch.retain
        weight = l1_weight(self.hp.alpha, batch.draw.epoch - 1, self.hp.epochs, self.hp.no_l1_epochs)
        loss = ctx.loss(ctx.model(x), y)
        return loss + weight * l1_norm(ctx.model) if weight else loss
