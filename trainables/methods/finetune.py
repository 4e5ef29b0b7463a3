"""Fine-tuning: keep training the original model on the retain set (SPEC section 5)."""

from .interface import Batch, Context, Method, register


@register("finetune")
class Finetune(Method):
    """Plain training on D_retain; forgetting comes only from the forget set's absence."""

    def loss(self, ctx: Context, batch: Batch):
        return ctx.loss(ctx.model(batch.x), batch.y)
