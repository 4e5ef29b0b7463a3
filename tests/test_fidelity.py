"""The `paper` protocol runs the reference notebooks' loops (reference-loops.md section 7) step for step.

Step counts and model modes come from `python -m trainables.run --trace` on generated
MUFAC and CelebA-HQ folders whose split sizes leave last batches of different sizes
(batches of 8), so that every skip rule bites. One update of each method is checked
against a plain-PyTorch rendering of the notebook's loop body, written out here.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from tests.fixtures import make_mucac, make_mufac
from trainables.data.splits import Split, assemble
from trainables.methods import Context, available, create, get
from trainables.methods.distill import distill_kl
from trainables.methods.interface import Batch
from trainables.models import ModelConfig, build_model
from trainables.run import main as run_main

B = 8
MUCAC_SPLIT = {"test_max_id": 10, "retain_max_id": 27, "forget_max_id": 34}  # retain 51, forget 21 images


def _sizes(n: int) -> list[int]:
    k = math.ceil(n / B)
    return [B] * (k - 1) + [n - B * (k - 1)]


def _ro(r, f, epochs):
    return epochs * len(_sizes(r))


def _rd(r, f, epochs):  # reference-loops.md 4.3: a step where the g-th retain and forget batches agree in size
    sr, sf = _sizes(r), _sizes(f)
    return sum(sr[g % len(sr)] == sf[g % len(sf)] for g in range(epochs * len(sr)))


def _zip(r, f, epochs, full=False):
    return epochs * sum(a == b and (not full or a == B) for a, b in zip(_sizes(r), _sizes(f)))


def _fo(r, f, epochs):
    return epochs * (f // B)


def expected_steps(method: str, family: str, r: int, f: int) -> int:
    """The notebooks' step count (reference-loops.md section 7.1) for retain r and forget f images."""
    ml = family == "multilabel"
    return {
        "finetune": _ro(r, f, 2), "cf_k": _ro(r, f, 2), "eu_k": _ro(r, f, 2), "bad_teaching": _ro(r, f, 2),
        "neggrad": _fo(r, f, 2) if ml else _rd(r, f, 2),
        "advanced_neggrad": _rd(r, f, 2) if family == "multiclass" else _zip(r, f, 2, full=True),
        "unsir": _zip(r, f, 2, full=ml) + _ro(r, f, 1),
        "scrub": 2 * _zip(r, f, 2),
        "gli": _rd(r, f, 1),
        # the authors' loops (methods-2026.md), 10 epochs, the same under both protocols
        "random_labels": 10 * (len(_sizes(f)) + len(_sizes(r))), "salun": 10 * (len(_sizes(f)) + len(_sizes(r))),
        "l1_sparse": _ro(r, f, 10), "ssd": 1,
    }[method]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    mufac = make_mufac(root / "mufac", {"train": range(1, 19), "val": range(801, 807), "test": range(851, 857)},
                       per_family=4, duplicate=False)  # 72 train rows: forget 21 (the first rows), retain 51
    mucac = make_mucac(root / "celeba", identities=44)
    return {"mufac": mufac, "mucac": mucac, "cache": root / "cache"}


def _trace(folders, tmp_path, dataset: str, protocol: str, method: str = "all") -> list[dict]:
    path = tmp_path / f"{dataset}-{protocol}.jsonl"
    argv = ["--method", method, "--dataset", dataset, "--protocol", protocol, "--image-size", "16", "--width", "4",
            "--base-epochs", "1", "--set", f"batch_size={B}", "--patience", "1000", "--trace", str(path),
            "--cache-dir", str(folders["cache"])]
    if dataset == "mufac":
        argv += ["--data-dir", str(folders["mufac"]), "--forget-count", "21"]
    else:
        argv += ["--data-dir", str(folders["mucac"])] + [f"--{k.replace('_', '-')}={v}" for k, v in MUCAC_SPLIT.items()]
    assert run_main(argv) == 0
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("dataset,family", [("mufac", "multiclass"), ("mucac", "multilabel"),
                                            ("mucac-binary", "binary")])
