"""EU-k (exact unlearning of the last k blocks): re-initialise the last k blocks and train only them on retain.

The reference notebook copies the original weights back into the "re-initialised"
blocks, which makes it fine-tuning of those blocks; this implementation really
re-initialises them (each module's own `reset_parameters`, seeded), as the method
is defined (SPEC section 5).
"""

import torch

from ..models import BLOCKS, block_modules
from .base import Context, register
from .cf_k import CFk


@register("eu_k")
class EUk(CFk):
    """CF-k's freezing, after a real re-initialisation of the trainable blocks; lr 0.01 by default."""

    def __init__(self, k: int = 3, lr: float = 0.01, epochs: int = 2, batch_size: int = 64, momentum: float = 0.0):
        super().__init__(k=k, lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum)

    def setup(self, ctx: Context) -> None:
        torch.manual_seed(ctx.seed)
        for name in BLOCKS[-self.k:]:
            for block in block_modules(ctx.model, name):
                for module in block.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
                    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                        module.reset_running_stats()
        super().setup(ctx)
