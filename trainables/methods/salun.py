"""SalUn (Fan et al., ICLR 2024): Random Labels on the salient weights only (methods-2026.md section 1).

The saliency mask, as `generate_mask.py` computes it: the original model in eval mode,
for each forget batch (training augmentation, batch 256) the gradient of the negated mean
cross-entropy, summed over batches (so a short last batch weighs more per image); the
score is its absolute value; one global ranking over every parameter tensor (convolutions,
batch-norm weights and biases, the classifier), and the top int(N * ratio) scores are
salient (ratio 0.5, the README's). Ties fall where a stable sort puts them.

Unlearning: Random Labels' loop (`random_labels.py`). After every backward pass the
gradient is multiplied by the mask; after every step the non-salient weights are put back
to their values before unlearning and their momentum is zeroed, as the code does since
commit a6e89fd (before it, weight decay still shrank non-salient weights through the
momentum buffer; the paper's numbers predate the fix). lr 0.013 (the README's example)."""

from dataclasses import dataclass

import torch

from .. import engine
from .interface import Context, register
from .params import OptmlParams, Rule, Search, declare, default
from .random_labels import RandomLabels


@dataclass(frozen=True)
class SalUnParams(OptmlParams):
    lr: float = default(OptmlParams, "lr", 0.013)
    ratio: float = declare(0.5, Rule(lambda v: 0 < v <= 1, "must be in (0, 1]"), Search("float", 0.1, 0.9),
                           label="mask ratio")


def saliency_mask(model: torch.nn.Module, batches, loss_fn, ratio: float) -> dict[str, torch.Tensor]:
    """{parameter name: 0/1 mask}: the top int(N * ratio) of |sum over `batches` of the gradient of -loss| across
    every parameter of `model`, ranked globally. `batches` yields (x, y); `loss_fn(logits, y)` is the mean loss.
    The model is put in eval mode; its gradients are left cleared."""
    model.eval()
    named = list(model.named_parameters())
    sums = {name: torch.zeros_like(p) for name, p in named}
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        (-loss_fn(model(x), y)).backward()
        with torch.no_grad():
            for name, p in named:
                if p.grad is not None:
                    sums[name] += p.grad
    model.zero_grad(set_to_none=True)
    scores = torch.cat([sums[name].abs().flatten() for name, _ in named])
    order = torch.argsort(scores, descending=True, stable=True)
    keep = torch.zeros_like(scores)
    keep[order[:int(len(scores) * ratio)]] = 1
    out, start = {}, 0
    for name, p in named:
        out[name] = keep[start:start + p.numel()].view_as(p)
        start += p.numel()
    return out


@register("salun")
class SalUn(RandomLabels):
    """Random Labels with gradients and weights outside the saliency mask held at the original model's."""

    Params = SalUnParams

    def setup(self, ctx: Context) -> None:
        forget = ctx.data["forget"]
        batches = (ctx.inputs("forget", idx) for idx in engine.batch_indices(len(forget), self.hp.batch_size, ctx.gen))
        self.mask = saliency_mask(ctx.model, batches, ctx.loss, self.hp.ratio)  # float32, one pass
        self.masked = [(p, self.mask[name], p.detach().clone()) for name, p in ctx.model.named_parameters()]
        super().setup(ctx)

    def update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p, mask, _ in self.masked:
            if p.grad is not None:
                p.grad.mul_(mask)
        self.optimizer.step()
        with torch.no_grad():
            for p, mask, start in self.masked:
                p.copy_(torch.where(mask.bool(), p, start))
                state = self.optimizer.state.get(p)
                if state and state.get("momentum_buffer") is not None:
                    state["momentum_buffer"].mul_(mask)