def test_paper_step_counts_and_modes(folders, tmp_path, dataset, family):
    lines = _trace(folders, tmp_path, dataset, "paper")
    r, f = 51, 21
    for method in available():
        steps = [x for x in lines if x["method"] == method and "event" not in x]
        assert len(steps) == expected_steps(method, family, r, f), method
        assert [x["step"] for x in steps] == list(range(1, len(steps) + 1))
        modes = [x["mode"] for x in steps]
        evals = [x["step"] for x in lines if x["method"] == method and x.get("event") == "eval"]
        if method == "gli":  # evaluated after every update, which leaves the model in eval mode
            assert modes == ["train"] + ["eval"] * (len(steps) - 1)
            assert evals == list(range(1, len(steps) + 1))
        else:  # baselines run their fixed epochs and report their last model, evaluated once
            assert evals == [len(steps)], method
        if method == "unsir":
            repair = [x["mode"] for x in steps if x["phase"] == "repair"]
            assert set(x["mode"] for x in steps if x["phase"] == "impair") == {"train"}
            assert set(repair) == {"train" if family == "multilabel" else "eval"}, family
        elif method == "ssd":  # no training: importances in eval mode, one edit
            assert modes == ["eval"]
        elif method != "gli":
            assert set(modes) == {"train"}, method
        if method == "neggrad" and family != "multilabel":
            assert all(x["retain"] == 0 and x["forget"] == B for x in steps)  # retain only drives the loop
        if method == "scrub":
            assert [x["phase"] for x in steps] == ["min", "max"] * (len(steps) // 2)
        if method == "gli":
            count, (w0, w1) = math.ceil(r / B), (800, 12000) if family == "binary" else (200, 1000)
            assert all(x["w"] == pytest.approx(w0 + (w1 - w0) * x["batch"] / (count - 1)) for x in steps)


def test_rd_closed_form_on_these_sizes():
    """reference-loops.md 4.3: E nR - E - floor(E nR / nF) when no last batches coincide (51 / 21 at 8): the
    project's retain-driven loop takes exactly that many steps."""
    from trainables.methods.loops import retain_driven

    nr, nf = math.ceil(51 / B), math.ceil(21 / B)
    steps = list(retain_driven(51, 21, B, 2, torch.Generator().manual_seed(0)))
    assert len(steps) == _rd(51, 21, 2) == 2 * nr - 2 - (2 * nr) // nf == 8
    assert all(len(d.retain) == len(d.forget) for d in steps)


def test_fair_trains_every_step_in_train_mode(folders, tmp_path):
    lines = _trace(folders, tmp_path, "mufac", "fair")
    steps = [x for x in lines if "event" not in x]
    assert {x["method"] for x in steps} == set(available())
    assert {x["mode"] for x in steps if x["method"] != "ssd"} == {"train"}
    gli = [x for x in steps if x["method"] == "gli"]
    assert len(gli) == expected_steps("gli", "multiclass", 51, 21)  # the same loops as paper
    evaluated = {x["method"] for x in lines if x.get("event") == "eval"}
    assert evaluated == set(available())  # one selection rule: every method evaluated, baselines included


def test_kl_is_teacher_to_student():
    student = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.0, -1.2]])
    teacher = torch.tensor([[0.2, 1.5, -0.7], [2.0, -1.0, 0.4]])
    t = 4.0
    p_t, p_s = (teacher / t).softmax(1), (student / t).softmax(1)
    by_hand = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * t * t
    assert distill_kl(student, teacher, t).item() == pytest.approx(by_hand.item(), rel=1e-6)
    reverse = (p_s * (p_s.log() - p_t.log())).sum(1).mean() * t * t
    assert abs(by_hand - reverse) > 1e-3  # the two directions differ on these logits
    q_t, q_s = torch.sigmoid(teacher / t), torch.sigmoid(student / t)
    bern = (q_t * (q_t.log() - q_s.log()) + (1 - q_t) * ((1 - q_t).log() - (1 - q_s).log())).sum(1).mean() * t * t
    assert distill_kl(student, teacher, t, bernoulli=True).item() == pytest.approx(bern.item(), rel=1e-6)


# --- one update against the notebooks' loop bodies, written out in plain PyTorch ----------------------

SEED = 5


