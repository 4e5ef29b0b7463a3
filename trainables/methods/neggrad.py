"""NegGrad: gradient ascent on the forget set (SPEC section 5)."""

from .interface import Batch, Context, Method, register


@register("neggrad")
class NegGrad(Method):
    """Minimise the negated task loss on D_forget batches."""

    driver = "forget"

    def loss(self, ctx: Context, batch: Batch):
        return -ctx.loss(ctx.model(batch.x), batch.y)
