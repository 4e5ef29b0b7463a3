"""Every registered method, tested the same way (a new method is tested by being registered),
plus the method-specific properties of SPEC section 5."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from trainables import engine
from trainables.base_models import TrainConfig, train_model
from trainables.data import DataConfig, load_dataset
from trainables.methods import REGISTRY, Context, HyperParameterError, available, create, get, register
from trainables.metrics import per_example_loss
from trainables.models import BLOCKS, ModelConfig, block_modules, block_parameters
from trainables.unlearn import EvalConfig, unlearn

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    data = load_dataset(DataConfig())
    model, _ = train_model(data, "train", ModelConfig("resnet18_small", 4), TrainConfig(epochs=3, lr=0.05, momentum=0.0),
                           seed=0, device=CPU, log_every=0)
    return data, model.eval()


def _ctx(data, original, seed=0) -> Context:
    engine.seed_everything(seed)
    return Context(model=copy.deepcopy(original), original=original, data=data, device=CPU,
                   gen=engine.generator(seed), seed=seed)


def _fast(name, **extra):
    return create(name, "digits", **{"epochs": 1, "batch_size": 64, **extra})


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_registry_lists_every_paper_method():
    assert available() == sorted(["finetune", "cf_k", "neggrad", "advanced_neggrad", "unsir", "scrub",
                                  "bad_teaching", "eu_k", "gli"])
    with pytest.raises(KeyError, match="known: advanced_neggrad, bad_teaching"):
        get("sgd_ascent")
    with pytest.raises(ValueError, match="already registered"):
        register("gli")(type("Again", (), {}))
    with pytest.raises(ValueError, match="already registered"):
        register("retrain")(type("Again", (), {}))


@pytest.mark.parametrize("name", available())
def test_method_runs_finite_and_changes_parameters(setup, name):
    data, original = setup
    ctx = _ctx(data, original)
    method = _fast(name)
    before = _state(ctx.model)
    losses = [float(loss) for loss in method.run(ctx)]
    assert losses and all(math.isfinite(v) for v in losses)
    changed = [k for k, v in ctx.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, f"{name} left every parameter as it was"
    for p_orig, p_now in zip(original.parameters(), copy.deepcopy(original).parameters()):
        assert torch.equal(p_orig, p_now)  # the original model itself is never touched


@pytest.mark.parametrize("name", available())
def test_same_seed_same_metrics(setup, name):
    data, original = setup
    runs = [unlearn(_fast(name), original, data, seed=3, device=CPU, cfg=EvalConfig(eval_every=7))["metrics"]
            for _ in range(2)]
    for key in runs[0]:
        if key != "seconds" and key != "rte":
            assert runs[0][key] == runs[1][key], key


@pytest.mark.parametrize("name", available())
def test_hyperparameters_validated_before_work(name):
    with pytest.raises(HyperParameterError, match="learning rate must be positive"):
        create(name, "digits", lr=0)
    with pytest.raises(HyperParameterError, match="unknown hyper-parameter"):
        create(name, "digits", not_a_setting=1)


@pytest.mark.parametrize("bad,message", [
    ({"step_size": 0}, "step_size"), ({"iterations": 0}, "iterations"), ({"w_start": -1.0}, "non-negative"),
    ({"w_start": 500.0, "w_end": 100.0}, "w_end"), ({"lr": -0.1}, "learning rate"),
])
def test_gli_validation(bad, message):
    with pytest.raises(HyperParameterError, match=message):
        create("gli", "digits", **bad)


@pytest.mark.parametrize("name", ["cf_k", "eu_k"])
def test_k_outside_blocks(name):
    for k in (0, len(BLOCKS) + 1):
        with pytest.raises(HyperParameterError, match="k must be between 1 and 6"):
            create(name, "digits", k=k)


def test_paper_defaults_per_dataset():
    assert create("gli", "mufac").config()["iterations"] == 2
    assert create("gli", "mucac").config()["iterations"] == 5
    binary = create("gli", "mucac-binary").config()
    assert (binary["w_start"], binary["w_end"], binary["iterations"]) == (800.0, 12000.0, 5)
    assert create("eu_k", "mufac").hp.lr == 0.01 and create("finetune", "mufac").hp.lr == 0.001


def test_neggrad_raises_forget_loss(setup):
    data, original = setup
    ctx = _ctx(data, original)
    forget = data["forget"]
    def forget_loss(model):
        with torch.no_grad():
            return float(per_example_loss(model.eval()(forget.images.float() / 255), forget.labels, data.task).mean())
    before = forget_loss(ctx.model)
    for _ in _fast("neggrad", lr=0.01).run(ctx):
        pass
    assert forget_loss(ctx.model) > before * 1.2


def test_gli_perturbation_bounds_and_weight_schedule(setup):
    data, original = setup
    ctx = _ctx(data, original)
    gli = _fast("gli", step_size=0.02, iterations=3, w_start=150.0, w_end=900.0)
    gli.trace = []
    steps = sum(1 for _ in gli.run(ctx))
    trace = gli.trace
    assert len(trace) == steps == math.ceil(len(data["retain"]) / 64)
    assert trace[0]["w"] == 150.0 and trace[-1]["w"] == 900.0
    assert all(a["w"] < b["w"] for a, b in zip(trace, trace[1:]))  # rising linearly over the epoch
    assert all(t["eta_max"] <= 3 * 0.02 + 1e-6 for t in trace)  # within K * alpha in max-norm
    assert max(t["eta_max"] for t in trace) == pytest.approx(3 * 0.02, rel=1e-5)  # sign steps reach the bound
    assert all(0.0 <= t["x_min"] and t["x_max"] <= 1.0 for t in trace)


def test_gli_forget_logits_once_per_batch(setup, monkeypatch):
    data, original = setup
    ctx = _ctx(data, original)
    gli = _fast("gli", iterations=4)
    calls = {"grad_free": 0, "total": 0}
    forward = ctx.model.forward
    def counting(x):
        calls["total"] += 1
        calls["grad_free"] += not torch.is_grad_enabled()
        return forward(x)
    monkeypatch.setattr(ctx.model, "forward", counting)
    steps = sum(1 for _ in gli.run(ctx))
    assert calls["grad_free"] == steps  # the forget logits: once per batch, without gradient
    assert calls["total"] == steps * (1 + 4 + 1)  # + K perturbation passes + one training pass


@pytest.mark.parametrize("name", ["cf_k", "eu_k"])
def test_frozen_blocks_untouched(setup, name):
    data, original = setup
    ctx = _ctx(data, original)
    method = _fast(name, k=2)  # trains layer4 and fc only
    frozen = list(BLOCKS[:-2])
    before = {n: [t.clone() for m in block_modules(ctx.model, n) for t in list(m.parameters()) + list(m.buffers())]
              for n in frozen}
    for _ in method.run(ctx):
        pass
    for n in frozen:
        after = [t for m in block_modules(ctx.model, n) for t in list(m.parameters()) + list(m.buffers())]
        assert all(torch.equal(a, b) for a, b in zip(before[n], after)), f"{name} changed frozen block {n}"
    trained = block_parameters(ctx.model, ["layer4", "fc"])
    assert any(not torch.equal(p, q) for p, q in zip(trained, block_parameters(original, ["layer4", "fc"])))


def test_eu_k_really_reinitialises(setup):
    data, original = setup
    ctx = _ctx(data, original)
    method = _fast("eu_k", k=3)
    method.setup(ctx)  # re-initialisation happens here, before any training step
    for n in ("layer3", "layer4", "fc"):
        fresh, orig = block_parameters(ctx.model, [n]), block_parameters(original, [n])
        assert all(not torch.equal(p, q) for p, q in zip(fresh, orig) if p.dim() > 1), n
    for p, q in zip(block_parameters(ctx.model, ["stem", "layer1", "layer2"]),
                    block_parameters(original, ["stem", "layer1", "layer2"])):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["scrub", "bad_teaching"])
def test_teachers_unchanged(setup, name):
    data, original = setup
    ctx = _ctx(data, original)
    method = _fast(name)
    for _ in method.run(ctx):
        pass
    teacher = method.teacher if name == "scrub" else method.good
    for p, q in zip(teacher.parameters(), original.parameters()):
        assert torch.equal(p, q)
    if name == "bad_teaching":
        bad = _state(method.bad)
        assert any(not torch.equal(v, original.state_dict()[k]) for k, v in bad.items() if v.dtype.is_floating_point)


def test_unsir_runs_both_stages(setup):
    data, original = setup
    method = _fast("unsir", repair_epochs=1)
    steps = sum(1 for _ in method.run(_ctx(data, original)))
    per_epoch = math.ceil(len(data["retain"]) / 64)
    assert method.stage_steps == {"impair": per_epoch, "repair": per_epoch} and steps == 2 * per_epoch


def test_multilabel_task_runs_every_method():
    from tests.test_metrics import _tiny_multilabel
    from trainables.models import build_model

    data = _tiny_multilabel()
    torch.manual_seed(0)
    original = build_model(ModelConfig("resnet18_small", 4), 3, 3).eval()
    for name in REGISTRY:
        result = unlearn(create(name, "mucac", epochs=1, batch_size=16), original, data, 0, CPU, EvalConfig(eval_every=2))
        m = result["metrics"]
        assert math.isfinite(m["accuracy"]) and "accuracy_Smiling" in m and math.isfinite(m["forgetting_score"]), name


def test_runner_selects_on_selection_halves_only(setup, monkeypatch):
    data, original = setup
    seen = []
    import trainables.unlearn as runner_module
    real = runner_module.evaluate
    def spy(model, data, test="test", unseen="unseen", **kw):
        seen.append((test, unseen))
        return real(model, data, test=test, unseen=unseen, **kw)
    monkeypatch.setattr(runner_module, "evaluate", spy)
    out = unlearn(_fast("finetune"), original, data, 0, CPU, EvalConfig(eval_every=3))
    assert seen[:-1] == [("val", "unseen_val")] * (len(seen) - 1)  # every selection read the selection halves
    assert seen[-1] == ("test_report", "unseen_report")  # only the final report reads the report halves
    assert out["metrics"]["evaluations"] == len(seen) - 1
    best = max(out["curve"], key=lambda c: c["final_score"])
    assert out["metrics"]["best_step"] == best["step"] and out["metrics"]["sel_final_score"] == best["final_score"]
    seen.clear()
    unlearn(_fast("finetune"), original, data, 0, CPU, EvalConfig(eval_every=3, selection="test"))
    assert set(seen) == {("test", "unseen")}


def test_patience_stops_early(setup):
    data, original = setup
    out = unlearn(_fast("neggrad", lr=0.05, epochs=3), original, data, 0, CPU, EvalConfig(eval_every=1, patience=2))
    total = 3 * math.ceil(len(data["forget"]) / 64)
    assert out["steps"] < total and out["metrics"]["evaluations"] - 1 - out["curve"].index(
        max(out["curve"], key=lambda c: c["final_score"])) == 2


def test_diverging_run_raises(setup):
    from trainables.unlearn import Diverged

    data, original = setup
    with pytest.raises(Diverged):
        unlearn(_fast("neggrad", lr=1e6), original, data, 0, CPU, EvalConfig(eval_every=1))