def _tiny(task: str) -> tuple:
    g = torch.Generator().manual_seed(1)
    outputs = 3 if task == "multilabel" else 4

    def part(n, first):
        labels = (torch.randint(0, 2, (n, 3), generator=g).float() if task == "multilabel"
                  else torch.randint(0, outputs, (n,), generator=g))
        return Split(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g), labels,
                     torch.arange(first, first + n))

    parts = {"forget": part(24, 0), "retain": part(24, 100), "test": part(24, 200), "unseen": part(24, 300)}
    names = ["Male", "Smiling", "Young"] if task == "multilabel" else [str(c) for c in range(outputs)]
    data = assemble("mucac" if task == "multilabel" else "mufac", task, names, parts, "x", False, 0)
    torch.manual_seed(2)
    model = build_model(ModelConfig("resnet18_small", 4), 3, outputs)
    x = lambda: torch.rand(8, 3, 8, 8, generator=g)  # noqa: E731
    y = (lambda: torch.randint(0, 2, (8, 3), generator=g).float()) if task == "multilabel" else (
        lambda: torch.randint(0, outputs, (8,), generator=g))
    return data, model, (x(), y()), (x(), y())


def _loss(task):
    return torch.nn.BCEWithLogitsLoss() if task == "multilabel" else torch.nn.CrossEntropyLoss()


def _distill(s, t, T=4.0):  # the notebooks' DistillKL
    return F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="sum") * T**2 / s.shape[0]


def _sgd_step(model, loss, lr, params=None):
    opt = torch.optim.SGD(params if params is not None else model.parameters(), lr=lr)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _notebook(name, model, retain, forget, task, method, protocol, later=False):
    """The notebook's loop body for one iteration, from reference-loops.md section 4."""
    (xr, yr), (xf, yf) = retain, forget
    L = _loss(task)
    model.train()
    if name in ("finetune", "cf_k", "eu_k"):
        if name != "finetune":
            keep = ("layer3.", "layer4.", "fc.") if name == "cf_k" else ("layer3.",)
            for n, p in model.named_parameters():
                p.requires_grad_(n.startswith(keep))
        _sgd_step(model, L(model(xr), yr), 0.01 if name == "eu_k" else 0.001,
                  [p for p in model.parameters() if p.requires_grad])
    elif name == "neggrad":
        _sgd_step(model, -L(model(xf), yf), 0.001)
    elif name == "advanced_neggrad":  # MUFAC's loop: the retain forward first
        out_r = model(xr)
        out_f = model(xf)
        _sgd_step(model, -L(out_f, yf) + L(out_r, yr), 0.001)
    elif name == "unsir":
        noise = torch.nn.Parameter(torch.randn(xf.shape, generator=torch.Generator().manual_seed(SEED)))
        noise_opt = torch.optim.Adam([noise], lr=0.01)
        for _ in range(5):
            outputs = model(noise)
            with torch.no_grad():
                target = model(xf)
            loss_noise = -F.mse_loss(outputs, target)
            noise_opt.zero_grad()
            loss_noise.backward(retain_graph=True)
            noise_opt.step()
        noise_c = torch.clamp(noise, 0, 1).detach()
        _sgd_step(model, L(model(noise_c), yr) + L(model(xr), yr), 0.001)
    elif name == "scrub":
        teacher = method.teacher
        with torch.no_grad():
            t = teacher(xr)
        s = model(xr)
        _sgd_step(model, L(s, yr) + _distill(s, t), 0.001)
        with torch.no_grad():
            t = teacher(xf)
        _sgd_step(model, -_distill(model(xf), t), 0.001)
    elif name == "bad_teaching":
        with torch.no_grad():
            good, bad = method.good(xr), method.bad(xf)
        _sgd_step(model, _distill(model(xr), good) + _distill(model(xf), bad), 0.001)
    elif name == "gli":
        k = 5 if task == "multilabel" else 2
        w = 200 + 800 * 3 / 9  # retain batch 3 of 10
        model.train(not later)  # paper: eval mode from the second executed step
        opt = torch.optim.SGD(model.parameters(), lr=0.001)
        delta = torch.zeros_like(xr, requires_grad=True)
        target = None
        if protocol == "fair":
            with torch.no_grad():
                target = model(xf)
        for _ in range(k):
            perturbed = torch.clamp(xr + delta, 0, 1)
            zp = model(perturbed)
            zf = model(xf) if protocol == "paper" else target
            tot = -w * L(zp, yr) + F.mse_loss(zp, zf.detach())
            opt.zero_grad()
            tot.backward()
            delta.data += 0.01 * torch.sign(delta.grad)
            delta.grad.zero_()
        if protocol == "paper" and task == "multilabel":
            xp = perturbed.detach()  # the multi-label notebook trains on the last iteration's image
        else:
            xp = torch.clamp(xr + delta, 0, 1).detach()
        loss = L(model(xp), yr)
        opt.zero_grad()
        loss.backward()
        opt.step()


