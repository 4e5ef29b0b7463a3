"""The many-model privacy audit of the NeurIPS 2023 unlearning challenge (Triantafillou et al. 2024).

Per forget example, a score under each of K unlearned and K retrained models; per
example, the privacy loss epsilon (at delta 1e-5) of the best distinguishing test among
two families of decision rules; the forgetting quality F is the mean over examples of
the points of epsilon's 0.5-wide bucket (1, 1/2, 1/4, ... up to ceil(ln(K - 1))).

The arithmetic is the challenge's published code's (google-deepmind/unlearning_evaluation,
`metric.py`), computed differently: that code compares every model's score with every one
of about 160,000 threshold pairs per example; here each distribution is sorted once and
counted with binary searches, and epsilon, a function of the two counts alone, is
evaluated once per distinct pair of counts. The thresholds themselves are built with
the same numpy calls, and the rates and epsilons in the same float32 arithmetic, so the
results agree (tests/test_audit.py runs a CPU port of the published code beside this).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np

DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
BUFFER = 2.0  # the double-threshold family's slack around the peakier distribution


def audit_scores(model, data, device) -> np.ndarray:
    """Each forget example's score under `model`: its logit-scaled confidence (single-label), or its
    negative loss (multi-label, where one example has several targets)."""
    from .metrics import per_example_loss, predict

    split = data["forget"]
    logits = predict(model, split, device)
    labels = split.labels.cpu()
    if data.task == "multilabel":
        return -per_example_loss(logits, labels, data.task).numpy().astype(np.float64)
    return logit_scaled_confidence(logits.numpy(), labels.numpy())


def logit_scaled_confidence(logits, targets) -> np.ndarray:
    """log p_y - log(1 - p_y) per example, computed stably (finite for p_y of 0 and 1 alike).

    With z the logits and y the target, log p_y = z_y - logsumexp(z) and
    log(1 - p_y) = logsumexp(z without z_y) - logsumexp(z), so the score is
    z_y - logsumexp(z without z_y): no probability is ever rounded to 0 or 1.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets).astype(np.int64).ravel()
    rows = np.arange(len(y))
    correct = z[rows, y]
    others = z.copy()
    others[rows, y] = -np.inf
    top = others.max(axis=1, keepdims=True)
    rest = top[:, 0] + np.log(np.exp(others - top).sum(axis=1))
    return correct - rest


