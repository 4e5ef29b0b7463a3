"""UNSIR (Tarun et al.): impair with error-maximising noise, then repair on retain (SPEC section 5)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import engine
from .interface import Batch, Context, Method, register
from .params import POSITIVE, MethodParams, Search, default, hp, whole


@dataclass(frozen=True)
class UNSIRParams(MethodParams):
    epochs: int = default(MethodParams, "epochs", 1)  # the impair stage's epochs
    noise_lr: float = hp(0.01, POSITIVE, Search("log", 1e-3, 1e-1))
    noise_steps: int = hp(5, whole(1), Search("int", 1, 10))
    repair_epochs: int = hp(1, whole(0))


@register("unsir")
class UNSIR(Method):
    """Stage 1 (impair), per retain batch paired with a forget batch: a fresh noise tensor
    is optimised (Adam, `noise_lr`, `noise_steps` steps) to maximise the MSE between its
    logits and the forget batch's logits; the model then takes one step on the noise with
    the retain labels plus the retain batch. Stage 2 (repair): `repair_epochs` epochs of
    fine-tuning on D_retain.
    """

    Params = UNSIRParams
    pairs = True

    def __init__(self, params: UNSIRParams):
        super().__init__(params)
        self.stage_steps = {"impair": 0, "repair": 0}

    def noise(self, ctx: Context, batch: Batch) -> torch.Tensor:
        with torch.no_grad(), engine.autocast(ctx.device):
            target = ctx.model(batch.xf).float()
        noise = torch.rand(batch.x.shape, generator=ctx.gen).to(ctx.device).requires_grad_(True)
        opt = torch.optim.Adam([noise], lr=self.hp.noise_lr)
        for _ in range(self.hp.noise_steps):
            with engine.autocast(ctx.device):
                loss = -F.mse_loss(ctx.model(noise).float(), target)  # maximise the distance to the forget logits
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return noise.detach()

    def run(self, ctx: Context):
        self.setup(ctx)
        for batch in self.epoch_batches(ctx, "retain", self.hp.epochs):
            self.train_mode(ctx)
            noise = self.noise(ctx, batch)
            with engine.autocast(ctx.device):
                loss = ctx.loss(ctx.model(noise), batch.y) + ctx.loss(ctx.model(batch.x), batch.y)
            self.update(loss)
            self.stage_steps["impair"] += 1
            yield loss.detach()
        for batch in self.epoch_batches(ctx, "retain", self.hp.repair_epochs, pairs=False):  # plain fine-tuning
            self.train_mode(ctx)
            with engine.autocast(ctx.device):
                loss = ctx.loss(ctx.model(batch.x), batch.y)
            self.update(loss)
            self.stage_steps["repair"] += 1
            yield loss.detach()
