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

from trainables.audit import forget_quality, forget_quality_interval, forget_quality_null
from trainables.records import AUDIT_STAGE, METHOD_COL, SEED_COL, TRIAL_KEY_COL, setting_of

NULL_DRAWS = 10  # simulated audits behind each ceiling (about half a second each at 100 examples)
COLUMNS = [("forget_quality", "F", 4), ("forget_quality_lo", "F low", 4), ("forget_quality_hi", "F high", 4),
           ("forget_quality_null", "ceiling", 4), ("challenge_score", "challenge score", 4),
           ("epsilon_median", "eps median", 2),
           ("epsilon_p90", "eps p90", 2), ("models", "models", 0), ("retrained", "retrained", 0)]


def _scores(study, runs: pd.DataFrame) -> np.ndarray | None:
    arrays = [study.load_scores(r["run_id"]) for _, r in runs.sort_values(SEED_COL, key=pd.to_numeric).iterrows()]
    arrays = [a for a in arrays if a is not None]
    return np.stack(arrays) if arrays else None


def audit_table(study) -> tuple[pd.DataFrame, dict]:
    """(one row per audited setting, {method/setting: epsilons}); empty when the study has no audit."""
    runs = study.children(AUDIT_STAGE)
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
    rows, epsilons, ceilings = [], {}, {}
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


def plot_epsilons(epsilons: dict, title: str, base: Path) -> list[Path]:
    """Each audited setting's distribution of per-example epsilon, the original's drawn in every panel."""
    from .plots import panels

    names = [n for n in epsilons if not n.startswith("original/")]
    control = next((v for n, v in epsilons.items() if n.startswith("original/")), None)
    bins = np.linspace(0, 6, 25)

    def draw(ax, name):
        if control is not None:
            ax.hist(np.clip(control, 0, 6), bins=bins, color="#d62728", alpha=0.4, label="original", density=True)
        ax.hist(np.clip(epsilons[name], 0, 6), bins=bins, color="#1f77b4", alpha=0.6, label="unlearned", density=True)
        method, setting = name.split("/")
        ax.set_title(f"{method} {setting[:6]}", fontsize=8)

    return panels(names, draw, f"per-example epsilon (clipped at 6); {title}", "epsilon", base, size=(3.0, 2.4))


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