def _rates(inside_pos: np.ndarray, inside_neg: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """tpr, fnr, fpr, tnr as the published code's float32 means over k models."""
    k32 = np.float32(k)
    tpr = inside_pos.astype(np.float32) / k32
    fpr = inside_neg.astype(np.float32) / k32
    return tpr, (k - inside_pos).astype(np.float32) / k32, fpr, (k - inside_neg).astype(np.float32) / k32


def _epsilon(tpr, fnr, fpr, tnr) -> float:
    """The largest epsilon over the thresholds' rates (nan-discarding, inf on perfect separation)."""
    perfect = (fpr + fnr == 0) & (tpr + tnr == 2)
    if perfect.any():
        return math.inf
    keep = fpr * fnr != 0
    if not keep.any():
        return math.nan
    fpr, fnr = fpr[keep], fnr[keep]
    with np.errstate(divide="ignore", invalid="ignore"):  # log of a negative (a rate of 1) is nan: ignored
        eps = np.fmax(np.log(1 - DELTA - fpr) - np.log(fnr), np.log(1 - DELTA - fnr) - np.log(fpr))
    eps = np.clip(eps, 0, None)
    return float(np.nanmax(eps)) if not np.isnan(eps).all() else math.nan


def _double_counts(pos: np.ndarray, neg: np.ndarray, k: int) -> np.ndarray:
    """Distinct (pos inside, neg inside) counts over the double-threshold family, as codes a * (k + 1) + b."""
    pos_range, neg_range = pos.max() - pos.min(), neg.max() - neg.min()
    smallest = neg_range if pos_range > neg_range else pos_range
    if pos_range >= neg_range:  # 'positive' is the peakier distribution
        pos, neg = neg, pos
    low = pos.min() + smallest - BUFFER
    high = pos.max() + BUFFER
    right = np.linspace(low, high, num=int(np.ceil((high - low) * THRESHOLDS_PER_UNIT)))
    n_left = int(np.ceil(2 * BUFFER * THRESHOLDS_PER_UNIT))
    left = np.linspace(right - smallest - BUFFER, right - smallest + BUFFER, num=n_left, axis=1)  # [right, left]
    codes = np.zeros((k + 1) ** 2, dtype=bool)
    pos_sorted, neg_sorted = np.sort(pos), np.sort(neg)
    # inside [l, r]: #(c <= r) - #(c < l)
    p_le = np.searchsorted(pos_sorted, right, side="right")[:, None]
    n_le = np.searchsorted(neg_sorted, right, side="right")[:, None]
    p_in = p_le - np.searchsorted(pos_sorted, left, side="left")
    n_in = n_le - np.searchsorted(neg_sorted, left, side="left")
    codes[(np.maximum(p_in, 0) * (k + 1) + np.maximum(n_in, 0)).ravel()] = True
    return np.flatnonzero(codes)


def _torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace's float64 values (the published code's single thresholds): the first half counted
    up from `start`, the second half down from `end`."""
    if steps <= 1:
        return np.full(steps, start, dtype=np.float64)
    step = (end - start) / (steps - 1)
    idx = np.arange(steps, dtype=np.float64)
    return np.where(idx < steps // 2, start + step * idx, end - step * (steps - idx - 1))


def _single_counts(pos: np.ndarray, neg: np.ndarray, k: int) -> np.ndarray:
    both = np.concatenate([pos, neg])
    low, high = both.min(), both.max()
    thresholds = _torch_linspace(low, high, int(np.ceil((high - low) * THRESHOLDS_PER_UNIT)))
    p_ge = k - np.searchsorted(np.sort(pos), thresholds, side="left")
    n_ge = k - np.searchsorted(np.sort(neg), thresholds, side="left")
    codes = np.zeros((k + 1) ** 2, dtype=bool)
    codes[p_ge * (k + 1) + n_ge] = True
    return np.flatnonzero(codes)


def example_epsilon(pos: np.ndarray, neg: np.ndarray) -> float:
    """Epsilon of one forget example from its K positive-class and K negative-class scores."""
    k = len(pos)
    pos_range, neg_range = np.max(pos) - np.min(pos), np.max(neg) - np.min(neg)
    largest = pos_range if pos_range > neg_range else neg_range
    smallest = neg_range if pos_range > neg_range else pos_range
    with np.errstate(divide="ignore", invalid="ignore"):
        if smallest / largest < 0.01:  # one distribution is very peaky: the worst epsilon
            return EPSILON_CAP
    codes = np.union1d(_double_counts(pos, neg, k), _single_counts(pos, neg, k))
    inside_pos, inside_neg = codes // (k + 1), codes % (k + 1)
    eps = _epsilon(*_rates(inside_pos, inside_neg, k))
    return min(max(eps, 0.0), EPSILON_CAP) if not math.isnan(eps) else math.nan


def bucket_points(k: int) -> list[tuple[float, float]]:
    """(bucket start, points) for epsilon's 0.5-wide buckets up to ceil(ln(K - 1))."""
    top = math.ceil(math.log(k - 1)) if k > 2 else 0
    out, start, points = [], 0.0, 1.0
    while start + 0.5 <= top:
        out.append((start, points))
        start, points = start + 0.5, points / 2
    return out


def forget_quality(unlearned, retrained) -> dict:
    """F from [models, examples] scores under K unlearned and K retrained models.

    Returns {"forget_quality": F, "epsilons": one per example}. The positive class of an
    example is whichever of the two has the larger median score there.
    """
    unlearned = np.asarray(unlearned, dtype=np.float64)
    retrained = np.asarray(retrained, dtype=np.float64)
    if unlearned.shape != retrained.shape or unlearned.ndim != 2:
        raise ValueError(f"need two [models, examples] arrays of one shape, got {unlearned.shape} and {retrained.shape}")
    k, n = retrained.shape
    retrain_positive = np.median(retrained, axis=0) > np.median(unlearned, axis=0)
    pos = np.where(retrain_positive, retrained, unlearned)
    neg = np.where(retrain_positive, unlearned, retrained)
    eps = np.array([example_epsilon(pos[:, i], neg[:, i]) for i in range(n)])
    eps = np.clip(eps, 0, EPSILON_CAP)
    return {"forget_quality": float(example_points(eps, k).mean()), "epsilons": eps}


