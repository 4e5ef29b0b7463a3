"""SCRUB (Kurmanji et al.): a student that stays near the original teacher on retain and moves away on forget."""

from .. import engine
from .distill import DistillationMethod, distill_kl, frozen_copy
from .interface import Batch, Context, register


@register("scrub")
class SCRUB(DistillationMethod):
    """Teacher = the original model, frozen; student = the model being unlearned.

    Per step (SPEC section 5): a retain step minimising CE + KL(student || teacher) at
    temperature T, then a forget step maximising KL(student || teacher) on a forget batch.
    """

    def setup(self, ctx: Context) -> None:
        self.teacher = frozen_copy(ctx.original)
        super().setup(ctx)

    def step(self, ctx: Context, batch: Batch):
        task, t = ctx.data.task, self.hp.temperature
        with engine.autocast(ctx.device):
            student = ctx.model(batch.x)
            retain_loss = ctx.loss(student, batch.y) + distill_kl(student, self.teacher(batch.x), task, t)
        self.update(retain_loss)
        with engine.autocast(ctx.device):
            forget_loss = -distill_kl(ctx.model(batch.xf), self.teacher(batch.xf), task, t)
        self.update(forget_loss)
        return (retain_loss + forget_loss).detach()
