"""The privacy audit's results: per audited setting, the unlearning challenge's forgetting quality.

Reads the audit stage's runs (`stage=audit`): each holds its forget examples' scores
(`scores.npz`). Per setting, the K unlearning runs' scores are compared with the K
retrained models' (`trainables.audit.forget_quality`); the original model, run once (it
is the same model K times), is the control. The challenge score is F times the retain
and test accuracy ratios, unlearned over retrained, accuracies averaged over the runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trainables.audit import EPSILON_CAP, forget_quality, forget_quality_interval, forget_quality_null
from trainables.records import AUDIT_STAGE, METHOD_COL, SEED_COL, TRIAL_KEY_COL, setting_of

CEILING = "retrain/ceiling"  # the epsilons of the measured ceiling (retrained against retrained) in audit_table's dict
NULL_DRAWS = 10  # simulated audits behind each ceiling (about half a second each at 100 examples)
COLUMNS = [("forget_quality", "F", 4), ("forget_quality_lo", "F low", 4), ("forget_quality_hi", "F high", 4),
           ("forget_quality_null", "ceiling", 4), ("challenge_score", "challenge score", 4),
           ("epsilon_median", "eps median", 2),
           ("epsilon_p90", "eps p90", 2), ("models", "models", 0), ("retrained", "retrained", 0)]


def _scores(study, runs: pd.DataFrame) -> np.ndarray | None:
    arrays = [study.load_scores(r["run_id"]) for _, r in runs.sort_values(SEED_COL, key=pd.to_numeric).iterrows()]
    arrays = [a for a in arrays if a is not None]
    return np.stack(arrays) if arrays else None


def audit_table(study, models: int | None = None, ceiling: str = "retrained") -> tuple[pd.DataFrame, dict]:
    """(one row per audited setting, {method/setting: epsilons}); empty when the study has no audit. The dict
    also holds, under `CEILING`, the epsilons of the measured ceiling (retrained against retrained) where it was
    measured. With `models` K (the study's `--audit`), only that audit's runs are read: seeds 0..K-1 (0..2K-1 of
    the retrained models with a measured `ceiling`), whatever larger audit ran on the study before."""
    runs = study.children(AUDIT_STAGE)
    if len(runs) and models:
        seeds = pd.to_numeric(runs[SEED_COL])
        most = np.where((runs[METHOD_COL] == "retrain") & (ceiling == "retrained"), 2 * models, models)
        runs = runs[(runs[METHOD_COL] == "original") | (seeds < most)]
    if len(runs) == 0:
        return pd.DataFrame(), {}
    runs = runs.assign(method=runs[METHOD_COL], setting=runs[TRIAL_KEY_COL].map(setting_of))
    everything = _scores(study, runs[runs["method"] == "retrain"])  # in seed order
    if everything is None or len(everything) < 2:
        return pd.DataFrame(), {}
    sizes = [len(g) for (m, _), g in runs.groupby(["method", "setting"]) if m not in ("retrain", "original")]
    k = min(max(sizes), len(everything)) if sizes else len(everything)  # K: the unlearning runs per setting
    retrained, second = everything[:k], everything[k:2 * k]  # seeds 0..K-1 the reference; K..2K-1 the ceiling's
    measured = None
    if len(second) == k:  # F between two independent sets of K retrained models: what retraining itself scores
        null = forget_quality(second, retrained)
        measured = (null["forget_quality"], *forget_quality_interval(null["epsilons"], k))
    base = runs[runs["method"] == "retrain"]
    rows, ceilings = [], {}
    epsilons = {CEILING: null["epsilons"]} if measured is not None else {}
    for (method, setting), group in runs[runs["method"] != "retrain"].groupby(["method", "setting"], sort=False):
        unlearned = _scores(study, group)
        if unlearned is None:
            continue
        used = len(unlearned)  # the runs whose scores were read (a missing one was named as it was skipped)
        if method == "original":
            used, unlearned = 1, np.repeat(unlearned[:1], k, axis=0)  # one deterministic model stands for K copies
        n = min(len(unlearned), k)
        used = min(used, n)
        quality = forget_quality(unlearned[:n], retrained[:n])
        eps = quality["epsilons"]
        ratio = 1.0
        for col in ("retain_accuracy", "accuracy"):
            if col in group and col in base:
                ratio *= float(pd.to_numeric(group[col]).mean() / pd.to_numeric(base[col]).mean())
        lo, hi = forget_quality_interval(eps, n)
        if (n, len(eps)) not in ceilings:  # F that indistinguishable models reach at this K and size, simulated
            ceilings[(n, len(eps))] = forget_quality_null(n, len(eps), draws=NULL_DRAWS)["mean"]
        ceiling = {"forget_quality_null": ceilings[(n, len(eps))], "null_kind": "simulated",
                   "forget_quality_null_sim": ceilings[(n, len(eps))]}
        if measured is not None and n == k:
            ceiling.update(forget_quality_null=measured[0], forget_quality_null_lo=measured[1],
                           forget_quality_null_hi=measured[2], null_kind="retrained")
        rows.append({"method": method, "setting": setting, "models": used, "retrained": n,
                     "forget_quality": quality["forget_quality"], "forget_quality_lo": lo, "forget_quality_hi": hi,
                     **ceiling,
                     "challenge_score": quality["forget_quality"] * ratio,
                     "epsilon_median": float(np.nanmedian(eps)), "epsilon_p90": float(np.nanpercentile(eps, 90))})
        epsilons[f"{method}/{setting}"] = eps
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values("forget_quality", ascending=False).reset_index(drop=True)
    return table, epsilons


def to_markdown(table: pd.DataFrame, title: str) -> str:
    if len(table) == 0:
        return ""
    lines = [f"**Privacy audit (the unlearning challenge's forgetting quality F, delta 1e-5); {title}**", "",
             f"Up to {int(table['retrained'].max())} unlearning runs per setting against as many retrained models; "
             "the original model is the control.", "",
             "| method | setting | " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for _, r in table.iterrows():
        cells = [f"{r[k]:.{d}f}" if d else str(int(r[k])) for k, _, d in COLUMNS]
        lines.append(f"| {r['method']} | {r['setting'][:8]} | " + " | ".join(cells) + " |")
    lines += ["", "F: the forgetting quality, from the per-example privacy losses epsilon of the forget examples' "
              "scores under the unlearned against the retrained models. Read it against its ceiling, never against 1: "
              "two sets of K models from one distribution score far below 1 (about 0.26 at K = 4 and 0.18 at K = 32 "
              "with 100 examples). ceiling: F between two independent sets of K retrained models of this study "
              "(seeds 0..K-1 against K..2K-1), what retraining itself scores at this K and number of examples; "
              f"where those models are missing, the same simulated (standard normal scores, {NULL_DRAWS} simulated "
              "audits; `null_kind` in audit.csv says which). F low, F high: a 95% t "
              "interval over the forget examples (it does not cover the models' own randomness). "
              "Challenge score: F times the retain and test accuracy ratios, unlearned over retrained. eps median, "
              "eps p90: the median and 90th percentile of the per-example epsilon. models: the unlearning runs whose "
              "scores were read (the original: one model, scored as K copies); retrained: the retrained models "
              "they were compared with."]
    return "\n".join(lines) + "\n"


EPSILON_SHOWN = 6.0  # finite epsilons are drawn up to this (at K models they reach about ln(K - 1))


def epsilon_shares(values) -> tuple[np.ndarray, np.ndarray, float]:
    """What the epsilon figure draws of one setting: its bounded epsilons (clipped to the range shown), each one's
    weight (its share of the examples), and the share the audit caps as unbounded. An undefined epsilon (NaN:
    scores no point in F) is left out."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    n = max(len(values), 1)
    bounded = np.clip(values[values < EPSILON_CAP], 0, EPSILON_SHOWN)
    return bounded, np.full(len(bounded), 1 / n), float(np.sum(values >= EPSILON_CAP) / n)


def plot_epsilons(epsilons: dict, title: str, base: Path, table: pd.DataFrame | None = None) -> list[Path]:
    """Each audited setting's per-example epsilons (share of the forget examples per bin), beside the original's
    (forgets nothing) and, where measured, the ceiling's own (retrained against retrained: what indistinguishable
    models give at this K); the epsilons the audit caps as unbounded (`EPSILON_CAP`: the two sets of scores
    separate) in a bar of their own, marked infinite. With `table` (audit_table's), each panel's title gives F,
    its interval and its ceiling."""
    from .plots import panels

    names = [n for n in epsilons if not n.startswith("original/") and n != CEILING]
    control = next((v for n, v in epsilons.items() if n.startswith("original/")), None)
    bins = np.linspace(0, EPSILON_SHOWN, 25)
    infinite_at = EPSILON_SHOWN + 0.5  # the unbounded bar stands apart from the finite range
    rows = {f"{r['method']}/{r['setting']}": r for _, r in table.iterrows()} if table is not None else {}

    def layer(values, label: str, color: str, alpha: float | None = None):
        """(the shares to draw, the histogram's keywords, the unbounded bar's): filled, or (no alpha) an outline."""
        if alpha is None:
            return (epsilon_shares(values), {"label": label, "color": color, "histtype": "step", "linewidth": 1.0},
                    {"fill": False, "edgecolor": color, "linewidth": 1.0})
        return epsilon_shares(values), {"label": label, "color": color, "alpha": alpha}, {"color": color, "alpha": alpha}

    # the original's and the ceiling's layers are the same in every panel: their shares are taken once
    shared = [layer(control, "original (forgets nothing)", "#d62728", 0.35)] if control is not None else []
    ceiling = [layer(epsilons[CEILING], "retrained vs retrained (the ceiling)", "black")] if CEILING in epsilons else []

    def draw(ax, name):
        for (bounded, weights, unbounded), hist, bar in [*shared, layer(epsilons[name], "unlearned", "#1f77b4", 0.6),
                                                         *ceiling]:
            ax.hist(bounded, bins=bins, weights=weights, **hist)
            ax.bar(infinite_at, unbounded, width=0.4, **bar)
        ticks = list(range(int(EPSILON_SHOWN) + 1))
        ax.set_xticks(ticks + [infinite_at], [str(t) for t in ticks] + ["inf"])
        method, setting = name.split("/")
        label = f"{method} {setting[:6]}"
        if (row := rows.get(name)) is not None:
            label += (f"\nF {row['forget_quality']:.3f} [{row['forget_quality_lo']:.3f}, "
                      f"{row['forget_quality_hi']:.3f}] of {row['forget_quality_null']:.3f} ({row['null_kind']})")
        ax.set_title(label, fontsize=8)

    heading = ("per-example epsilon of the forget examples: unlearned against retrained models; the bar at inf: "
               f"unbounded (capped at {EPSILON_CAP:g}: the two sets of scores separate); F read against its ceiling, "
               f"not 1; {title}")
    return panels(names, draw, heading, "per-example epsilon (privacy loss at delta 1e-5)", base, size=(3.2, 2.6),
                  ylabel="share of forget examples")


def plot_forget_quality(table: pd.DataFrame, title: str, base: Path) -> list[Path]:
    """F of each audited setting with its interval, against its ceiling (F between two sets of retrained models at
    the same K: the most an unlearned model can score here), marked with its own interval where measured."""
    import matplotlib.pyplot as plt

    from .plots import _save, _wrap

    if len(table) == 0:
        return []
    rows = table.sort_values("forget_quality").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.32 * len(rows)))
    y = np.arange(len(rows))
    f = rows["forget_quality"].to_numpy(float)
    lo, hi = rows["forget_quality_lo"].to_numpy(float), rows["forget_quality_hi"].to_numpy(float)
    ax.errorbar(f, y, xerr=[f - lo, hi - f], fmt="o", color="#1f77b4", capsize=3, markersize=4,
                label="F, 95% interval over the forget examples")
    ceilings = rows["forget_quality_null"].to_numpy(float)
    kinds = rows["null_kind"].astype(str).tolist()
    if np.allclose(ceilings, ceilings[0]) and len(set(kinds)) == 1:
        kind = "retrained vs retrained" if kinds[0] == "retrained" else kinds[0]
        ax.axvline(ceilings[0], color="black", linewidth=1.2, label=f"ceiling ({kind}): {ceilings[0]:.3f}")
        if {"forget_quality_null_lo", "forget_quality_null_hi"} <= set(rows) and kinds[0] == "retrained":
            ax.axvspan(float(rows["forget_quality_null_lo"].iloc[0]), float(rows["forget_quality_null_hi"].iloc[0]),
                       color="black", alpha=0.1, label="its 95% interval")
    else:  # settings audited at different K: each its own ceiling
        ax.plot(ceilings, y, "|", color="black", markersize=12, label="ceiling at the setting's K")
    ax.set_yticks(y, [f"{m} {s[:6]}" for m, s in zip(rows["method"], rows["setting"])], fontsize=7)
    ax.set_xlim(0, 1.15 * max(np.nanmax(np.r_[hi, ceilings]), 1e-3))
    ax.set_xlabel("forgetting quality F (read against the ceiling, not 1)", fontsize=8)
    ax.set_ylabel("audited setting", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("\n".join(_wrap(f"forgetting quality against its ceiling; {title}", 90)), fontsize=9)
    fig.tight_layout()
    return _save(fig, base)


ULIRA_COLUMNS = [("auc", "AUC", 3), ("tpr_at_0.01", "TPR at 1% FPR", 3), ("tpr_at_0.05", "TPR at 5% FPR", 3),
                 ("balanced_accuracy", "balanced accuracy", 3)]
FAMILY_RATE = 0.05  # the family-wise error rate of "an attacker can tell it from retraining", Bonferroni over rows


def ulira_table(study) -> pd.DataFrame:
    """U-LiRA per attacked setting (`stage=ulira` runs): each metric with its bootstrap interval, beside the
    retrained model's own values (the floor: the attack on retraining itself) and the AUC's paired difference
    from them, its interval Bonferroni-adjusted over the rows; `distinguishable` where that interval lies above 0.
    Empty when the study has no U-LiRA runs."""
    from trainables.audit import (TARGET_SEED, attack_draws, attack_intervals, auc_difference_interval,
                                  ulira_log_ratios)
    from trainables.records import ULIRA_STAGE

    runs = study.children(ULIRA_STAGE)
    if len(runs) == 0:
        return pd.DataFrame()
    runs = runs.assign(method=runs[METHOD_COL], setting=runs[TRIAL_KEY_COL].map(setting_of),
                       model=pd.to_numeric(runs[SEED_COL]).astype(int))
    attacks = {}
    for (method, setting), group in runs.groupby(["method", "setting"], sort=False):
        seeds, scores, members = [], [], []
        for _, r in group.sort_values("model").iterrows():
            if (read := study.load_attack(r["run_id"])) is not None:
                seeds.append(r["model"]), scores.append(read[0]), members.append(read[1])
        have = set(seeds)
        # a shadow counts only with its pair partner (each candidate must be forgotten by half the shadows)
        keep = [i for i, j in enumerate(seeds) if j >= TARGET_SEED or (j ^ 1) in have]
        shadows = sum(seeds[i] < TARGET_SEED for i in keep)
        if shadows < 2 or shadows == len(keep):
            print(f"[report] U-LiRA {method}/{setting[:8]}: {shadows} paired shadows and {len(keep) - shadows} "
                  "targets read: too few to attack, left out", flush=True)
            continue
        ratio, labels = ulira_log_ratios(np.stack([scores[i] for i in keep]), np.stack([members[i] for i in keep]),
                                         shadows)
        attacks[(method, setting)] = (ratio, labels, shadows, len(keep) - shadows)
    rows = []
    floor_key = next((key for key in attacks if key[0] == "retrain"), None)
    floor = attacks.get(floor_key)
    floor_draws = attack_draws(floor[0], floor[1]) if floor is not None else None  # once, paired with every row's
    compared = sum(m != "retrain" for m, _ in attacks)
    level = 1 - FAMILY_RATE / max(compared, 1)
    for (method, setting), (ratio, labels, shadows, targets) in attacks.items():
        draws = floor_draws if (method, setting) == floor_key else attack_draws(ratio, labels)
        row = {"method": method, "setting": setting, "shadows": shadows, "targets": targets,
               "candidates": ratio.shape[1], **attack_intervals(ratio, labels, samples=draws)}
        if floor is not None and method != "retrain" and floor[0].shape[1] == ratio.shape[1]:
            diff, lo, hi = auc_difference_interval(ratio, labels, floor[0], floor[1], level=level, samples=draws,
                                                   reference_samples=floor_draws)
            row.update(auc_vs_retrain=diff, auc_vs_retrain_lo=lo, auc_vs_retrain_hi=hi,
                       distinguishable=bool(lo > 0))
        rows.append(row)
    table = pd.DataFrame(rows)
    if floor is not None:
        retrained = table[table["method"] == "retrain"].iloc[0]
        for key, _, _ in ULIRA_COLUMNS:
            table[f"retrain_{key}"] = retrained[key]
    return table.sort_values("auc", ascending=False).reset_index(drop=True)


def ulira_markdown(table: pd.DataFrame, title: str) -> str:
    if len(table) == 0:
        return ""
    first = table.iloc[0]
    lines = [f"**U-LiRA, the per-example membership attack on unlearning; {title}**", "",
             f"{int(first['shadows'])} shadow and {int(first['targets'])} target models per setting, "
             f"{int(first['candidates'])} forget candidates; each cell a value and its 95% bootstrap interval over "
             "the candidates.", "",
             "| method | setting | " + " | ".join(h for _, h, _ in ULIRA_COLUMNS) + " | AUC minus retrained |",
             "|---|---|" + "---|" * (len(ULIRA_COLUMNS) + 1)]
    for _, r in table.iterrows():
        cells = [f"{r[k]:.{d}f} [{r[f'{k}_lo']:.{d}f}, {r[f'{k}_hi']:.{d}f}]" for k, _, d in ULIRA_COLUMNS]
        if r["method"] == "retrain" or pd.isna(r.get("auc_vs_retrain")):
            versus = "(the floor)" if r["method"] == "retrain" else ""
        else:
            versus = (f"{r['auc_vs_retrain']:+.3f} [{r['auc_vs_retrain_lo']:+.3f}, {r['auc_vs_retrain_hi']:+.3f}]"
                      + (" **told apart**" if r["distinguishable"] else ""))
        lines.append(f"| {r['method']} | {r['setting'][:8]} | " + " | ".join(cells) + f" | {versus} |")
    told = [str(r["method"]) for _, r in table.iterrows() if r["method"] != "retrain"
            and not pd.isna(r.get("distinguishable")) and bool(r["distinguishable"])]
    lines += ["", "Each shadow (and target) model trained on the retain set and half the forget candidates, then "
              "unlearned that half with the method's setting; per candidate, the shadows that forgot it and those that "
              "never trained on it are each fitted by a Gaussian of the score (LiRA's median and spread), and a "
              "target's score is their log likelihood ratio. The retrained model's attack is the floor (it never "
              "saw any candidate: AUC 0.5 up to noise); the original's, which forgets nothing, the ceiling. "
              f"AUC minus retrained: paired over the candidates, its interval at {100 * (1 - FAMILY_RATE):.0f}% "
              "family-wise over the rows (Bonferroni); **told apart** where it lies above 0: an attacker can tell "
              "that method's models from retraining.",
              "", "Told apart from retraining: " + (", ".join(told) if told else "none") + "."]
    return "\n".join(lines) + "\n"
