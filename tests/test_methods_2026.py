"""SalUn, Random Labels, l1-sparse and SSD against plain-PyTorch renderings of their authors' code
(methods-2026.md sections 1-4 and 6): from identical weights on fixed tensors, float32 on the CPU, with the
tolerances section 6 gives. Each rendering is written out here from the cited lines, not imported."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from trainables import engine
from trainables.data.splits import Split, assemble
from trainables.methods import Context, create
from trainables.methods.interface import Batch
from trainables.methods.l1_sparse import l1_weight
from trainables.methods.loops import forget_then_retain
from trainables.methods.salun import saliency_mask
from trainables.methods.ssd import dampen, importance

CLASSES = 3
SEED = 7


def _net() -> torch.nn.Module:
    """A tiny network with batch norm (its buffers move in train mode), fixed weights."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, CLASSES))


def _data(forget: int = 21, retain: int = 51) -> tuple:
    g = torch.Generator().manual_seed(1)

    def part(n, first):
        return Split(torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=g),
                     torch.randint(0, CLASSES, (n,), generator=g), torch.arange(first, first + n))

    parts = {"forget": part(forget, 0), "retain": part(retain, 100), "test": part(8, 200), "unseen": part(8, 300)}
    return assemble("digits", "multiclass", [str(c) for c in range(CLASSES)], parts, "x", False, 0)


def _ctx(data, model) -> Context:
    return Context(model=copy.deepcopy(model), original=copy.deepcopy(model).eval(), data=data,
                   device=torch.device("cpu"), gen=torch.Generator().manual_seed(SEED), seed=SEED)


def _batches(split: Split, size: int, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(engine.to_float(split.images[idx]), split.labels[idx]) for idx in engine.batch_indices(len(split), size, gen)]


def _close(ours: torch.nn.Module, theirs: torch.nn.Module, rtol: float, atol: float) -> float:
    """The largest absolute difference over the state dicts, after asserting they agree within tolerance."""
    worst = 0.0
    for (key, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol), key
        worst = max(worst, float((a.float() - b.float()).abs().max()))
    return worst


# --- SalUn: generate_mask.py L14-82 --------------------------------------------------------------------------

def _reference_mask(model, batches, ratio):
    """The mask file `with_{ratio}.pt`: eval mode, -CE per batch, gradients summed over batches, |.|, one global
    ranking of the negated scores, rank < int(N * ratio)."""
    opt = torch.optim.SGD(model.parameters(), 0.013, momentum=0.9, weight_decay=5e-4)
    gradients = {name: 0 for name, _ in model.named_parameters()}
    model.eval()
    for x, y in batches:
        loss = -F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.grad is not None:
                    gradients[name] += param.grad.data
    gradients = {name: torch.abs(g) for name, g in gradients.items()}
    everything = -torch.cat([t.flatten() for t in gradients.values()])
    k = int(len(everything) * ratio)
    ranks = torch.argsort(torch.argsort(everything))
    out, start = {}, 0
    for name, t in gradients.items():
        out[name] = (ranks[start:start + t.numel()] < k).to(t.dtype).reshape(t.shape)
        start += t.numel()
    return out, -everything, k


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_salun_mask_equals_the_authors(ratio):
    data = _data()
    batches = _batches(data["forget"], 8, torch.Generator().manual_seed(3))
    assert [len(y) for _, y in batches] == [8, 8, 5]  # a short last batch, which the sum weighs more per image
    ours = saliency_mask(_net(), batches, lambda out, y: F.cross_entropy(out, y), ratio)
    theirs, scores, k = _reference_mask(_net(), batches, ratio)
    top = scores.sort(descending=True).values
    assert (top[k - 1] - top[k]) / top[k - 1] > 1e-4  # the fixture leaves no near-tie at the threshold
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
    assert int(sum(m.sum() for m in ours.values())) == k
    assert any(0 < m.mean() < 1 for m in ours.values())  # the ranking is global, not per tensor


