"""EU-k (exact unlearning of some blocks): train only those blocks on retain, from scratch under `fair`.

The notebooks (reference-loops.md 4.8) train only layer3, lr 0.01, 2 epochs, in train
mode everywhere, and "re-initialise" it by copying the original's own weights back, a
no-op: under `paper` that is what runs. Under `fair` the trained blocks really start
from a fresh initialisation (the constructor's), as the method is defined (SPEC 5.2).
"""

from dataclasses import dataclass

import torch

from ..models import BLOCKS, block_modules, reinitialise, train_only
from .interface import Batch, Context, Method, register
from .params import MethodParams, Rule, default, declare


def _blocks(value: str) -> list[str]:
    return [b.strip() for b in str(value).split(",") if b.strip()]


@dataclass(frozen=True)
class EUkParams(MethodParams):
    lr: float = default(MethodParams, "lr", 0.01)  # EU-k's rate (SPEC section 5)
    blocks: str = declare("layer3", Rule(lambda v: bool(_blocks(v)) and set(_blocks(v)) <= set(BLOCKS),
                                    f"must name blocks among {', '.join(BLOCKS)}, comma-separated"))


@register("eu_k")
class EUk(Method):
    """Train only `blocks` on D_retain (re-initialised first under `fair`)."""

    Params = EUkParams

    def setup(self, ctx: Context) -> None:
        names = _blocks(self.hp.blocks)
        if not ctx.paper:
            torch.manual_seed(ctx.seed)
            for name in names:
                for module in block_modules(ctx.model, name):
                    reinitialise(module)
        train_only(ctx.model, names)
        super().setup(ctx)

    def loss(self, ctx: Context, batch: Batch):
        x, y = batch.retain
        return ctx.loss(ctx.model(x), y)
