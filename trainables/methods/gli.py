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
from .params import NON_NEGATIVE, POSITIVE, HyperParameterError, MethodParams, Search, default, declare, whole

GUIDANCE = Search("log", 100.0, 20000.0, key="guidance")  # w_start and w_end share their bounds


@dataclass(frozen=True)
class GLIParams(MethodParams):
    """alpha, K and the guidance strength (w_start, w_end): what the study searches."""

    lr: float = default(MethodParams, "lr", 0.001, searched=False)  # the study searches GLI's own three
    epochs: int = default(MethodParams, "epochs", 1)
    step_size: float = declare(0.01, POSITIVE, Search("log", 1e-3, 1e-1), label="step_size (alpha)")
    iterations: int = declare(2, whole(1), Search("int", 1, 10), label="iterations (K)",
                         per_dataset={"mucac": 5, "mucac-binary": 5})
    w_start: float = declare(200.0, NON_NEGATIVE, GUIDANCE, label="guidance weight w_start",
                        per_dataset={"mucac-binary": 800.0})
    w_end: float = declare(1000.0, NON_NEGATIVE, replace(GUIDANCE, at_least="w_start"),
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
        self._weights: torch.Tensor | None = None  # on CUDA: the epoch's guidance weights, on the device
        self._alpha: torch.Tensor | None = None

    def draws(self, ctx: Context, gen):
        return self.pairs(ctx, gen, "rd")

    def weight(self, index: int, count: int) -> float:
        if count <= 1:
            return self.hp.w_start
        return self.hp.w_start + (self.hp.w_end - self.hp.w_start) * index / (count - 1)

    def set_mode(self, ctx: Context, batch: Batch) -> None:
        ctx.model.train(not ctx.paper or self.updates == 0)

    def apply(self, ctx: Context, x, y, xf, w, alpha, capture: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One update as tensor operations only (so that it can be captured): the K sign-gradient
        steps of eta, then the model's step on clamp(x + eta); returns (loss, eta)."""
        def forget_logits():
            with torch.no_grad(), ctx.autocast(capture):
                return ctx.model(xf).float()

        target = None if ctx.paper else forget_logits()  # fair: once per batch
        eta = used = torch.zeros_like(x)
        for _ in range(self.hp.iterations):
            used = eta
            eta = eta.detach().requires_grad_(True)
            with ctx.autocast(capture):
                out = ctx.model((x + eta).clamp(0, 1)).float()
                goal = forget_logits() if ctx.paper else target
                loss = -w * ctx.loss(out, y) + F.mse_loss(out, goal)
            (grad,) = torch.autograd.grad(loss, eta)
            eta = eta.detach() + alpha * grad.sign()
        if ctx.paper and ctx.family == "multilabel":
            eta = used  # the notebook trains on the previous iteration's perturbed image
        eta = eta.detach()
        with ctx.autocast(capture):
            loss = ctx.loss(ctx.model((x + eta).clamp(0, 1)), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), eta

    def graphed(self, ctx: Context, x, y, xf, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`apply` replayed from a CUDA graph, captured once per process for each shape and setting."""
        key = ("gli", id(ctx.model), ctx.model.training, ctx.protocol, ctx.family, ctx.data.task, ctx.accel.precision,
               self.hp.iterations, self.hp.lr, tuple(x.shape), x.stride(), tuple(y.shape), y.dtype)
        alpha = self._alpha  # a device tensor, so that trials with another alpha replay the same graph

        def build():
            return engine.StepGraph(lambda *a: self.apply(ctx, *a, capture=True), [x, y, xf, w, alpha], ctx.model)

        loss, eta = engine.cached_graph(key, build)(x, y, xf, w, alpha)
        return loss.clone(), eta.clone()

    def uses_graph(self, ctx: Context, x: torch.Tensor, xf: torch.Tensor) -> bool:
        # SGD without momentum keeps no state besides the parameters the graph writes in place.
        return (ctx.device.type == "cuda" and ctx.accel.cuda_graphs and self.hp.momentum == 0
                and x.shape == xf.shape)

    def step(self, ctx: Context, batch: Batch):
        self.set_mode(ctx, batch)
        w = self.weight(batch.draw.index, batch.draw.count)
        (x, y), (xf, _) = batch.retain, batch.forget
        if self.uses_graph(ctx, x, xf):
            if self._weights is None:  # every weight of the epoch on the device at once: no copy per step
                self._weights = torch.tensor([self.weight(b, batch.draw.count) for b in range(batch.draw.count)],
                                             device=ctx.device)
                self._alpha = torch.tensor(self.hp.step_size, device=ctx.device)
            loss, eta = self.graphed(ctx, x, y, xf, self._weights[batch.draw.index])
        else:
            loss, eta = self.apply(ctx, x, y, xf, w, self.hp.step_size)
        self.updates += 1
        if self.trace is not None:
            x_p = (x + eta).clamp(0, 1)
            self.trace.append({"w": w, "eta_max": float(eta.abs().max()), "x_min": float(x_p.min()),
                               "x_max": float(x_p.max())})
        return self.step_taken(ctx, batch, loss, w=w)