NOTEBOOK_METHODS = [m for m in available() if get(m).defaults_from == "paper"]  # the new four: test_methods_2026.py
ONE_STEP = [(m, "multiclass", "paper", False) for m in NOTEBOOK_METHODS] + [
    ("gli", "multiclass", "paper", True), ("gli", "multiclass", "fair", False), ("gli", "multilabel", "paper", False)]


@pytest.mark.parametrize("name,task,protocol,later", ONE_STEP)
def test_one_update_equals_the_notebook(name, task, protocol, later):
    data, model, retain, forget = _tiny(task)
    method = create(name, data.name)
    ctx = Context(model=copy.deepcopy(model), original=copy.deepcopy(model).eval(), data=data,
                  device=torch.device("cpu"), gen=torch.Generator().manual_seed(SEED), seed=SEED, protocol=protocol)
    method.setup(ctx)
    if later:
        method.updates = 1
    method.step(ctx, Batch.of(retain=retain, forget=forget, index=3, count=10))
    reference = copy.deepcopy(model)
    _notebook(name, reference, retain, forget, task, method, protocol, later)
    for (key, ours), theirs in zip(ctx.model.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(ours.float(), theirs.float(), rtol=0, atol=1e-6), f"{name}: {key}"
    changed = any(not torch.equal(a, b) for a, b in zip(ctx.model.state_dict().values(), model.state_dict().values()))
    assert changed, name


# reference-loops.md section 7.1, the GLI repository's notebooks at the real split sizes
REAL = {  # data set -> (retain, forget, {method: optimiser updates})
    "mufac": (8525, 1500, {"finetune": 268, "cf_k": 268, "neggrad": 255, "advanced_neggrad": 255, "unsir": 46 + 134,
                           "scrub": 92, "bad_teaching": 268, "eu_k": 268, "gli": 128}),
    "mucac": (15385, 10548, {"finetune": 482, "cf_k": 482, "neggrad": 328, "advanced_neggrad": 328,
                             "unsir": 328 + 241, "scrub": 656, "bad_teaching": 482, "eu_k": 482, "gli": 239}),
    "mucac-binary": (15385, 10548, {"finetune": 482, "cf_k": 482, "neggrad": 478, "advanced_neggrad": 328,
                                    "unsir": 328 + 241, "scrub": 656, "bad_teaching": 482, "eu_k": 482, "gli": 239}),
}


@pytest.mark.parametrize("dataset", sorted(REAL))
def test_real_split_sizes_give_the_notebooks_step_counts(dataset):
    retain, forget, counts = REAL[dataset]
    task = "multilabel" if dataset == "mucac" else "multiclass"

    def part(n, first):  # sizes are all a loop reads: 1-pixel images
        labels = torch.zeros((n, 3)) if task == "multilabel" else torch.zeros(n, dtype=torch.long)
        return Split(torch.zeros((n, 1, 1, 1), dtype=torch.uint8), labels, torch.arange(first, first + n))

    parts = {"forget": part(forget, 0), "retain": part(retain, 10**6), "test": part(4, 2 * 10**6),
             "unseen": part(4, 3 * 10**6)}
    data = assemble(dataset, task, ["a", "b", "c"] if task == "multilabel" else ["a", "b"], parts, "x", False, 0)
    ctx = Context(model=torch.nn.Identity(), original=torch.nn.Identity(), data=data, device=torch.device("cpu"),
                  gen=torch.Generator(), seed=0, protocol="paper")
    assert {m: create(m, dataset).planned_steps(ctx) for m in counts} == counts