def _salun_reference_steps(model, mask, steps, lr):
    """RL.py's CIFAR branch with a mask (a6e89fd): masked gradient, SGD (momentum 0.9, wd 5e-4), then the
    non-salient weights put back to their value at the epoch's start and their momentum zeroed."""
    opt = torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=5e-4)
    theta0 = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train()
    for x, target in steps:
        loss = F.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        for name, param in model.named_parameters():
            if param.grad is not None:
                param.grad *= mask[name]
        opt.step()
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.data.mul_(mask[name]).add_(theta0[name] * (1 - mask[name]))
                state = opt.state.get(param)
                if state is not None and "momentum_buffer" in state:
                    state["momentum_buffer"].mul_(mask[name])
    return opt


def test_salun_masked_updates_equal_the_authors():
    data, net = _data(), _net()
    method = create("salun", "digits", batch_size=8)
    ctx = _ctx(data, net)
    mask_gen = torch.Generator().set_state(ctx.gen.get_state())
    method.setup(ctx)
    theirs_mask, _, _ = _reference_mask(_net(), _batches(data["forget"], 8, mask_gen), 0.5)
    assert all(torch.equal(method.mask[name], theirs_mask[name]) for name in theirs_mask)
    theta0 = {name: p.detach().clone() for name, p in ctx.model.named_parameters()}
    g = torch.Generator().manual_seed(9)
    forget = [(torch.rand(8, 3, 6, 6, generator=g), torch.randint(0, CLASSES, (8,), generator=g)) for _ in range(2)]
    retain = (torch.rand(8, 3, 6, 6, generator=g), torch.randint(0, CLASSES, (8,), generator=g))
    reference_steps = []
    for i, (x, y) in enumerate(forget):  # the label draw fixed: the reference draws from the same generator state
        labels = torch.randint(0, CLASSES, y.shape, generator=torch.Generator().set_state(ctx.gen.get_state()))
        assert not torch.equal(labels, y)
        reference_steps.append((x, labels))
        method.step(ctx, Batch.of(forget=(x, y), index=i))
        if i == 0:  # one masked update
            reference = copy.deepcopy(net)
            _salun_reference_steps(reference, theirs_mask, reference_steps, 0.013)
            one = _close(ctx.model, reference, rtol=1e-5, atol=1e-6)
    method.step(ctx, Batch.of(retain=retain, index=2))  # the retain pass: true labels
    reference_steps.append(retain)
    reference = copy.deepcopy(net)
    opt = _salun_reference_steps(reference, theirs_mask, reference_steps, 0.013)
    three = _close(ctx.model, reference, rtol=1e-5, atol=1e-6)
    for name, p in ctx.model.named_parameters():  # after k steps: non-salient weights bitwise theta_0, momentum 0
        off = theirs_mask[name] == 0
        assert torch.equal(p.detach()[off], theta0[name][off]), name
        assert torch.equal(method.optimizer.state[p]["momentum_buffer"][off], torch.zeros_like(p)[off]), name
        assert not torch.equal(p.detach(), theta0[name]) or not (~off).any(), name  # salient ones moved
    assert opt is not None
    print(f"salun: largest difference {one:.2e} after one update, {three:.2e} after three")


# --- Random Labels: RL.py with mask=None --------------------------------------------------------------------

def test_random_labels_update_equals_the_authors():
    data, net = _data(), _net()
    method = create("random_labels", "digits", batch_size=8)
    ctx = _ctx(data, net)
    method.setup(ctx)
    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(8, 3, 6, 6, generator=g), torch.randint(0, CLASSES, (8,), generator=g)
    drawn = torch.randint(0, CLASSES, y.shape, generator=torch.Generator().set_state(ctx.gen.get_state()))
    assert (drawn == y).any()  # the code's draw keeps the true class possible: this draw includes it
    method.step(ctx, Batch.of(forget=(x, y)))
    reference = copy.deepcopy(net).train()
    opt = torch.optim.SGD(reference.parameters(), 0.01, momentum=0.9, weight_decay=5e-4)
    loss = F.cross_entropy(reference(x), drawn)
    opt.zero_grad()
    loss.backward()
    opt.step()
    worst = _close(ctx.model, reference, rtol=1e-5, atol=1e-6)
    print(f"random_labels: largest difference {worst:.2e} after one update")


