"""Selective Synaptic Dampening (Foster, Schoepf, Brintrup, AAAI 2024; methods-2026.md section 4).

No training loop: two importance passes and one edit of the weights, as the authors'
`ssd.py` runs them. Importance of a data set: with the model in eval mode and no
augmentation, per batch (batch 128) the squared gradient of the mean cross-entropy, summed
over batches and divided by their number (mean squared mini-batch gradient, not a
per-image Fisher: it depends on the batch size). I_f on the forget set first, then I_D on
the full training set (retain and forget). For every parameter element i with
I_f,i > alpha * I_D,i (strict), theta_i <- min(lambda * I_D,i / I_f,i, 1) * theta_i; every
other element and every buffer is left as it is. Defaults alpha 10 and lambda 1 (the
authors' ResNet-18 mains). Multi-label data uses the project's mean binary cross-entropy (a
project decision; no source covers it).

`run` yields one step, the edit; under `fair` that edited model is the one checkpoint the
selection rule sees, so it is the one reported (there is nothing to select among). `lr`,
`epochs` and `momentum` are accepted for the registry's common fields and unused."""

from dataclasses import dataclass

import torch

from .. import engine
from ..metrics import predict
from .interface import Context, Method, Step, register
from .params import POSITIVE, MethodParams, Search, declare, default


@dataclass(frozen=True)
class SSDParams(MethodParams):
    lr: float = default(MethodParams, "lr", 0.001, searched=False)  # unused: SSD makes no optimiser step
    epochs: int = default(MethodParams, "epochs", 1)  # unused: one edit
    batch_size: int = default(MethodParams, "batch_size", 128)
    alpha: float = declare(10.0, POSITIVE, Search("log", 1.0, 100.0), label="selection weighting alpha")
    dampening: float = declare(1.0, POSITIVE, Search("log", 0.1, 10.0), label="dampening constant lambda")


def importance(model: torch.nn.Module, batches, loss_fn) -> dict[str, torch.Tensor]:
    """{parameter name: mean over `batches` of the squared gradient of the batch's mean loss}. `batches` yields
    (x, y); the model is used as it is (the caller puts it in eval mode); its gradients are left cleared."""
    named = list(model.named_parameters())
    total = {name: torch.zeros_like(p) for name, p in named}
    count = 0
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        with torch.no_grad():
            for name, p in named:
                if p.grad is not None:
                    total[name] += p.grad.pow(2)
        count += 1
    model.zero_grad(set_to_none=True)
    return {name: t / max(count, 1) for name, t in total.items()}


@torch.no_grad()
def dampen(model: torch.nn.Module, forget_imp: dict[str, torch.Tensor], full_imp: dict[str, torch.Tensor],
           alpha: float, dampening: float) -> int:
    """The edit: theta_i <- min(lambda * I_D,i / I_f,i, 1) * theta_i where I_f,i > alpha * I_D,i. Returns how many
    elements were selected."""
    selected = 0
    for name, p in model.named_parameters():
        fimp, oimp = forget_imp[name], full_imp[name]
        where = fimp > oimp * alpha
        beta = (oimp * dampening / fimp).clamp(max=1.0)
        p.copy_(torch.where(where, p * beta, p))
        selected += int(where.sum())
    return selected


@register("ssd")
class SSD(Method):
    """Dampen the weights the forget set needs far more than the training set does."""

    Params = SSDParams
    defaults_from = "authors"

    def batches(self, ctx: Context, split: str):
        rows = ctx.data[split]
        for idx in engine.batch_indices(len(rows), self.hp.batch_size, ctx.gen):
            yield engine.inputs(rows, idx, ctx.device, augment=False)

    def run(self, ctx: Context):
        model = ctx.model.eval()
        forget_imp = importance(model, self.batches(ctx, "forget"), ctx.loss)
        full_imp = importance(model, self.batches(ctx, "train"), ctx.loss)
        selected = dampen(model, forget_imp, full_imp, self.hp.alpha, self.hp.dampening)
        forget = ctx.data["forget"]  # the forget set's loss after the edit, for the trace
        loss = ctx.loss(predict(model, forget, ctx.device, amp=False), forget.labels.cpu()).detach()
        yield Step(loss, 1, 0, len(ctx.data["train"]), len(ctx.data["forget"]), "eval", 0.0,
                   extra={"selected": selected})

    def planned_steps(self, ctx: Context) -> int:
        return 1

    def planned_epochs(self) -> int:
        return 1
