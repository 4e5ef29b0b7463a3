"""Advanced NegGrad: descend on retain and ascend on forget in the same step (SPEC section 5)."""

from .interface import Batch, Context, Method, register


@register("advanced_neggrad")
class AdvancedNegGrad(Method):
    """Per step: loss on a retain batch minus loss on a (cycled) forget batch."""

    pairs = True

    def loss(self, ctx: Context, batch: Batch):
        return ctx.loss(ctx.model(batch.x), batch.y) - ctx.loss(ctx.model(batch.xf), batch.yf)
