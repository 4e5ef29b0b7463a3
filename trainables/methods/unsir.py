"""UNSIR (Tarun et al.): impair with error-maximising noise, then repair on retain (SPEC section 5).

Loops (reference-loops.md 4.5): impair over zip(retain, forget), skipped when the sizes
differ (multi-label: unless both batches are full), 2 epochs (MUFAC: 46 updates); then
repair, RO for 1 epoch (MUFAC: 134 updates). Under `paper` the repair runs in eval mode
on MUFAC and MUCAC binary (the notebooks evaluate in between and never switch back) and
in train mode on multi-label (its `train()` helper, same order every epoch)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .interface import Batch, Context, Method, register
from .params import POSITIVE, MethodParams, Search, declare, whole


@dataclass(frozen=True)
class UNSIRParams(MethodParams):
    noise_lr: float = declare(0.01, POSITIVE, Search("log", 1e-3, 1e-1))
    noise_steps: int = declare(5, whole(1), Search("int", 1, 10))
    repair_epochs: int = declare(1, whole(0))


@register("unsir")
class UNSIR(Method):
    """Impair, per pair: a fresh N(0, 1) noise batch (the forget batch's shape) is optimised by
    Adam (`noise_lr`, `noise_steps` updates, unclamped) to maximise the MSE between its logits
    and the forget batch's; then one SGD update on L(clamp(noise, 0, 1), y_retain) + L(x_retain,
    y_retain). Repair: `repair_epochs` epochs of fine-tuning on D_retain. `epochs` counts the
    impair epochs.
    """

    Params = UNSIRParams

    def draws(self, ctx: Context, gen):
        return self.pairs(ctx, gen, "zip", full_only=ctx.family == "multilabel")

    def repair_draws(self, ctx: Context, gen):
        return self.retain_epochs(ctx, self.hp.repair_epochs, gen, helper=True)

    def noise(self, ctx: Context, x_forget: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x_forget.shape, generator=ctx.gen).to(ctx.device).requires_grad_(True)
        opt = torch.optim.Adam([noise], lr=self.hp.noise_lr)
        for _ in range(self.hp.noise_steps):
            with ctx.autocast():
                out = ctx.model(noise).float()
                with torch.no_grad():
                    target = ctx.model(x_forget).float()  # recomputed each update, as the notebooks do
                loss = -F.mse_loss(out, target)  # maximise the distance to the forget logits
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return noise.detach().clamp(0, 1)

    def step(self, ctx: Context, batch: Batch):
        ctx.model.train()
        (xr, yr), (xf, _) = batch.retain, batch.forget
        noise = self.noise(ctx, xf)
        with ctx.autocast():
            loss = ctx.loss(ctx.model(noise), yr) + ctx.loss(ctx.model(xr), yr)  # the noise carries retain labels
        self.update(loss)
        return self.step_taken(ctx, batch, loss, "impair")

    def repair(self, ctx: Context, batch: Batch):
        ctx.model.train(not (ctx.paper and ctx.family != "multilabel"))
        x, y = batch.retain
        with ctx.autocast():
            loss = ctx.loss(ctx.model(x), y)
        self.update(loss)
        return self.step_taken(ctx, batch, loss, "repair")

    def run(self, ctx: Context):
        self.setup(ctx)
        yield from self.iterate(ctx, self.draws(ctx, ctx.gen))
        self.optimizer = self.sgd(ctx, self.hp.lr)  # the repair cell builds its own optimiser
        for draw in self.repair_draws(ctx, ctx.gen):
            yield self.repair(ctx, Batch(ctx, draw))

    def planned_steps(self, ctx: Context) -> int:
        gen = torch.Generator().manual_seed(0)
        return super().planned_steps(ctx) + sum(1 for _ in self.repair_draws(ctx, gen))

    def planned_epochs(self) -> int:
        return self.hp.epochs + self.hp.repair_epochs
