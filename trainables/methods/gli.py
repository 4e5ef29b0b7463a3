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

    Loop (reference-loops.md 4.9): RD, one epoch, skipped when the sizes differ (MUFAC: at
    most 128 updates); the weight's b counts skipped batches. `fair` computes the forget
    batch's logits once per batch, without gradient, and trains on the perturbation after
    all K updates. `paper` adds the notebooks' accidents: every update after the first runs
    in eval mode (the per-step evaluation leaves the model so), the forget logits are
    recomputed at each of the K iterations, and on multi-label the K-th update is not used.
    With `trace` set, each batch's perturbation extent is recorded (a device sync per batch).
    """

    Params = GLIParams
    selects_under_paper = True

    def __init__(self, params: GLIParams):
        super().__init__(params)
        self.trace: list[dict] | None = None  # set to [] to record per-batch perturbation extent
        self.updates = 0

    def draws(self, ctx: Context, gen):
        return self.pairs(ctx, gen, "rd")

    def weight(self, index: int, count: int) -> float:
        if count <= 1:
            return self.hp.w_start
        return self.hp.w_start + (self.hp.w_end - self.hp.w_start) * index / (count - 1)

    def set_mode(self, ctx: Context, batch: Batch) -> None:
        ctx.model.train(not ctx.paper or self.updates == 0)

    def perturb(self, ctx: Context, x: torch.Tensor, y: torch.Tensor, xf: torch.Tensor, w: float) -> torch.Tensor:
        """eta after the K sign-gradient updates (under `paper` on multi-label, after K - 1)."""
        def forget_logits():
            with torch.no_grad(), engine.autocast(ctx.device):
                return ctx.model(xf).float()

        target = None if ctx.paper else forget_logits()  # fair: once per batch
        eta = torch.zeros_like(x)
        used = eta
        for _ in range(self.hp.iterations):
            used = eta
            eta = eta.detach().requires_grad_(True)
            with engine.autocast(ctx.device):
                out = ctx.model((x + eta).clamp(0, 1)).float()
                goal = forget_logits() if ctx.paper else target
                loss = -w * ctx.loss(out, y) + F.mse_loss(out, goal)
            (grad,) = torch.autograd.grad(loss, eta)
            eta = eta.detach() + self.hp.step_size * grad.sign()
        if ctx.paper and ctx.family == "multilabel":
            return used.detach()  # the notebook trains on the previous iteration's perturbed image
        return eta.detach()

    def step(self, ctx: Context, batch: Batch):
        self.set_mode(ctx, batch)
        w = self.weight(batch.draw.index, batch.draw.count)
        (x, y), (xf, _) = batch.retain, batch.forget
        eta = self.perturb(ctx, x, y, xf, w)
        x_p = (x + eta).clamp(0, 1)
        with engine.autocast(ctx.device):
            loss = ctx.loss(ctx.model(x_p), y)
        self.update(loss)
        self.updates += 1
        if self.trace is not None:
            self.trace.append({"w": w, "eta_max": float(eta.abs().max()), "x_min": float(x_p.min()),
                               "x_max": float(x_p.max())})
        return self.record(ctx, batch, loss, w=w)