def test_random_labels_epoch_is_forget_then_retain_every_batch():
    data, net = _data(), _net()
    method = create("random_labels", "digits", batch_size=8, epochs=2)
    ctx = _ctx(data, net)
    steps = list(method.run(ctx))
    per_epoch = -(-21 // 8) + -(-51 // 8)  # ceil(F / B) + ceil(R / B)
    assert len(steps) == 2 * per_epoch == method.planned_steps(ctx)
    for epoch in (1, 2):
        mine = [s for s in steps if s.epoch == epoch]
        assert [s.forget for s in mine] == [8, 8, 5] + [0] * 7 and [s.retain for s in mine] == [0] * 3 + [8] * 6 + [3]
        assert {s.mode for s in mine} == {"train"}
    buffers = dict(ctx.model.named_buffers())
    assert not torch.equal(buffers["1.running_mean"], dict(net.named_buffers())["1.running_mean"])  # train mode
    draws = list(forget_then_retain(21, 51, 8, 1, torch.Generator().manual_seed(0)))
    assert sorted(torch.cat([d.forget for d in draws if d.forget is not None]).tolist()) == list(range(21))
    assert sorted(torch.cat([d.retain for d in draws if d.retain is not None]).tolist()) == list(range(51))


# --- l1-sparse: FT.py L14-18, L92-105 ------------------------------------------------------------------------

def _reference_alpha(alpha, epoch, unlearn_epochs, no_l1_epochs):
    if epoch < unlearn_epochs - no_l1_epochs:
        return alpha * (1 - epoch / (unlearn_epochs - no_l1_epochs))
    elif unlearn_epochs - no_l1_epochs == 0:
        return alpha
    return 0


@pytest.mark.parametrize("epochs,no_l1", [(10, 0), (10, 3), (4, 4), (1, 0)])
def test_l1_schedule_equals_the_authors(epochs, no_l1):
    alpha = 3e-4
    ours = [l1_weight(alpha, t, epochs, no_l1) for t in range(epochs)]
    assert ours == [_reference_alpha(alpha, t, epochs, no_l1) for t in range(epochs)]  # exact, float64
    if (epochs, no_l1) == (10, 0):
        assert ours == pytest.approx([alpha * (10 - t) / 10 for t in range(10)], rel=1e-15)


def test_l1_update_equals_the_authors():
    data, net = _data(), _net()
    alpha, epoch = 2e-3, 4  # 1-based epoch 4 of 10: alpha_t = 0.7 alpha
    method = create("l1_sparse", "digits", batch_size=8, alpha=alpha)
    ctx = _ctx(data, net)
    method.setup(ctx)
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(8, 3, 6, 6, generator=g), torch.randint(0, CLASSES, (8,), generator=g)
    step = method.step(ctx, Batch.of(retain=(x, y), epoch=epoch))
    reference = copy.deepcopy(net).train()
    opt = torch.optim.SGD(reference.parameters(), 0.01, momentum=0.9, weight_decay=5e-4)
    current = _reference_alpha(alpha, epoch - 1, 10, 0)
    loss = F.cross_entropy(reference(x), y)
    penalty = torch.linalg.norm(torch.cat([p.view(-1) for p in reference.parameters()]), ord=1)
    loss = loss + current * penalty
    assert float(step.loss) == pytest.approx(loss.item(), rel=1e-6)  # the penalty's value at this step
    opt.zero_grad()
    loss.backward()
    opt.step()
    worst = _close(ctx.model, reference, rtol=1e-5, atol=1e-6)
    print(f"l1_sparse: largest difference {worst:.2e} after one update")


# --- SSD: ssd.py L151-217 -------------------------------------------------------------------------------------

def _reference_importance(model, batches):
    criterion = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    importances = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for x, y in batches:
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        for (_, p), (_, imp) in zip(model.named_parameters(), importances.items()):
            if p.grad is not None:
                imp.data += p.grad.data.clone().pow(2)
    for imp in importances.values():
        imp.data /= float(len(batches))
    return importances


def _reference_modify(model, original, forget, alpha, lam):
    with torch.no_grad():
        for (_, p), oimp, fimp in zip(model.named_parameters(), original.values(), forget.values()):
            locations = torch.where(fimp > oimp.mul(alpha))
            weight = (oimp.mul(lam).div(fimp)).pow(1)
            update = weight[locations]
            update[torch.where(update > 1)] = 1
            p[locations] = p[locations].mul(update)


def test_ssd_importance_equals_the_authors():
    data = _data()
    batches = _batches(data["train"], 16, torch.Generator().manual_seed(2))
    ours = importance(_net().eval(), batches, lambda out, y: F.cross_entropy(out, y))
    theirs = _reference_importance(_net().eval(), batches)
    worst = max(float((ours[n] - theirs[n]).abs().max()) for n in theirs)
    assert all(torch.allclose(ours[n], theirs[n], rtol=1e-5, atol=1e-12) for n in theirs)
    print(f"ssd importance: largest difference {worst:.2e}")


def test_ssd_edit_on_fixed_tensors_equals_the_authors():
    model = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 0.5]]))
    full = {"weight": torch.tensor([[1.0, 0.0, 2.0], [0.1, 1.0, 0.3]])}
    forget = {"weight": torch.tensor([[20.0, 0.0, 20.0], [5.0, 10.0, 3.5]])}
    # element by element (alpha 10, lambda 1 unless said): 20 > 10 selected, beta 0.05; 0 > 0 not selected (no
    # division by zero reaches the weight); 20 == 10 * 2 not selected (strict); 5 > 1 selected, beta 0.02;
    # 10 == 10 not selected; 3.5 > 3 selected, beta 0.3 / 3.5
    for alpha, lam in ((10.0, 1.0), (10.0, 40.0)):  # lambda 40: 40 * 0.3 / 3.5 > 1, clipped to 1
        ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
        selected = dampen(ours, forget, full, alpha, lam)
        _reference_modify(theirs, full, forget, alpha, lam)
        assert selected == 3
        assert torch.allclose(ours.weight, theirs.weight, rtol=2.4e-7, atol=0)
        unselected = torch.tensor([[False, True, True], [False, True, False]])
        assert torch.equal(ours.weight[unselected], model.weight[unselected])
    assert ours.weight[1, 2] == model.weight[1, 2]  # beta above 1 clipped: the weight kept, never grown


def test_ssd_dampens_only_and_keeps_buffers():
    data, net = _data(), _net()
    method = create("ssd", "digits", batch_size=16, alpha=1.0)
    ctx = _ctx(data, net)
    steps = list(method.run(ctx))
    assert len(steps) == 1 == method.planned_steps(ctx) and steps[0].mode == "eval"
    edited = dict(ctx.model.named_parameters())
    moved = 0
    for name, before in net.named_parameters():
        after = edited[name].detach()
        assert torch.all(after.abs() <= before.abs()) and torch.all(after * before >= 0), name  # dampened, sign kept
        moved += int((after != before).sum())
    assert 0 < moved <= steps[0].extra["selected"]  # a selected weight can stay (0, or beta rounding to 1)
    assert all(torch.equal(a, b) for a, b in zip(ctx.model.buffers(), net.buffers()))  # eval mode: buffers as they were