def example_points(epsilons, k: int) -> np.ndarray:
    """Each example's points: those of the 0.5-wide bucket its epsilon falls in (0 past the last bucket, and for
    an undefined epsilon); F is their mean."""
    buckets = bucket_points(k)
    out = np.zeros(len(epsilons))
    for i, e in enumerate(np.asarray(epsilons, dtype=np.float64)):
        for start, points in buckets:
            if e < start + 0.5:
                out[i] = points
                break
    return out


def forget_quality_interval(epsilons, k: int, level: float = 0.95) -> tuple[float, float]:
    """A `level` interval for F over the forget examples: Student's t on the examples' points (scipy), clipped to
    [0, 1], F's range (clipping only widens the coverage). It is the uncertainty of F from which examples were
    forgotten, given the K models; it does not cover the models' own randomness. In the test's simulation (100
    examples, 300 audits) it covered 94%; scipy's percentile and BCa bootstraps of the same mean covered 89-90%,
    too few for the discrete, skewed points."""
    from scipy import stats

    points = example_points(epsilons, k)
    if len(points) == 0:
        return math.nan, math.nan
    if len(points) < 2 or np.all(points == points[0]):
        return float(points.mean()), float(points.mean())
    lo, hi = stats.t.interval(level, len(points) - 1, loc=points.mean(), scale=stats.sem(points))
    return float(max(lo, 0.0)), float(min(hi, 1.0))


def forget_quality_null(k: int, examples: int, draws: int = 20, seed: int = 0) -> dict:
    """F's ceiling at K models and `examples` examples, simulated: F between two independent sets of K models
    whose scores come from one distribution (standard normal per example), `draws` times. No two finite samples
    score 1; this is the F that indistinguishable models reach at this K and size ("simulated", not measured
    from retrained models). Returns {"mean", "lo", "hi" (the 2.5 and 97.5 percentiles over draws), "k",
    "examples", "draws"}."""
    rng = np.random.default_rng(seed)
    values = np.array([forget_quality(rng.standard_normal((k, examples)), rng.standard_normal((k, examples)))
                       ["forget_quality"] for _ in range(draws)])
    return {"mean": float(values.mean()), "lo": float(np.percentile(values, 2.5)),
            "hi": float(np.percentile(values, 97.5)), "k": k, "examples": examples, "draws": draws}


