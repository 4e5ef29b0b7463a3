"""SCRUB (Kurmanji et al.): a student that stays near the original teacher on retain and moves away on forget.

Loop (reference-loops.md 4.6): zip(retain, forget), skipped when the sizes differ, 2
epochs, two SGD updates per pair, min then max (MUFAC: 92 updates)."""

import torch

from .distill import DistillationMethod, frozen_copy
from .interface import Batch, Context, register


@register("scrub")
class SCRUB(DistillationMethod):
    """Teacher = the original model, frozen, in eval mode; student = the model being unlearned.

    Per pair: a min update on CE + KL(teacher || student) at temperature T on the retain
    batch, then a max update on -KL(teacher || student) on the forget batch.
    """

    steps_per_draw = 2

    def draws(self, ctx: Context, gen):
        return self.pairs(ctx, gen, "zip")

    def setup(self, ctx: Context) -> None:
        self.teacher = frozen_copy(ctx.original)
        super().setup(ctx)

    def step(self, ctx: Context, batch: Batch):
        self.set_mode(ctx, batch)
        (xr, yr), (xf, _) = batch.retain, batch.forget
        with ctx.autocast():
            with torch.no_grad():
                teacher = self.teacher(xr)
            student = ctx.model(xr)
            retain_loss = ctx.loss(student, yr) + self.kl(ctx, student, teacher)
        self.update(retain_loss)
        steps = [self.step_taken(ctx, batch, retain_loss, "min", reads=("retain",))]
        with ctx.autocast():
            with torch.no_grad():
                teacher = self.teacher(xf)
            forget_loss = -self.kl(ctx, ctx.model(xf), teacher)
        self.update(forget_loss)
        return steps + [self.step_taken(ctx, batch, forget_loss, "max", reads=("forget",))]
