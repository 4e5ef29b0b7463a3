"""On CUDA: GLI's captured update (a CUDA graph, bf16) computes what the eager update computes.

Skipped without a GPU; run on a lent GPU by `bench/gpu_concurrency.py --check`.
"""

from __future__ import annotations

import copy

import pytest
import torch

from trainables import engine
from trainables.data.splits import Split, assemble
from trainables.methods import Context, create
from trainables.methods.interface import Batch
from trainables.models import ModelConfig, build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _setup(size: int = 64, n: int = 256):
    g = torch.Generator().manual_seed(0)

    def part(count, first):
        return Split(torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=g),
                     torch.randint(0, 8, (count,), generator=g), torch.arange(first, first + count))

    parts = {"forget": part(n // 2, 0), "retain": part(n, 10**4), "test": part(64, 2 * 10**4),
             "unseen": part(64, 3 * 10**4)}
    data = assemble("mufac", "multiclass", [str(c) for c in range(8)], parts, "x", False, 0)
    torch.manual_seed(0)
    model = engine.prepare_model(build_model(ModelConfig("resnet18"), 3, 8), CUDA)
    batches = [(torch.rand(64, 3, size, size, generator=g), torch.randint(0, 8, (64,), generator=g),
                torch.rand(64, 3, size, size, generator=g)) for _ in range(4)]
    return data, model, batches


def _run(data, model, batches, accel: engine.Accel = engine.Accel(), protocol: str = "fair",
         work: torch.nn.Module | None = None, **hparams) -> torch.nn.Module:
    """GLI's updates on the given batches, from `model`'s weights (in `work` when given, else a copy)."""
    method = create("gli", "mufac", **(hparams or {"iterations": 3, "step_size": 0.02}))
    work = copy.deepcopy(model) if work is None else work
    ctx = Context(model=work, original=model, data=data, device=CUDA, gen=torch.Generator().manual_seed(1), seed=1,
                  protocol=protocol, accel=accel)
    method.setup(ctx)
    for b, (x, y, xf) in enumerate(batches):
        x = x.to(CUDA).contiguous(memory_format=torch.channels_last)
        xf = xf.to(CUDA).contiguous(memory_format=torch.channels_last)
        method.step(ctx, Batch.of(retain=(x, y.to(CUDA)), forget=(xf, y.to(CUDA)), index=b, count=len(batches)))
    torch.cuda.synchronize()
    return work


@torch.no_grad()
def _distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return sum(float((p.float() - q.float()).norm() ** 2) for p, q in zip(a.parameters(), b.parameters())) ** 0.5


@torch.no_grad()
def _norm(a: torch.nn.Module) -> float:
    return sum(float(p.float().norm() ** 2) for p in a.parameters()) ** 0.5


@pytest.mark.parametrize("protocol", ["fair", "paper"])
def test_graphed_update_matches_eager(protocol, capsys):
    """Four GLI updates from the same weights on the same tensors: the graph replays the eager bf16 update,
    and bf16 stays within its precision of the eager fp32 update."""
    data, model, batches = _setup()
    graphed = _run(data, model, batches, engine.Accel("bf16", True), protocol)
    eager = _run(data, model, batches, engine.Accel("bf16", False), protocol)
    fp32 = _run(data, model, batches, engine.Accel("fp32", False), protocol)
    moved, size = _distance(fp32, model), _norm(fp32)
    assert moved > 0  # the updates changed the model
    graph_vs_eager, bf16_vs_fp32 = _distance(graphed, eager) / moved, _distance(graphed, fp32) / size
    with capsys.disabled():
        print(f"\n[gpu] {protocol}: |graph - eager bf16| / |update| = {graph_vs_eager:.2e}, "
              f"|graph bf16 - eager fp32| / |weights| = {bf16_vs_fp32:.2e} (|update| / |weights| = {moved / size:.2e})")
    assert graph_vs_eager < 0.02
    assert bf16_vs_fp32 < 4e-3  # bf16 keeps 8 bits of mantissa: 3.9e-3 relative
    for name, value in graphed.state_dict().items():
        assert torch.isfinite(value.float()).all(), name


def test_trial_numbers_within_bf16_tolerance_of_eager_fp32(capsys):
    """A whole GLI trial (updates, evaluations, report) on a fixed seed: graphed bf16 against eager fp32."""
    from trainables.unlearn import EvalConfig, unlearn

    data, model, _ = _setup(n=512)
    runs = {}
    for name, accel in (("graph bf16", engine.Accel("bf16", True)), ("eager fp32", engine.Accel("fp32", False))):
        runs[name] = unlearn(create("gli", "mufac"), model, data, 3, CUDA, EvalConfig(eval_every=2), accel=accel)["metrics"]
    a, b = runs["graph bf16"], runs["eager fp32"]
    with capsys.disabled():
        print("\n[gpu] trial: " + ", ".join(f"{k} {a[k]:.4f} vs {b[k]:.4f}" for k in
                                            ("accuracy", "forgetting_score", "final_score", "forget_loss")))
    assert a["steps"] == b["steps"]
    assert abs(a["accuracy"] - b["accuracy"]) <= 3 / 64 + 1e-9  # at most 3 of the 64 test images change
    assert abs(a["forget_loss"] - b["forget_loss"]) <= 0.02 * b["forget_loss"]


def test_trials_reuse_the_working_model_and_its_graph():
    data, model, batches = _setup()
    first = engine.working_copy(model, CUDA)
    assert engine.working_copy(model, CUDA) is first  # one module per architecture in a process
    _run(data, model, batches, work=engine.working_copy(model, CUDA), iterations=2)  # captures (or an earlier test did)
    assert any(key[1] == id(first) for key in engine._GRAPHS)  # a graph bound to the working model
    captured = engine.capture_seconds
    _run(data, model, batches, work=engine.working_copy(model, CUDA), iterations=2)  # a second trial: nothing new
    assert engine.capture_seconds == captured
