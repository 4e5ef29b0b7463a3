"""Result tables in the paper's layout: a row per method, mean ± standard deviation over seeds.

Markdown, LaTeX (booktabs) and CSV. On mufac and mucac the paper's numbers (SPEC
section 6) stand alongside; every table states its selection protocol.
"""

from __future__ import annotations

import math

import pandas as pd

COLUMNS = [  # key, header, decimals
    ("accuracy", "acc", 4), ("top2_accuracy", "top-2", 4), ("forgetting_score", "FS", 4),
    ("final_score", "final", 4), ("jsd", "JSD", 4), ("seconds", "seconds", 1), ("rte", "RTE", 3),
]
AXES = ["sel_accuracy", "sel_forgetting_score", "sel_final_score"]
ORDER = ["original", "retrain", "finetune", "cf_k", "neggrad", "advanced_neggrad", "unsir", "scrub",
         "bad_teaching", "eu_k", "gli"]

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


def summarise(rows: pd.DataFrame, method_col: str = "method", setting_col: str = "setting") -> pd.DataFrame:
    """Mean and sample standard deviation over seeds per method.

    When a method has several settings (GLI's confirmed Pareto settings), its row is the
    setting with the best mean selection final score: chosen on the selection halves,
    never on the reported numbers.
    """
    if len(rows) == 0:
        return pd.DataFrame(columns=["method", "seeds"])
    out = []
    for method, group in rows.groupby(method_col, sort=False):
        if setting_col in group and group[setting_col].nunique() > 1 and "sel_final_score" in group:
            best = group.groupby(setting_col)["sel_final_score"].mean().idxmax()
            group = group[group[setting_col] == best]
        entry: dict = {"method": method, "seeds": len(group)}
        if setting_col in group:
            entry["setting"] = group[setting_col].iloc[0]
        for col in [c for c, _, _ in COLUMNS] + AXES:
            if col in group:
                values = pd.to_numeric(group[col], errors="coerce")
                entry[col] = float(values.mean())
                entry[f"{col}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(entry)
    table = pd.DataFrame(out)
    rank = {m: i for i, m in enumerate(ORDER)}
    return table.sort_values("method", key=lambda s: s.map(lambda m: (rank.get(m, len(ORDER)), m))).reset_index(drop=True)


def _columns(summary: pd.DataFrame) -> list[tuple[str, str, int]]:
    return [(k, h, d) for k, h, d in COLUMNS if k in summary and summary[k].notna().any()]


def _cell(value, std, decimals: int, sep: str = " ± ") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{decimals}f}{sep}{std:.{decimals}f}"


def paper_columns(dataset: str) -> list[tuple[int, str]]:
    if dataset not in PAPER:
        return []
    cols = [(0, "paper acc"), (1, "paper top-2"), (2, "paper FS"), (3, "paper final")]
    return [(i, h) for i, h in cols if any(v[i] is not None for v in PAPER[dataset].values())]


def to_markdown(summary: pd.DataFrame, title: str, dataset: str) -> str:
    cols, paper = _columns(summary), paper_columns(dataset)
    header = ["method", "seeds"] + [h for _, h, _ in cols] + [h for _, h in paper]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in summary.iterrows():
        cells = [r["method"], str(int(r["seeds"]))] + [_cell(r.get(k), r.get(f"{k}_std", 0.0), d) for k, _, d in cols]
        ref = PAPER.get(dataset, {}).get(r["method"])
        cells += [("-" if ref is None or ref[i] is None else f"{ref[i]:.4f}") for i, _ in paper]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")


def to_latex(summary: pd.DataFrame, title: str, dataset: str) -> str:
    cols, paper = _columns(summary), paper_columns(dataset)
    header = ["Method"] + [h for _, h, _ in cols] + [h for _, h in paper]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(title)}}}",
             r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    for _, r in summary.iterrows():
        cells = [_tex(r["method"])] + [_cell(r.get(k), r.get(f"{k}_std", 0.0), d, r" $\pm$ ") for k, _, d in cols]
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
