"""GLI, Guided Loss-Increasing (Choi et al., CVPR 2024 workshop TCV2), exactly as SPEC section 5.

Per retain batch (x_r, y_r), with a same-size forget batch x_f (forget loader cycled):
  w = w_start + (w_end - w_start) * b / (B - 1)          guidance weight, rising over the epoch
  eta = 0; K times:  x_p = clamp(x_r + eta, 0, 1)
                     L_p = -w * L_class(f(x_p), y_r) + MSE(f(x_p), stopgrad(f(x_f)))
                     eta <- eta + alpha * sign(grad_eta L_p)
  one SGD step of f on L_class(f(clamp(x_r + eta, 0, 1)), y_r)
"""

import torch
import torch.nn.functional as F

from .. import engine
from .base import Batch, Context, Method, register, require


@register("gli")
class GLI(Method):
    """Train on retain images perturbed towards the forget set's outputs, guided to keep their class.

    `step_size` is alpha, `iterations` is K, (`w_start`, `w_end`) the guidance strength.
    The forget batch's logits are computed once per batch without gradient; the model
    trains on the perturbation after all K updates. With `trace` set, each batch's
    weight and perturbation extent are recorded (costs a device sync per batch).
    """

    pairs = True
    search_space = {
        "step_size": ("log", 1e-3, 1e-1),
        "iterations": ("int", 1, 10),
        "w_start": ("log", 100.0, 20000.0),
        "w_end": ("log", 100.0, 20000.0),  # the study samples w_end in [w_start, high]
    }

    def __init__(self, step_size: float = 0.01, iterations: int = 2, w_start: float = 200.0, w_end: float = 1000.0,
                 lr: float = 0.001, epochs: int = 1, batch_size: int = 64, momentum: float = 0.0):
        super().__init__(lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum)
        require(step_size > 0, f"gli: step_size (alpha) must be positive, got {step_size}")
        require(int(iterations) == iterations and iterations >= 1, f"gli: iterations (K) must be >= 1, got {iterations}")
        require(w_start >= 0 and w_end >= 0, f"gli: guidance weights must be non-negative, got w_start={w_start}, w_end={w_end}")
        require(w_end >= w_start, f"gli: w_end ({w_end}) must be >= w_start ({w_start})")
        self.step_size, self.iterations = step_size, int(iterations)
        self.w_start, self.w_end = float(w_start), float(w_end)
        self.trace: list[dict] | None = None  # set to [] to record per-batch weight and perturbation extent

    @classmethod
    def paper_defaults(cls, dataset):
        if dataset == "mucac":
            return {"iterations": 5}
        if dataset == "mucac-binary":
            return {"iterations": 5, "w_start": 800.0, "w_end": 12000.0}
        return {}  # MUFAC's settings, also used for digits

    def weight(self, index: int, count: int) -> float:
        if count <= 1:
            return self.w_start
        return self.w_start + (self.w_end - self.w_start) * index / (count - 1)

    def perturb(self, ctx: Context, batch: Batch, w: float) -> torch.Tensor:
        with torch.no_grad(), engine.autocast(ctx.device):
            target = ctx.model(batch.xf).float()  # once per batch, no gradient
        eta = torch.zeros_like(batch.x)
        for _ in range(self.iterations):
            eta.requires_grad_(True)
            with engine.autocast(ctx.device):
                out = ctx.model((batch.x + eta).clamp(0, 1)).float()
                loss = -w * ctx.loss(out, batch.y) + F.mse_loss(out, target)
            (grad,) = torch.autograd.grad(loss, eta)
            eta = (eta.detach() + self.step_size * grad.sign())
        return eta.detach()

    def step(self, ctx: Context, batch: Batch):
        w = self.weight(batch.index, batch.count)
        eta = self.perturb(ctx, batch, w)
        x_p = (batch.x + eta).clamp(0, 1)
        with engine.autocast(ctx.device):
            loss = ctx.loss(ctx.model(x_p), batch.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.trace is not None:
            self.trace.append({"index": batch.index, "count": batch.count, "w": w, "eta_max": float(eta.abs().max()),
                               "x_min": float(x_p.min()), "x_max": float(x_p.max())})
        return loss.detach()
