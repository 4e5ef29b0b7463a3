"""Fine-tuning: keep training the original model on the retain set (SPEC section 5).

Loop (reference-loops.md 4.1): RO, 2 epochs, lr 0.001; the multi-label notebook runs it
through its `train()` helper (same order every epoch under `paper`)."""

from .interface import Batch, Context, Method, register


@register("finetune")
class Finetune(Method):
    """Plain training on D_retain; forgetting comes only from the forget set's absence."""

    def draws(self, ctx: Context, gen):
        return self.retain_epochs(ctx, self.hp.epochs, gen, helper=True)

    def loss(self, ctx: Context, batch: Batch):
        x, y = batch.retain
        return ctx.loss(ctx.model(x), y)
