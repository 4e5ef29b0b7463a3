"""Bad Teaching (Chundawat et al.): a competent teacher for retain, an incompetent one for forget."""

import torch

from ..models import reinitialise
from .distill import DistillationMethod, distill_kl, frozen_copy
from .interface import Batch, Context, register


@register("bad_teaching")
class BadTeaching(DistillationMethod):
    """The good teacher is the original model, the bad teacher a randomly initialised model
    of the same architecture (seeded). Per step the student matches the good teacher
    (KL at temperature T) on a retain batch and the bad teacher on a forget batch.
    """

    def setup(self, ctx: Context) -> None:
        self.good = frozen_copy(ctx.original)
        torch.manual_seed(ctx.seed + 1)
        self.bad = frozen_copy(ctx.original)
        reinitialise(self.bad)  # same architecture, every parameter and statistic re-drawn
        super().setup(ctx)

    def loss(self, ctx: Context, batch: Batch):
        task, t = ctx.data.task, self.hp.temperature
        retain = distill_kl(ctx.model(batch.x), self.good(batch.x), task, t)
        forget = distill_kl(ctx.model(batch.xf), self.bad(batch.xf), task, t)
        return retain + forget
