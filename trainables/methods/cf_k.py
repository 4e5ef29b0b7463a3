"""CF-k (catastrophic forgetting of the last k blocks): train only the last k blocks on retain (SPEC section 5).

Loop (reference-loops.md 4.2): RO, 2 epochs, lr 0.001, in train mode everywhere, so the
frozen blocks' batch-norm statistics still move, as in the notebooks (both protocols)."""

from dataclasses import dataclass

from ..models import BLOCKS, last_blocks, train_only
from .interface import Batch, Context, Method, register
from .params import MethodParams, Search, declare, whole


@dataclass(frozen=True)
class CFkParams(MethodParams):
    k: int = declare(3, whole(1, len(BLOCKS)), Search("int", 1, len(BLOCKS)))  # blocks counted from the end


@register("cf_k")
class CFk(Method):
    """Freeze all but the last k blocks (k = 3: layer3, layer4, fc) and fine-tune on D_retain."""

    Params = CFkParams

    def draws(self, ctx: Context, gen):
        return self.retain_epochs(ctx, self.hp.epochs, gen, helper=True)

    def setup(self, ctx: Context) -> None:
        train_only(ctx.model, last_blocks(ctx.model, self.hp.k))
        super().setup(ctx)

    def loss(self, ctx: Context, batch: Batch):
        x, y = batch.retain
        return ctx.loss(ctx.model(x), y)
