"""Bad Teaching (Chundawat et al.): a competent teacher for retain, an incompetent one for forget."""

import torch

from .base import Batch, Context, Method, distill_kl, frozen_copy, register, require


@register("bad_teaching")
class BadTeaching(Method):
    """The good teacher is the original model, the bad teacher a randomly initialised model
    of the same architecture (seeded). Per step the student matches the good teacher
    (KL at temperature T) on a retain batch and the bad teacher on a forget batch.
    """

    pairs = True
    search_space = {"lr": ("log", 1e-4, 1e-1), "temperature": ("float", 1.0, 8.0)}

    def __init__(self, temperature: float = 4.0, lr: float = 0.001, epochs: int = 2, batch_size: int = 64,
                 momentum: float = 0.0):
        super().__init__(lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum)
        require(temperature > 0, f"{self.name}: temperature must be positive, got {temperature}")
        self.temperature = temperature

    def setup(self, ctx: Context) -> None:
        self.good = frozen_copy(ctx.original)
        torch.manual_seed(ctx.seed + 1)
        self.bad = frozen_copy(ctx.original)  # same architecture, every parameter and statistic re-drawn
        for module in self.bad.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
        super().setup(ctx)

    def loss(self, ctx: Context, batch: Batch):
        task, t = ctx.data.task, self.temperature
        retain = distill_kl(ctx.model(batch.x), self.good(batch.x), task, t)
        forget = distill_kl(ctx.model(batch.xf), self.bad(batch.xf), task, t)
        return retain + forget