def lira_log_ratio(target, unlearned, retrained, global_variance: bool = False) -> np.ndarray:
    """U-LiRA's per-example likelihood-ratio test (Hayes et al. 2024, LiRA applied to unlearning).

    `unlearned` and `retrained` are shadow scores [models, examples] (e.g. the logit-scaled confidence), the
    first from models that trained on each example and then unlearned it, the second from models that never
    trained on it; `target` is [targets, examples]. Per example each side is fitted by a Gaussian with LiRA's
    robust location, the median, and its standard deviation (ddof 0; with `global_variance`, one standard
    deviation over all examples, the unlearned side's, for both sides: LiRA's `fix_variance`). Returns [targets, examples]:
    log N(target; unlearned fit) - log N(target; retrained fit), positive where a target looks unlearned rather
    than retrained. A zero spread is floored at 1e-30 relative to the scores' scale, so the ratio stays finite."""
    from scipy.stats import norm

    target = np.atleast_2d(np.asarray(target, dtype=np.float64))
    unlearned = np.asarray(unlearned, dtype=np.float64)
    retrained = np.asarray(retrained, dtype=np.float64)
    if unlearned.ndim != 2 or retrained.ndim != 2 or not (target.shape[1] == unlearned.shape[1] == retrained.shape[1]):
        raise ValueError(f"need [models, examples] shadows and [targets, examples] targets over the same examples, "
                         f"got {unlearned.shape}, {retrained.shape} and {target.shape}")
    floor = 1e-30 * max(1.0, float(np.abs(np.concatenate([unlearned.ravel(), retrained.ravel()])).max()))

    def fit(side: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale = np.full(side.shape[1], unlearned.std()) if global_variance else side.std(axis=0)
        return np.median(side, axis=0), np.maximum(scale, floor)

    (mu_in, sd_in), (mu_out, sd_out) = fit(unlearned), fit(retrained)
    return norm.logpdf(target, mu_in, sd_in) - norm.logpdf(target, mu_out, sd_out)


# --- U-LiRA: the per-example attack over shadow models ------------------------------------------------------------

ULIRA_TARGETS = 4  # held-out target models (two complementary pairs): every forget candidate is a member of two
TARGET_SEED = 10_000  # U-LiRA's target models are seeds TARGET_SEED.. and its shadows seeds 0..S-1: a run's role is
# its seed's, so more shadows can be added to a study later without touching its targets
PER_EXAMPLE_VARIANCE_FROM = 64  # shadows from which each example's own spread is fitted; below, one global spread
# (LiRA, Carlini et al. 2022: with fewer than about 64 shadows a global variance estimate attacks better)
ULIRA_BOOTSTRAP = 1000  # resamples of the forget candidates behind each attack metric's interval
FPR_LEVELS = (0.01, 0.05)  # the attack's TPR is read at these false-positive rates


def shadow_member_mask(examples: int, key: str, model: int) -> np.ndarray:
    """Which of the `examples` forget candidates shadow (or target) model `model` trains on and then forgets.

    Models come in pairs (2i, 2i + 1) on complementary halves of one permutation drawn from (`key`, i), `key`
    being the split's fingerprint: every candidate is forgotten by exactly one model of each pair and never
    trained on by the other, so with S shadows each candidate has S/2 of each kind. The mask depends on the
    model's index alone, so a trial needs no count of models to draw it."""
    if examples < 2:
        raise ValueError(f"U-LiRA needs at least 2 forget candidates, got {examples}")
    seed = int(hashlib.sha256(str(key).encode()).hexdigest()[:16], 16)
    order = np.random.default_rng([seed, model // 2]).permutation(examples)
    member = np.zeros(examples, dtype=bool)
    member[order[: examples // 2] if model % 2 == 0 else order[examples // 2:]] = True
    return member


def shadow_dataset(data, member: np.ndarray):
    """The data set of a shadow (or target) model: its forget set the candidates in `member`, its training set
    the retain set and those; the other candidates are never trained on. Its `split_fingerprint` differs from
    `data`'s, so its original has its own entry in the bank."""
    import torch

    from .data.splits import concat

    forget = data["forget"].subset(torch.from_numpy(np.flatnonzero(member)))
    splits = {**data.splits, "forget": forget, "train": concat([data["retain"], forget])}
    return dataclasses.replace(data, splits=splits)


def ulira_log_ratios(scores, members, shadows: int, global_variance: bool | None = None):
    """The attack on each target model: `scores` and `members` are [models, candidates], the first `shadows`
    models the shadows and the rest the targets. Per candidate, the shadows that forgot it are one side and the
    shadows that never trained on it the other (`lira_log_ratio`). Returns (log ratios [targets, candidates],
    labels [targets, candidates], True where the target forgot the candidate). `global_variance` defaults to
    True below `PER_EXAMPLE_VARIANCE_FROM` shadows."""
    scores, members = np.asarray(scores, dtype=np.float64), np.asarray(members, dtype=bool)
    if scores.shape != members.shape or scores.ndim != 2:
        raise ValueError(f"scores and members must be [models, candidates] alike, got {scores.shape} and {members.shape}")
    if shadows < 2 or shadows % 2 or scores.shape[0] - shadows < 1:
        raise ValueError(f"need an even number >= 2 of shadows and at least one target, got {shadows} of "
                         f"{scores.shape[0]} models")
    inside_count = members[:shadows].sum(axis=0)
    if not np.all(inside_count == shadows // 2):
        raise ValueError("every candidate must be forgotten by exactly half the shadows (`shadow_member_mask`)")
    order = np.argsort(~members[:shadows], axis=0, kind="stable")  # per candidate: the shadows that forgot it first
    side = np.take_along_axis(scores[:shadows], order, axis=0)
    if global_variance is None:
        global_variance = shadows < PER_EXAMPLE_VARIANCE_FROM
    ratio = lira_log_ratio(scores[shadows:], side[: shadows // 2], side[shadows // 2:], global_variance)
    return ratio, members[shadows:]


def roc(score, label) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) at every distinct threshold, from (0, 0) to (1, 1); a higher
    score says member. Ties share one threshold, as scikit-learn's `roc_curve` (without dropping points)."""
    score, label = np.asarray(score, dtype=np.float64).ravel(), np.asarray(label, dtype=bool).ravel()
    positives, negatives = int(label.sum()), int((~label).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("the attack needs members and non-members")
    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], label[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # each distinct score's last position
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return np.r_[0.0, fp / negatives], np.r_[0.0, tp / positives]


def attack_metrics(score, label) -> dict:
    """The attack's AUC, balanced accuracy (LiRA's: the best over thresholds of 1 - (FPR + FNR) / 2) and TPR at
    each of `FPR_LEVELS` (LiRA's reading: the largest TPR among thresholds whose FPR is below the level)."""
    fpr, tpr = roc(score, label)
    out = {"auc": float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)),
           "balanced_accuracy": float(np.max(1 - (fpr + (1 - tpr)) / 2))}
    for level in FPR_LEVELS:
        out[f"tpr_at_{level:g}"] = float(tpr[fpr < level].max())
    return out


def attack_draws(ratio, labels, draws: int = ULIRA_BOOTSTRAP, seed: int = 0) -> dict[str, np.ndarray]:
    """`attack_metrics` of [targets, candidates] scores and labels on each of `draws` resamples of the candidates
    (a resampled candidate brings its every target): one array per metric, NaN where a resample holds members
    only or none. The resamples depend on `seed` and the number of candidates alone, so two attacks on the same
    candidates, drawn with one seed, are paired draw by draw (`auc_difference_interval`)."""
    ratio, labels = np.atleast_2d(ratio), np.atleast_2d(labels)
    rng = np.random.default_rng(seed)
    n = ratio.shape[1]
    out: dict[str, np.ndarray] = {}
    for d in range(draws):
        pick = rng.integers(0, n, n)
        lab = labels[:, pick]
        if lab.all() or not lab.any():
            continue
        for k, v in attack_metrics(ratio[:, pick], lab).items():
            out.setdefault(k, np.full(draws, math.nan))[d] = v
    return out


def _percentiles(samples: np.ndarray | None, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of the finite `samples`; NaNs when there are none."""
    finite = np.asarray([] if samples is None else samples, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if len(finite) == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def attack_intervals(ratio, labels, draws: int = ULIRA_BOOTSTRAP, level: float = 0.95, seed: int = 0,
                     samples: dict[str, np.ndarray] | None = None) -> dict:
    """`attack_metrics` of [targets, candidates] scores and labels, each with a percentile bootstrap interval over
    the candidates (`attack_draws`; pass them as `samples` when already drawn), so the intervals stay inside
    [0, 1]. It is the uncertainty from which examples were forgotten, given the shadows and targets."""
    point = attack_metrics(ratio, labels)
    samples = attack_draws(ratio, labels, draws, seed) if samples is None else samples
    out = {}
    for k, v in point.items():
        lo, hi = _percentiles(samples.get(k), level)
        out.update({k: v, f"{k}_lo": lo, f"{k}_hi": hi})
    return out


def auc_difference_interval(ratio, labels, reference, reference_labels, draws: int = ULIRA_BOOTSTRAP,
                            level: float = 0.95, seed: int = 0, samples: dict[str, np.ndarray] | None = None,
                            reference_samples: dict[str, np.ndarray] | None = None) -> tuple[float, float, float]:
    """AUC(`ratio`) - AUC(`reference`) with a paired percentile bootstrap interval over the candidates (one
    resample of the candidates for both: the two attacks share candidates and targets). The reference is the
    retrained model's attack: a method an attacker cannot tell from retraining has an interval that holds 0.
    `samples` and `reference_samples`, when given, are the two attacks' `attack_draws` with the same `draws` and
    `seed` (a table of many attacks draws the reference's once)."""
    ratio, reference = np.atleast_2d(ratio), np.atleast_2d(reference)
    if ratio.shape[1] != reference.shape[1]:
        raise ValueError(f"the two attacks must score the same candidates, got {ratio.shape} and {reference.shape}")
    point = attack_metrics(ratio, labels)["auc"] - attack_metrics(reference, reference_labels)["auc"]
    a = attack_draws(ratio, labels, draws, seed) if samples is None else samples
    b = attack_draws(reference, reference_labels, draws, seed) if reference_samples is None else reference_samples
    if "auc" not in a or "auc" not in b:
        return float(point), math.nan, math.nan
    lo, hi = _percentiles(a["auc"] - b["auc"], level)  # NaN where either resample was one-sided
    return float(point), lo, hi
