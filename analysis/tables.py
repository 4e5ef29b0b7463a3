"""Result tables in the paper's layout: a row per method, the mean and a 95% confidence interval over seeds.

Markdown, LaTeX (booktabs) and CSV. Every interval stays inside its metric's range
(`RANGES`): with fewer than 10 seeds a t interval on a transformed scale (logit for a
bounded metric, log for times), carried back; from 10 seeds a percentile bootstrap of the
mean (scipy.stats.bootstrap). Every table says which, and defines its columns once beneath
it (the report states the protocol once, above its tables). On mufac and mucac the paper's
numbers (SPEC section 6) stand alongside.
GLI against each baseline, replicate by replicate, is `analysis.sequential`'s.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from trainables.records import (SEL_ACCURACY, SEL_FINAL, SEL_FORGETTING)

from .choice import ranked_settings

COLUMNS = [  # key, header, decimals
    ("accuracy", "acc", 4), ("top2_accuracy", "top-2", 4), ("forgetting_score", "FS", 4),
    ("final_score", "final", 4), ("mia_advantage", "adv", 4), ("mia_auc", "AUC", 4), ("jsd", "JSD", 4),
    ("seconds", "seconds", 1), ("rte", "RTE", 3),
    ("forget_quality", "F (audit)", 4),  # per setting, from the privacy audit (analysis/audit.py), when run
]
# What each column means, said once under the table that shows it.
DEFINITIONS = {
    "acc": "top-1 accuracy on the report split of test",
    "top-2": "top-2 accuracy (multi-class data sets)",
    "FS": "forgetting score |M - 0.5|, M the membership attack's balanced accuracy, forget vs unseen (lower is better)",
    "final": "final score (acc + 1 - 2 FS) / 2",
    "adv": "the attack's advantage M - 0.5, not folded (as close to the retrained model's as possible is best)",
    "AUC": "the chance a forget example's loss is below an unseen one's (0.5: indistinguishable)",
    "JSD": "Jensen-Shannon distance between the forget and unseen loss distributions",
    "seconds": "the method's own run time",
    "RTE": "run-time efficiency, seconds over the retrained model's seconds (lower is faster)",
    "F (audit)": "the privacy audit's forgetting quality for the row's setting (see the audit table)",
}
AXES = [SEL_ACCURACY, SEL_FORGETTING, SEL_FINAL]
UNCERTAINTY = ["sel_accuracy_se", "sel_fs_se", "accuracy_se", "fs_se"]  # per run: binomial and bootstrap errors
BOOTSTRAP_SEEDS = 10  # from this many seeds on, intervals are bootstrapped rather than t intervals
LEVEL = 0.95
# Each metric's range, which its interval never leaves (the forgetting score |M - 0.5| is at most 0.5).
RANGES = {"accuracy": (0.0, 1.0), "top2_accuracy": (0.0, 1.0), "forgetting_score": (0.0, 0.5),
          "final_score": (0.0, 1.0), "jsd": (0.0, 1.0), "seconds": (0.0, math.inf), "rte": (0.0, math.inf),
          "forget_quality": (0.0, 1.0), "mia_advantage": (-0.5, 0.5), "mia_auc": (0.0, 1.0),
          "privacy_gap": (0.0, 1.0), SEL_ACCURACY: (0.0, 1.0), SEL_FORGETTING: (0.0, 0.5), SEL_FINAL: (0.0, 1.0),
          "sel_accuracy_se": (0.0, math.inf), "sel_fs_se": (0.0, math.inf), "accuracy_se": (0.0, math.inf),
          "fs_se": (0.0, math.inf)}
EDGE = 1e-6  # values at a bound are taken this close to it (relative to the range) before the transform
# A comparison is `equivalent` when its whole interval lies within +-MARGIN (final score and forgetting score).
MARGIN = 0.01
ORDER = ["original", "retrain", "finetune", "cf_k", "neggrad", "advanced_neggrad", "unsir", "scrub",
         "bad_teaching", "eu_k", "random_labels", "salun", "l1_sparse", "ssd", "gli"]

# The GLI paper's table (ResNet-18 from scratch): (accuracy, top-2, forgetting score, final score).
PAPER = {
    "mufac": {
        "original": (0.5952, 0.8804, 0.2136, 0.5839), "retrain": (0.4880, 0.7667, 0.0445, 0.6995),
        "finetune": (0.6049, 0.8869, 0.1953, 0.6071), "cf_k": (0.5900, 0.8804, 0.2126, 0.5824),
        "neggrad": (0.4048, 0.5932, 0.0485, 0.6539), "unsir": (0.5925, 0.8674, 0.1990, 0.5972),
        "scrub": (0.5984, 0.8745, 0.1415, 0.6577), "bad_teaching": (0.5477, 0.8226, 0.1714, 0.6705),
        "eu_k": (0.5737, 0.8473, 0.1033, 0.5855), "gli": (0.5685, 0.8362, 0.0305, 0.7538),
        "advanced_neggrad": (0.5633, 0.8557, 0.0953, 0.6863),  # from the MUFAC/MUCAC benchmark paper
    },
    "mucac": {
        "original": (0.9073, None, 0.0319, 0.9217), "retrain": (0.8871, None, 0.0032, 0.9403),
        "finetune": (0.9213, None, 0.0102, 0.9504), "cf_k": (0.9228, None, 0.0226, 0.9388),
        "neggrad": (0.7351, None, 0.0152, 0.8523), "unsir": (0.9218, None, 0.0164, 0.9445),
        "scrub": (0.9078, None, 0.0266, 0.9273), "bad_teaching": (0.8066, None, 0.0127, 0.8906),
        "eu_k": (0.886, None, 0.0448, 0.8982), "gli": (0.9108, None, 0.0032, 0.9522),
    },
}


def _transform(low: float, high: float):
    """The scale a t interval is taken on for a metric in [low, high]: logit of the position in a bounded
    range, log above a lower bound alone; and its inverse."""
    if math.isinf(high):
        return (lambda x: np.log(np.maximum(x - low, EDGE)), lambda z: low + np.exp(z))
    span = high - low
    return (lambda x: (lambda p: np.log(p / (1 - p)))(np.clip((x - low) / span, EDGE, 1 - EDGE)),
            lambda z: low + span / (1 + np.exp(-z)))


def bounded_interval(values, low: float = -math.inf, high: float = math.inf,
                     level: float = LEVEL) -> tuple[float, float]:
    """A `level` confidence interval for the mean that stays in [low, high]: a t interval on the transformed
    scale (`_transform`) with fewer than `BOOTSTRAP_SEEDS` values, else a percentile bootstrap of the mean
    (its resampled means lie in the range by construction); (nan, nan) for fewer than 2 values."""
    from scipy import stats

    x = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").dropna(), dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    if len(x) >= BOOTSTRAP_SEEDS:
        res = stats.bootstrap((x,), np.mean, confidence_level=level, method="percentile", n_resamples=2000,
                              random_state=0)
        return float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isinf(low) and math.isinf(high):
        forward, back = (lambda v: v), (lambda v: v)
    else:
        forward, back = _transform(low, high)
    z = forward(x)
    lo, hi = stats.t.interval(level, len(z) - 1, loc=z.mean(), scale=stats.sem(z))
    return float(back(lo)), float(back(hi))


def interval_note(seeds: int) -> str:
    if seeds < 2:
        return "one seed: no interval"
    kind = ("a percentile bootstrap of the mean" if seeds >= BOOTSTRAP_SEEDS else
            "a t interval on the logit scale of the metric's range (log for times), carried back")
    return f"[lo, hi] is a 95% confidence interval over {seeds} seeds ({kind}; it stays within the metric's range)"


def summarise(rows: pd.DataFrame, method_col: str = "method", setting_col: str = "setting") -> pd.DataFrame:
    """Mean (`<metric>` and `<metric>_mean`), sample standard deviation (`_std`) and 95% interval (`_lo`, `_hi`,
    `bounded_interval`) over seeds per method.

    When a method has several settings (GLI's confirmed Pareto settings), its row is the
    setting with the best mean selection final score: chosen on the selection halves,
    never on the reported numbers.
    """
    if len(rows) == 0:
        return pd.DataFrame(columns=["method", "seeds"])
    out = []
    for method, group in rows.groupby(method_col, sort=False):
        if setting_col in group and group[setting_col].nunique() > 1 and SEL_FINAL in group:
            best = ranked_settings(group, setting_col)[0]
            group = group[group[setting_col] == best]
        entry: dict = {"method": method, "seeds": len(group)}
        if setting_col in group:
            entry["setting"] = group[setting_col].iloc[0]
        for col in [c for c, _, _ in COLUMNS] + AXES + UNCERTAINTY:
            if col in group:
                values = pd.to_numeric(group[col], errors="coerce")
                entry[col] = entry[f"{col}_mean"] = float(values.mean())
                entry[f"{col}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
                entry[f"{col}_lo"], entry[f"{col}_hi"] = bounded_interval(values, *RANGES.get(col, (-math.inf, math.inf)))
        out.append(entry)
    table = pd.DataFrame(out)
    rank = {m: i for i, m in enumerate(ORDER)}
    return table.sort_values("method", key=lambda s: s.map(lambda m: (rank.get(m, len(ORDER)), m))).reset_index(drop=True)


def _columns(summary: pd.DataFrame) -> list[tuple[str, str, int]]:
    return [(k, h, d) for k, h, d in COLUMNS if k in summary and summary[k].notna().any()]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell(value, lo, hi, decimals: int) -> str:
    """`mean [lo, hi]`, or the mean alone where there is no interval."""
    if _missing(value):
        return "-"
    if _missing(lo) or _missing(hi):
        return f"{value:.{decimals}f}"
    return f"{value:.{decimals}f} [{lo:.{decimals}f}, {hi:.{decimals}f}]"


def _seeds(summary: pd.DataFrame) -> int:
    return int(summary["seeds"].max()) if len(summary) else 0


def paper_columns(dataset: str) -> list[tuple[int, str]]:
    if dataset not in PAPER:
        return []
    cols = [(0, "paper acc"), (1, "paper top-2"), (2, "paper FS"), (3, "paper final")]
    return [(i, h) for i, h in cols if any(v[i] is not None for v in PAPER[dataset].values())]


def to_markdown(summary: pd.DataFrame, title: str, dataset: str) -> str:
    cols, paper = _columns(summary), paper_columns(dataset)
    header = ["method", "seeds"] + [h for _, h, _ in cols] + [h for _, h in paper]
    lines = [f"**{title}**", "", f"Mean over seeds; {interval_note(_seeds(summary))}.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in summary.iterrows():
        cells = [r["method"], str(int(r["seeds"]))] + [_cell(r.get(k), r.get(f"{k}_lo"), r.get(f"{k}_hi"), d)
                                                         for k, _, d in cols]
        ref = PAPER.get(dataset, {}).get(r["method"])
        cells += [("-" if ref is None or ref[i] is None else f"{ref[i]:.4f}") for i, _ in paper]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", definitions([h for _, h, _ in cols], paper)]
    return "\n".join(lines) + "\n"


def definitions(headers: list[str], paper: list[tuple[int, str]] = ()) -> str:
    """One line defining each column of a table, in its order."""
    said = [f"{h}: {DEFINITIONS[h]}" for h in headers if h in DEFINITIONS]
    if paper:
        said.append("paper ...: the GLI paper's numbers for the same method")
    return "; ".join(said) + "."


def _tex(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")


def to_latex(summary: pd.DataFrame, title: str, dataset: str) -> str:
    cols, paper = _columns(summary), paper_columns(dataset)
    header = ["Method"] + [h for _, h, _ in cols] + [h for _, h in paper]
    note = f"{title}. Mean over seeds; {interval_note(_seeds(summary))}. {definitions([h for _, h, _ in cols], paper)}"
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(note)}}}",
             r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    for _, r in summary.iterrows():
        cells = [_tex(r["method"])] + [_cell(r.get(k), r.get(f"{k}_lo"), r.get(f"{k}_hi"), d) for k, _, d in cols]
        ref = PAPER.get(dataset, {}).get(r["method"])
        cells += [("-" if ref is None or ref[i] is None else f"{ref[i]:.4f}") for i, _ in paper]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The summary with the paper's numbers as extra columns (where the data set has them)."""
    out = summary.copy()
    for i, header in paper_columns(dataset):
        out[header.replace(" ", "_").replace("-", "")] = [
            (PAPER[dataset].get(m) or (None,) * 4)[i] for m in out["method"]]
    return out
