"""Bad Teaching (Chundawat et al.): a competent teacher for retain, an incompetent one for forget.

Loop (reference-loops.md 4.7): per retain batch the next batch of a cycled forget loader,
never skipped, 2 epochs (MUFAC: 268 updates). The notebooks cycle with
`itertools.cycle`, which replays the first pass's forget tensors (augmentation
included) in the same order: kept under `paper`; under `fair` every pass is reshuffled."""

import torch

from ..models import reinitialise
from .distill import DistillationMethod, frozen_copy
from .interface import Batch, Context, register


@register("bad_teaching")
class BadTeaching(DistillationMethod):
    """The good teacher is the original model, the bad teacher a freshly initialised model of
    the same architecture (seeded), both in eval mode. Per update the student matches the
    good teacher (KL at temperature T) on a retain batch and the bad teacher on a forget batch.
    """

    def draws(self, ctx: Context, gen):
        return self.pairs(ctx, gen, "cycle", replay=ctx.paper)

    def setup(self, ctx: Context) -> None:
        self.good = frozen_copy(ctx.original)
        torch.manual_seed(ctx.seed + 1)
        self.bad = frozen_copy(ctx.original)
        reinitialise(self.bad)  # the constructor's initialisation and default batch-norm statistics
        super().setup(ctx)

    def loss(self, ctx: Context, batch: Batch):
        (xr, _), (xf, _) = batch.retain, batch.forget
        with torch.no_grad():
            good, bad = self.good(xr), self.bad(xf)
        return self.kl(ctx, ctx.model(xr), good) + self.kl(ctx, ctx.model(xf), bad)
