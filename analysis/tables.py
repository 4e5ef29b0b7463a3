"""Result tables in the paper's layout: a row per method, the mean and a 95% confidence interval over seeds.

Markdown, LaTeX (booktabs) and CSV. Every interval stays inside its metric's range
(`RANGES`): one method at every number of seeds, a t interval with Hall's skewness
correction (`bounded_interval`). Every table says so, and defines its columns once beneath
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
LEVEL = 0.95
# Each metric's range, which its interval never leaves (the forgetting score |M - 0.5| is at most 0.5).
RANGES = {"accuracy": (0.0, 1.0), "top2_accuracy": (0.0, 1.0), "forgetting_score": (0.0, 0.5),
          "final_score": (0.0, 1.0), "jsd": (0.0, 1.0), "seconds": (0.0, math.inf), "rte": (0.0, math.inf),
          "forget_quality": (0.0, 1.0), "mia_advantage": (-0.5, 0.5), "mia_auc": (0.0, 1.0),
          "privacy_gap": (0.0, 1.0), SEL_ACCURACY: (0.0, 1.0), SEL_FORGETTING: (0.0, 0.5), SEL_FINAL: (0.0, 1.0),
          "sel_accuracy_se": (0.0, math.inf), "sel_fs_se": (0.0, math.inf), "accuracy_se": (0.0, math.inf),
          "fs_se": (0.0, math.inf)}
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


def bounded_interval(values, low: float = -math.inf, high: float = math.inf,
                     level: float = LEVEL, floor: float = 0.0) -> tuple[float, float]:
    """A `level` confidence interval for the mean that stays in [low, high] (`bounded_intervals` of one sample;
    nan values dropped)."""
    x = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").dropna(), dtype=float)
    lo, hi = bounded_intervals(x[None, :], low, high, level, np.array([floor]))
    return float(lo[0]), float(hi[0])


def bounded_intervals(samples: np.ndarray, low: float = -math.inf, high: float = math.inf, level: float = LEVEL,
                      floor=0.0) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `samples` (n values each), a `level` confidence interval for the mean that stays in
    [low, high], one method at every n: Hall's (1992) skewness-removing transformation of the t statistic,
    g(q) = q + g1 q^2 / 3 + g1^2 q^3 / 27 + g1 / (6 n) (g1 the sample skewness), inverted in closed form and
    clipped to the range; it leans the interval toward the long tail, as values piled at a bound need. A row of
    equal values: at a bound, the exact interval of a variable in the range whose every draw sat there ([low,
    low + span (1 - (alpha / 2)^(1/n))]: a mean further in would leave the bound that often with chance below
    alpha / 2); inside, no interval (nothing to go on), unless `floor` (the values' own measurement variance,
    from the runs' standard errors) gives the spread at least its root. nan for n < 2. The quantile is t(n - 1)
    and the spread the sample's (n - 1), where Hall uses the normal's and n: wider, on purpose, for small n.
    The bound rule applies only when every value sits at the bound, so one value off it narrows the interval
    at once (a known discontinuity). Coverage by simulation: `tests/test_tables.py`."""
    from scipy.special import stdtrit

    x = np.asarray(samples, dtype=float)
    rows, n = x.shape
    alpha = 1 - level
    if n < 2:
        return np.full(rows, math.nan), np.full(rows, math.nan)
    floor = np.broadcast_to(np.asarray(floor, dtype=float), (rows,))
    mean = x.mean(axis=1)
    spread = x.std(axis=1)
    sd = np.maximum(x.std(axis=1, ddof=1), np.sqrt(np.maximum(floor, 0.0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        skew = np.where(spread > 0, ((x - mean[:, None]) ** 3).mean(axis=1) / spread ** 3, 0.0) if n > 2 else \
            np.zeros(rows)
    q = float(stdtrit(n - 1, 1 - alpha / 2)) / math.sqrt(n)

    def inverse(y: float) -> np.ndarray:  # g^-1, the identity where there is no skewness
        safe = np.where(np.abs(skew) < 1e-9, 1.0, skew)
        return np.where(np.abs(skew) < 1e-9, y, 3 / safe * (np.cbrt(1 + safe * (y - safe / (6 * n))) - 1))

    lo = np.maximum(low, np.minimum(mean - sd * inverse(q), mean))
    hi = np.minimum(high, np.maximum(mean - sd * inverse(-q), mean))
    constant = sd == 0  # equal values and no measurement error
    width = (high - low) * (1 - (alpha / 2) ** (1 / n)) if math.isfinite(high - low) else math.nan
    at_low, at_high = constant & (mean <= low), constant & (mean >= high)
    lo, hi = np.where(at_low, low, lo), np.where(at_low, low + width, hi)
    lo, hi = np.where(at_high, high - width, lo), np.where(at_high, high, hi)
    inside = constant & ~at_low & ~at_high  # equal values inside the range, no measurement error: no interval
    return np.where(inside, math.nan, lo), np.where(inside, math.nan, hi)


def interval_note(seeds: int) -> str:
    if seeds < 2:
        return "one seed: no interval"
    return (f"[lo, hi] is a 95% confidence interval for the mean over {seeds} seeds (a t interval with Hall's "
            "skewness correction, clipped to the metric's range)")


# Each metric's measurement variance per run, from the runs' own standard errors: (column, weight) pairs.
FLOORS = {"accuracy": (("accuracy_se", 1.0),), "forgetting_score": (("fs_se", 1.0),),
          "final_score": (("accuracy_se", 0.25), ("fs_se", 1.0)), SEL_ACCURACY: (("sel_accuracy_se", 1.0),),
          SEL_FORGETTING: (("sel_fs_se", 1.0),), SEL_FINAL: (("sel_accuracy_se", 0.25), ("sel_fs_se", 1.0))}


def measurement_floor(group: pd.DataFrame, metric: str) -> float:
    """The mean measurement variance of `metric` over a group's runs (0 where no standard error is recorded)."""
    total = 0.0
    for col, weight in FLOORS.get(metric, ()):
        if col in group:
            se = pd.to_numeric(group[col], errors="coerce").fillna(0.0)
            total += weight * float((se ** 2).mean())
    return total


def _row_setting(group: pd.DataFrame, setting_col: str = "setting") -> pd.DataFrame:
    """One method's rows of the setting its table row reports: the one setting it has, or among several the best
    mean selection final score (`analysis.choice.ranked_settings`)."""
    if setting_col in group and group[setting_col].nunique() > 1 and SEL_FINAL in group:
        return group[group[setting_col] == ranked_settings(group, setting_col)[0]]
    return group


def row_settings(rows: pd.DataFrame, method_col: str = "method", setting_col: str = "setting") -> dict[str, str]:
    """Each method's reported setting (as `summarise` picks it), in the table's order, without the intervals."""
    rank = {m: i for i, m in enumerate(ORDER)}
    picked = {m: str(_row_setting(g, setting_col)[setting_col].iloc[0]) if setting_col in g else ""
              for m, g in rows.groupby(method_col, sort=False)}
    return dict(sorted(picked.items(), key=lambda item: (rank.get(item[0], len(ORDER)), item[0])))


def summarise(rows: pd.DataFrame, method_col: str = "method", setting_col: str = "setting",
              level: float = LEVEL) -> pd.DataFrame:
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
        group = _row_setting(group, setting_col)
        entry: dict = {"method": method, "seeds": len(group)}
        if setting_col in group:
            entry["setting"] = group[setting_col].iloc[0]
        for col in [c for c, _, _ in COLUMNS] + AXES + UNCERTAINTY:
            if col in group:
                values = pd.to_numeric(group[col], errors="coerce")
                entry[col] = entry[f"{col}_mean"] = float(values.mean())
                entry[f"{col}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
                entry[f"{col}_lo"], entry[f"{col}_hi"] = bounded_interval(
                    values, *RANGES.get(col, (-math.inf, math.inf)), level=level, floor=measurement_floor(group, col))
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
