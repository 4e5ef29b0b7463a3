"""NegGrad: gradient ascent on the forget set (SPEC section 5; reference-loops.md 4.3).

MUFAC and MUCAC binary: RD (retain-driven, the forget loader restarted, skipped when the
sizes differ; MUFAC: 255 steps in 2 epochs); the retain batch only drives the loop.
Multi-label: FO, every full forget batch."""

from . import loops
from .interface import Batch, Context, Method, register


@register("neggrad")
class NegGrad(Method):
    """Minimise the negated task loss on D_forget batches."""

    def draws(self, ctx: Context, gen):
        if ctx.family == "multilabel":
            return loops.forget_only(len(ctx.data["forget"]), self.forget_batch_size(ctx), self.hp.epochs, gen)
        return self.pairs(ctx, gen, "rd")

    def loss(self, ctx: Context, batch: Batch):
        x, y = batch.forget
        return -ctx.loss(ctx.model(x), y)
