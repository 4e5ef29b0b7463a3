"""EU-k (exact unlearning of the last k blocks): re-initialise the last k blocks and train only them on retain.

The reference notebook copies the original weights back into the "re-initialised"
blocks, which makes it fine-tuning of those blocks; this implementation really
re-initialises them (each module's own `reset_parameters`, seeded), as the method
is defined (SPEC section 5).
"""

from dataclasses import dataclass

import torch

from ..models import BLOCKS, block_modules, reinitialise
from .cf_k import CFk, CFkParams
from .interface import Context, register
from .params import default


@dataclass(frozen=True)
class EUkParams(CFkParams):
    lr: float = default(CFkParams, "lr", 0.01)  # EU-k's rate (SPEC section 5)


@register("eu_k")
class EUk(CFk):
    """CF-k's freezing, after a real re-initialisation of the trainable blocks."""

    Params = EUkParams

    def setup(self, ctx: Context) -> None:
        torch.manual_seed(ctx.seed)
        for name in BLOCKS[-self.hp.k:]:
            for block in block_modules(ctx.model, name):
                reinitialise(block)
        super().setup(ctx)
