"""The evaluation suite of SPEC section 2, exactly: accuracy, MIA forgetting score, NoMUS final score, JSD.

`evaluate` runs one batched, gradient-free forward pass per split and derives every
metric from those logits; the per-example losses are computed once and shared by the
membership attack, the JSD and the loss plots.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.distance import jensenshannon
from scipy.stats import gaussian_kde
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from .data import Dataset, Split
from .data.augment import to_float

# Which splits select checkpoints and which are reported, per protocol (SPEC sections 3 and 5.1).
SELECTION_SPLITS = {"fair": ("val", "unseen_val"), "paper": ("test", "unseen")}
REPORT_SPLITS = {"fair": ("test_report", "unseen_report"), "paper": ("test", "unseen")}
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed trapz
BOOTSTRAP = 200  # resamples behind fs_se at the chosen checkpoint
# The attack's 10 stratified splits hold out a tenth of its table: with m examples a side, ceil(0.2 m)
# held out must leave both classes on each side of every split, which needs m >= 6.
ATTACK_MIN = 6

PROTOCOL_LABEL = {
    "fair": "protocol=fair: every method selected on held-out halves (val, unseen_val), reported on test_report, "
            "unseen_report",
    "paper": "protocol=paper: the reference notebooks step for step; GLI selected and every method reported on the "
             "same test and unseen sets",
}


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """Cross-entropy (multiclass) or the mean over attributes of BCE-with-logits (multilabel)."""
    if task == "multiclass":
        return F.cross_entropy(logits, labels, reduction="none")
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=1)


def task_loss(logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    return per_example_loss(logits, labels, task).mean()


@torch.no_grad()
def predict(model: torch.nn.Module, split: Split, device: torch.device, batch_size: int = 512,
            amp: bool = True) -> torch.Tensor:
    """Float32 logits of a whole split on the CPU, in eval mode and without augmentation.

    On CUDA the batches run in bf16 (unless `amp` is off) and the logits come back in one
    copy at the end, so the device never waits for the host in between."""
    was_training = model.training
    model.eval()
    out = []
    cuda = device.type == "cuda"
    for start in range(0, len(split), batch_size):
        x = to_float(split.images[start : start + batch_size].to(device, non_blocking=True))
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and amp):
            out.append(model(x).float())
    model.train(was_training)
    if not out:
        return torch.empty(0)
    return torch.cat(out).cpu()


def accuracy(logits: torch.Tensor, labels: torch.Tensor, task: str) -> float:
    if len(labels) == 0:
        return float("nan")
    if task == "multiclass":
        return float((logits.argmax(1) == labels).float().mean())
    return float(((logits > 0).float() == labels).float().mean())  # logit > 0 <=> sigmoid > 0.5


def attribute_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    return ((logits > 0).float() == labels).float().mean(0).tolist()


def top2_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    top2 = logits.topk(2, dim=1).indices
    return float((top2 == labels[:, None]).any(1).float().mean())


def split_size_problem(data: Dataset, protocol: str) -> str | None:
    """One line when a split is too small to evaluate under `protocol` (checked before any training):
    the attack needs ATTACK_MIN examples on each side, accuracy at least one test image."""
    (sel_test, sel_unseen), (rep_test, rep_unseen) = SELECTION_SPLITS[protocol], REPORT_SPLITS[protocol]
    small = [f"{name} has {len(data[name])}" for name in dict.fromkeys(("forget", sel_unseen, rep_unseen))
             if len(data[name]) < ATTACK_MIN]
    if small:
        return (f"{data.name}: too small for the membership attack's cross-validation, which needs at least "
                f"{ATTACK_MIN} examples in the forget set and in each unseen split it compares against "
                f"(protocol {protocol}): {', '.join(small)}")
    empty = [name for name in dict.fromkeys(("retain", sel_test, rep_test)) if len(data[name]) == 0]
    if empty:
        return f"{data.name}: empty split(s) {', '.join(empty)} (protocol {protocol})"
    return None


def forgetting_score(forget_losses, unseen_losses, seed: int = 42, protocol: str = "fair",
                     bootstrap: int = 0) -> dict[str, float]:
    """Membership-inference accuracy M of a loss-only logistic regression and FS = |0.5 - M|; beside them the
    attack's signed advantage `mia_advantage` = M - 0.5 (not folded: where the sets cannot be told apart it
    scatters around 0, while FS, folded, sits above it) and `mia_auc`, the chance that a forget example has
    a lower loss than an unseen one on the same balanced table (0.5: indistinguishable; above: the forget set
    looks trained on; below: it looks less like training data than unseen data does). The AUC has no fit,
    so no cross-validation.

    Balancing (SPEC section 2): `fair` subsamples the larger side with a seeded generator;
    `paper` does what the notebooks do, numpy's global generator seeded 42, the forget
    losses shuffled and cut to the unseen count (nothing cut when forget is the smaller),
    unseen losses first in the attack's table. With `bootstrap` > 0, `fs_se` is FS's
    standard error over that many resamples of the attack's table (`bootstrap_fs_se`).
    """
    table = attack_table(forget_losses, unseen_losses, seed, protocol)
    if table is None:
        return {"mia": float("nan"), "forgetting_score": float("nan"), "mia_advantage": float("nan"),
                "mia_auc": float("nan")}
    x, y = table
    with single_blas_thread():
        m = attack_accuracy(x, y)
        out = {"mia": m, "forgetting_score": abs(0.5 - m), "mia_advantage": m - 0.5,
               "mia_auc": float(roc_auc_score(y, -x[:, 0]))}
        if bootstrap:
            out["fs_se"] = bootstrap_fs_se(x[:, 0], y, bootstrap, seed)
    return out


def attack_table(forget_losses, unseen_losses, seed: int = 42, protocol: str = "fair"
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """The attack's balanced table (x: [n, 1] losses, y: 1 forget, 0 unseen), as `forgetting_score` describes;
    None when a side is too small or a loss is not finite."""
    forget = np.asarray(forget_losses, dtype=np.float64).ravel()
    unseen = np.asarray(unseen_losses, dtype=np.float64).ravel()
    if not (np.isfinite(forget).all() and np.isfinite(unseen).all()) or min(len(forget), len(unseen)) < ATTACK_MIN:
        return None
    if protocol == "paper":
        forget = forget.copy()
        # np.random.seed(42) then np.random.shuffle, as the notebooks, on a private generator of the same
        # kind (the same permutation), so that concurrent evaluations cannot disturb each other
        np.random.RandomState(seed).shuffle(forget)
        forget = forget[: len(unseen)]
        x = np.concatenate([unseen, forget])[:, None]
        y = np.concatenate([np.zeros(len(unseen)), np.ones(len(forget))])
    else:
        rng = np.random.default_rng(seed)
        forget = rng.permutation(forget)[: len(unseen)]
        if len(unseen) > len(forget):
            unseen = rng.permutation(unseen)[: len(forget)]
        x = np.concatenate([forget, unseen])[:, None]
        y = np.concatenate([np.ones(len(forget)), np.zeros(len(unseen))])
    return x, y


def attack_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """M: the mean accuracy of scikit-learn's LogisticRegression over StratifiedShuffleSplit(n_splits=10,
    random_state=0), what `cross_val_score(..., scoring="accuracy")` returns, fitted and scored in a plain
    loop (the same fits and predictions without its validation and dispatch, about 40% of its time)."""
    scores = []
    for train, test in StratifiedShuffleSplit(n_splits=10, random_state=0).split(x, y):
        fit = LogisticRegression().fit(x[train], y[train])
        scores.append(float(np.mean(fit.predict(x[test]) == y[test])))
    return float(np.mean(scores))


def fs_standard_error(forget_losses, unseen_losses, seed: int = 42, protocol: str = "fair",
                      resamples: int = BOOTSTRAP) -> float:
    """`fs_se` of `forgetting_score(..., bootstrap=resamples)` alone (its table, its resamples), without the attack
    itself: for a checkpoint chosen among evaluations that ran without it."""
    table = attack_table(forget_losses, unseen_losses, seed, protocol)
    if table is None or not resamples:
        return float("nan")
    with single_blas_thread():
        return bootstrap_fs_se(table[0][:, 0], table[1], resamples, seed)


def bootstrap_fs_se(x: np.ndarray, y: np.ndarray, resamples: int = BOOTSTRAP, seed: int = 42) -> float:
    """FS's standard error: each class of the attack's table resampled with replacement (class sizes
    kept), the attack refit on every resample (the same 10 stratified splits; a vectorised Newton
    solver of scikit-learn's objective, C = 1 with an unpenalised intercept), std of |0.5 - M|."""
    rng = np.random.default_rng(seed + 1)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rows = np.concatenate([rng.choice(pos, (resamples, len(pos))), rng.choice(neg, (resamples, len(neg)))], axis=1)
    xb = x[rows]  # [resamples, n]; every row has the labels below
    yb = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    splits = list(StratifiedShuffleSplit(n_splits=10, random_state=0).split(np.zeros(len(yb)), yb))
    train = np.stack([t for t, _ in splits])  # [splits, n_train]: every split's train set has the same size
    test = np.stack([t for _, t in splits])
    # one solve for every (split, resample) pair: rows are split-major
    x_train = xb[:, train].transpose(1, 0, 2).reshape(len(splits) * resamples, -1)
    y_train = np.repeat(yb[train], resamples, axis=0)
    w0, b0 = _logistic_fit(x[None, :], y)  # the whole table's fit: every resample's starts next to it
    w, b = _logistic_fit(x_train, y_train, float(w0[0]), float(b0[0]))
    x_test = xb[:, test].transpose(1, 0, 2).reshape(len(splits) * resamples, -1)
    correct = ((w[:, None] * x_test + b[:, None] > 0) == (np.repeat(yb[test], resamples, axis=0) == 1)).mean(axis=1)
    fs = np.abs(0.5 - correct.reshape(len(splits), resamples).mean(axis=0))
    return float(fs.std(ddof=1))


def _logistic_fit(x: np.ndarray, y: np.ndarray, w0: float = 0.0, b0: float = 0.0,
                  iterations: int = 50, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Minimise 0.5 w^2 + sum of log-losses of (w x + b) for every row of x at once (Newton's method)."""
    from scipy.special import expit

    w, b = np.full(len(x), w0), np.full(len(x), b0)
    x2 = x * x
    for _ in range(iterations):
        p = expit(w[:, None] * x + b[:, None])
        r = p - y
        s = p * (1 - p)
        gw, gb = w + np.einsum("ij,ij->i", r, x), r.sum(1)
        hww, hwb, hbb = 1 + np.einsum("ij,ij->i", s, x2), np.einsum("ij,ij->i", s, x), s.sum(1) + 1e-12
        det = hww * hbb - hwb * hwb
        dw, db = (hbb * gw - hwb * gb) / det, (hww * gb - hwb * gw) / det
        w, b = w - dw, b - db
        if max(np.abs(dw).max(), np.abs(db).max()) < tol:
            break
    return w, b


def single_blas_thread():
    """One BLAS thread for the small numpy / scipy / sklearn work of the metrics.

    It gains nothing from more, and an idle BLAS pool spin-waiting afterwards steals the
    cores from the next training steps (docs/benchmarks.md).
    """
    return threadpool_limits(limits=1, user_api="blas")


def final_score(accuracy: float, forgetting_score: float) -> float:
    """NoMUS with lambda = 0.5: (accuracy + (1 - 2 FS)) / 2."""
    return (accuracy + (1.0 - 2.0 * forgetting_score)) / 2.0


def loss_jsd(losses_a, losses_b, points: int = 1000) -> float:
    """Jensen-Shannon distance of Gaussian KDEs of two loss samples on a shared 1,000-point grid."""
    a = np.asarray(losses_a, dtype=np.float64).ravel()
    b = np.asarray(losses_b, dtype=np.float64).ravel()
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or min(len(a), len(b)) < 2:
        return float("nan")
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    if hi - lo <= 0:
        return 0.0  # both samples are the same single value
    grid = np.linspace(lo, hi, points)
    with single_blas_thread():
        densities = [_density(sample, grid, hi - lo) for sample in (a, b)]
    return float(jensenshannon(densities[0], densities[1]))


def _density(sample: np.ndarray, grid: np.ndarray, span: float) -> np.ndarray:
    if np.ptp(sample) == 0:  # a constant sample has no KDE bandwidth: widen it by a hair
        sample = sample + np.linspace(-1e-9, 1e-9, len(sample)) * span
    density = gaussian_kde(sample)(grid)
    return density / _trapezoid(density, grid)


def outputs(model: torch.nn.Module, data: Dataset, names, device: torch.device | None = None,
            cache: dict | None = None, amp: bool = True) -> dict:
    """The forward passes an evaluation needs: split name -> (logits, per-example losses), on the CPU.

    Splits already in `cache` are not run again (selection then report halves share forget)."""
    device = device or next(model.parameters()).device
    cache = {} if cache is None else cache
    for name in names:
        if name not in cache:
            split = data[name]
            logits = predict(model, split, device, amp=amp)
            cache[name] = (logits, per_example_loss(logits, split.labels.cpu(), data.task))
    return cache


def metrics_from(cache: dict, data: Dataset, test: str = "test", unseen: str = "unseen", retain: bool = True,
                 seed: int = 42, protocol: str = "fair", bootstrap: int = BOOTSTRAP) -> dict[str, float]:
    """Every SPEC section 2 metric from the forward passes in `cache` (CPU only: safe on a worker thread)."""
    (test_logits, _), (unseen_logits, unseen_losses) = cache[test], cache[unseen]
    forget_logits, forget_losses = cache["forget"]
    test_labels = data[test].labels.cpu()
    result: dict[str, float] = {"accuracy": accuracy(test_logits, test_labels, data.task)}
    if data.task == "multiclass" and data.num_outputs > 2:
        result["top2_accuracy"] = top2_accuracy(test_logits, test_labels)
    if data.task == "multilabel":
        for name, value in zip(data.output_names, attribute_accuracy(test_logits, test_labels)):
            result[f"accuracy_{name}"] = value
    result["forget_accuracy"] = accuracy(forget_logits, data["forget"].labels.cpu(), data.task)
    result["unseen_accuracy"] = accuracy(unseen_logits, data[unseen].labels.cpu(), data.task)
    if retain:
        result["retain_accuracy"] = accuracy(cache["retain"][0], data["retain"].labels.cpu(), data.task)
    result.update(forgetting_score(forget_losses.numpy(), unseen_losses.numpy(), seed, protocol, bootstrap))
    result["accuracy_se"] = math.sqrt(result["accuracy"] * (1 - result["accuracy"]) / max(1, len(test_labels)))
    result["final_score"] = final_score(result["accuracy"], result["forgetting_score"])
    result["jsd"] = loss_jsd(forget_losses.numpy(), unseen_losses.numpy())
    result["forget_loss"] = float(forget_losses.mean())
    result["unseen_loss"] = float(unseen_losses.mean())
    return result


def evaluate(
    model: torch.nn.Module,
    data: Dataset,
    test: str = "test",
    unseen: str = "unseen",
    retain: bool = True,
    device: torch.device | None = None,
    seed: int = 42,
    cache: dict | None = None,
    protocol: str = "fair",
    amp: bool = True,
    bootstrap: int = BOOTSTRAP,
) -> dict[str, float]:
    """Every SPEC section 2 metric on (`test`, `unseen`, forget[, retain]) in one pass per split.

    `cache` maps split name -> (logits, losses); pass the same dict to a second call on
    the same model (selection then report halves) and shared splits are not re-run.
    """
    names = [test, unseen, "forget"] + (["retain"] if retain else [])
    cache = outputs(model, data, names, device, cache, amp)
    return metrics_from(cache, data, test, unseen, retain, seed, protocol, bootstrap)
