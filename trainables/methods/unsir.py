"""UNSIR (Tarun et al.): impair with error-maximising noise, then repair on retain (SPEC section 5)."""

import torch
import torch.nn.functional as F

from .. import engine
from .base import Batch, Context, Method, register, require


@register("unsir")
class UNSIR(Method):
    """Stage 1 (impair), per retain batch paired with a forget batch: a fresh noise tensor
    is optimised (Adam, `noise_lr`, `noise_steps` steps) to maximise the MSE between its
    logits and the forget batch's logits; the model then takes one step on the noise with
    the retain labels plus the retain batch. Stage 2 (repair): `repair_epochs` epochs of
    fine-tuning on D_retain. `epochs` counts the impair epochs.
    """

    pairs = True
    search_space = {"lr": ("log", 1e-4, 1e-1), "noise_lr": ("log", 1e-3, 1e-1), "noise_steps": ("int", 1, 10)}

    def __init__(self, noise_lr: float = 0.01, noise_steps: int = 5, repair_epochs: int = 1, lr: float = 0.001,
                 epochs: int = 1, batch_size: int = 64, momentum: float = 0.0):
        super().__init__(lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum)
        require(noise_lr > 0, f"{self.name}: noise_lr must be positive, got {noise_lr}")
        require(int(noise_steps) == noise_steps and noise_steps >= 1, f"{self.name}: noise_steps must be >= 1, got {noise_steps}")
        require(int(repair_epochs) == repair_epochs and repair_epochs >= 0, f"{self.name}: repair_epochs must be >= 0")
        self.noise_lr, self.noise_steps, self.repair_epochs = noise_lr, int(noise_steps), int(repair_epochs)
        self.stage_steps = {"impair": 0, "repair": 0}

    def noise(self, ctx: Context, batch: Batch) -> torch.Tensor:
        with torch.no_grad(), engine.autocast(ctx.device):
            target = ctx.model(batch.xf).float()
        noise = torch.rand(batch.x.shape, generator=ctx.gen).to(ctx.device).requires_grad_(True)
        opt = torch.optim.Adam([noise], lr=self.noise_lr)
        for _ in range(self.noise_steps):
            with engine.autocast(ctx.device):
                loss = -F.mse_loss(ctx.model(noise).float(), target)  # maximise the distance to the forget logits
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return noise.detach()

    def run(self, ctx: Context):
        self.setup(ctx)
        for batch in self.epoch_batches(ctx, "retain", self.epochs):
            self.train_mode(ctx)
            noise = self.noise(ctx, batch)
            with engine.autocast(ctx.device):
                loss = ctx.loss(ctx.model(noise), batch.y) + ctx.loss(ctx.model(batch.x), batch.y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.stage_steps["impair"] += 1
            yield loss.detach()
        self.pairs = False  # the repair stage is plain fine-tuning
        for batch in self.epoch_batches(ctx, "retain", self.repair_epochs):
            self.train_mode(ctx)
            with engine.autocast(ctx.device):
                loss = ctx.loss(ctx.model(batch.x), batch.y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.stage_steps["repair"] += 1
            yield loss.detach()
