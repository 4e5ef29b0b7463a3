"""GLI, Guided Loss-Increasing (Choi et al., CVPR 2024 workshop TCV2), exactly as SPEC section 5.

Per retain batch (x_r, y_r), with a same-size forget batch x_f (forget loader cycled):
  w = w_start + (w_end - w_start) * b / (B - 1)          guidance weight, rising over the epoch
  eta = 0; K times:  x_p = clamp(x_r + eta, 0, 1)
                     L_p = -w * L_class(f(x_p), y_r) + MSE(f(x_p), stopgrad(f(x_f)))
                     eta <- eta + alpha * sign(grad_eta L_p)
  one SGD step of f on L_class(f(clamp(x_r + eta, 0, 1)), y_r)
"""

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .. import engine
from .interface import Batch, Context, Method, register
from .params import NON_NEGATIVE, POSITIVE, HyperParameterError, MethodParams, Search, default, hp, whole

GUIDANCE = Search("log", 100.0, 20000.0, key="guidance")  # w_start and w_end share their bounds


@dataclass(frozen=True)
class GLIParams(MethodParams):
    """alpha, K and the guidance strength (w_start, w_end): what the study searches."""

    lr: float = default(MethodParams, "lr", 0.001, searched=False)  # the study searches GLI's own three
    epochs: int = default(MethodParams, "epochs", 1)
    step_size: float = hp(0.01, POSITIVE, Search("log", 1e-3, 1e-1), label="step_size (alpha)")
    iterations: int = hp(2, whole(1), Search("int", 1, 10), label="iterations (K)",
                         per_dataset={"mucac": 5, "mucac-binary": 5})
    w_start: float = hp(200.0, NON_NEGATIVE, GUIDANCE, label="guidance weight w_start",
                        per_dataset={"mucac-binary": 800.0})
    w_end: float = hp(1000.0, NON_NEGATIVE, replace(GUIDANCE, at_least="w_start"),
                      label="guidance weight w_end", per_dataset={"mucac-binary": 12000.0})

    def check(self) -> None:
        if self.w_end < self.w_start:  # the weight only rises over the epoch
            raise HyperParameterError(f"w_end ({self.w_end}) must be >= w_start ({self.w_start})")


@register("gli")
class GLI(Method):
    """Train on retain images perturbed towards the forget set's outputs, guided to keep their class.

    The forget batch's logits are computed once per batch without gradient; the model
    trains on the perturbation after all K updates. With `trace` set, each batch's
    weight and perturbation extent are recorded (costs a device sync per batch).
    """

    Params = GLIParams
    pairs = True

    def __init__(self, params: GLIParams):
        super().__init__(params)
        self.trace: list[dict] | None = None  # set to [] to record per-batch weight and perturbation extent

    def weight(self, index: int, count: int) -> float:
        if count <= 1:
            return self.hp.w_start
        return self.hp.w_start + (self.hp.w_end - self.hp.w_start) * index / (count - 1)

    def perturb(self, ctx: Context, batch: Batch, w: float) -> torch.Tensor:
        with torch.no_grad(), engine.autocast(ctx.device):
            target = ctx.model(batch.xf).float()  # once per batch, no gradient
        eta = torch.zeros_like(batch.x)
        for _ in range(self.hp.iterations):
            eta.requires_grad_(True)
            with engine.autocast(ctx.device):
                out = ctx.model((batch.x + eta).clamp(0, 1)).float()
                loss = -w * ctx.loss(out, batch.y) + F.mse_loss(out, target)
            (grad,) = torch.autograd.grad(loss, eta)
            eta = (eta.detach() + self.hp.step_size * grad.sign())
        return eta.detach()

    def step(self, ctx: Context, batch: Batch):
        w = self.weight(batch.index, batch.count)
        eta = self.perturb(ctx, batch, w)
        x_p = (batch.x + eta).clamp(0, 1)
        with engine.autocast(ctx.device):
            loss = ctx.loss(ctx.model(x_p), batch.y)
        self.update(loss)
        if self.trace is not None:
            self.trace.append({"index": batch.index, "count": batch.count, "w": w, "eta_max": float(eta.abs().max()),
                               "x_min": float(x_p.min()), "x_max": float(x_p.max())})
        return loss.detach()
