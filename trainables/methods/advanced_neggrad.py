"""Advanced NegGrad: descend on retain and ascend on forget in one step (SPEC section 5; reference-loops.md 4.4).

MUFAC (and data sets using its loops): RD as NegGrad, retain forward first (255 steps).
MUCAC (multi-label and binary): zip(forget, retain), skipped unless both batches are
full, forget forward first."""

from .interface import Batch, Context, Method, register


@register("advanced_neggrad")
class AdvancedNegGrad(Method):
    """Per step: loss on a retain batch minus loss on a forget batch."""

    def draws(self, ctx: Context, gen):
        if ctx.family == "multiclass":
            return self.pairs(ctx, gen, "rd")
        return self.pairs(ctx, gen, "zip", forget_first=True, full_only=True)

    def loss(self, ctx: Context, batch: Batch):
        if ctx.family == "multiclass":
            (xr, yr), (xf, yf) = batch.retain, batch.forget
            retain = ctx.loss(ctx.model(xr), yr)
            return retain - ctx.loss(ctx.model(xf), yf)
        (xf, yf), (xr, yr) = batch.forget, batch.retain
        forget = ctx.loss(ctx.model(xf), yf)
        return -forget + ctx.loss(ctx.model(xr), yr)
