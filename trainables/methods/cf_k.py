"""CF-k (catastrophic forgetting of the last k blocks): train only the last k blocks on retain (SPEC section 5)."""

from dataclasses import dataclass

from ..models import BLOCKS, block_modules, last_blocks
from .interface import Batch, Context, Method, register
from .params import MethodParams, Search, hp, whole


@dataclass(frozen=True)
class CFkParams(MethodParams):
    k: int = hp(3, whole(1, len(BLOCKS)), Search("int", 1, len(BLOCKS)))  # blocks counted from the end


@register("cf_k")
class CFk(Method):
    """Freeze all but the last k blocks (k = 3: layer3, layer4, fc) and fine-tune on D_retain.

    Frozen blocks are also kept in eval mode, so their batch-norm statistics stay the
    original's.
    """

    Params = CFkParams

    def setup(self, ctx: Context) -> None:
        trainable = set(last_blocks(ctx.model, self.hp.k))
        self.frozen = [m for name in BLOCKS if name not in trainable for m in block_modules(ctx.model, name)]
        for module in self.frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        super().setup(ctx)

    def loss(self, ctx: Context, batch: Batch):
        return ctx.loss(ctx.model(batch.x), batch.y)
