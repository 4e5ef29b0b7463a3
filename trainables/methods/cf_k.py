"""CF-k (catastrophic forgetting of the last k blocks): train only the last k blocks on retain (SPEC section 5)."""

from ..models import BLOCKS, block_modules, last_blocks
from .base import Batch, Context, Method, register, require


@register("cf_k")
class CFk(Method):
    """Freeze all but the last k blocks (k = 3: layer3, layer4, fc) and fine-tune on D_retain.

    Frozen blocks are also kept in eval mode, so their batch-norm statistics stay the
    original's.
    """

    search_space = {"lr": ("log", 1e-4, 1e-1), "k": ("int", 1, len(BLOCKS))}

    def __init__(self, k: int = 3, lr: float = 0.001, epochs: int = 2, batch_size: int = 64, momentum: float = 0.0):
        super().__init__(lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum)
        require(int(k) == k and 1 <= k <= len(BLOCKS),
                f"{self.name}: k must be between 1 and {len(BLOCKS)} (blocks {', '.join(BLOCKS)}), got {k}")
        self.k = int(k)

    def setup(self, ctx: Context) -> None:
        trainable = set(last_blocks(ctx.model, self.k))
        self.frozen = [m for name in BLOCKS if name not in trainable for m in block_modules(ctx.model, name)]
        for module in self.frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        super().setup(ctx)

    def loss(self, ctx: Context, batch: Batch):
        return ctx.loss(ctx.model(batch.x), batch.y)
