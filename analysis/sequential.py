"""A study that runs until each comparison is settled: verdicts that stay valid although they are read after
every round of replicates.

After the first N reported replicates, and after each round of R more, the study looks at
every GLI-minus-baseline comparison (`tables.paired`). It plans at most L looks (N, N + R,
..., up to M replicates) and spends its 5% error rate over them in equal shares, alpha / L
per look (Bonferroni across looks: whatever rule stops the study, the chance of any false
`better`, `worse` or `equivalent` at any look is at most the sum of the shares), and within a
look over every comparison with Holm's step-down adjustment (statsmodels). A comparison
whose interval excludes 0 (`better`, `worse`) or lies within +-margin (`equivalent`) is
settled at that look and keeps that verdict and interval; the study stops when every
comparison is settled or M replicates are reported, and what is left is `undecided`.

The looks are the study's own setting (`looks`, fixed from its settings when it first starts
and recorded on its parent run), never the cluster's size: the same study on 2 CPUs or 64 GPUs
makes the same looks. A look at n replicates is made once replicates 1..n are complete (every
setting's run on each has ended, finished or failed); a later, partial replicate is never read,
and a comparison whose setting failed on a counted replicate stays undecided at that look.
Everything is replayed from the recorded rows (each look sees the replicates it saw then),
so a resumed study reaches the same verdicts.
"""

from __future__ import annotations

import math

import pandas as pd

from trainables.records import SEED_COL, STUDIED

from .tables import LEVEL, MARGIN, paired, summarise

VERDICT_COLUMNS = ["baseline", "metric", "mean_diff", "lo", "hi", "replicates", "verdict", "p", "p_holm", "level",
                   "look", "looks", "missing", "schedule", "gli_setting", "baseline_setting"]


def planned_looks(start: int, most: int, step: int) -> int:
    """The looks a study makes at most: after `start` replicates, then after every `step` more, up to `most`."""
    return 1 + max(0, math.ceil((most - start) / max(1, step)))


def look_sizes(start: int, most: int, step: int) -> list[int]:
    """The number of reported replicates at each planned look."""
    return [min(most, start + k * max(1, step)) for k in range(planned_looks(start, most, step))]


def run_looks(table_at, sizes: list[int], available: int, alpha: float = 1 - LEVEL) -> pd.DataFrame:
    """The looks at `sizes` replicates that `available` replicates allow, each at an equal share of `alpha`:
    `table_at(size, share)` gives the comparisons' table at a look (`tables.compare`'s columns and `baseline`,
    `metric`). A comparison keeps the verdict and interval of the first look that settled it; the looks stop
    once every comparison is settled. Returns `VERDICT_COLUMNS` (`look`: the look that settled it, or the
    last one made); empty before the first look."""
    share = alpha / len(sizes)
    settled: dict[tuple, dict] = {}
    last = None
    for number, size in enumerate(sizes, start=1):
        if size > available:
            break
        table = table_at(size, share)
        for _, r in table.iterrows():
            key = (r["baseline"], r["metric"])
            if key not in settled and r["verdict"] != "undecided":
                settled[key] = {**r.to_dict(), "look": number}
        last = (number, table)
        if len(settled) == len(table):
            break
    if last is None:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    number, table = last
    out = [settled.get((r["baseline"], r["metric"]), {**r.to_dict(), "look": number}) for _, r in table.iterrows()]
    return pd.DataFrame(out, columns=[*table.columns, "look"]).assign(looks=len(sizes)).reindex(columns=VERDICT_COLUMNS)


def schedule_text(sizes) -> str:
    """A look schedule as recorded (the parent run's `looks` param, `verdicts.csv`'s `schedule`): `3,4,5`."""
    return ",".join(str(int(n)) for n in sizes)


def _runs_by_replicate(ended: pd.DataFrame) -> tuple[set, dict[int, set]]:
    """Every (method, setting) the rows hold, and those with a row on each replicate."""
    pairs = list(zip(ended["method"], ended["setting"]))
    have: dict[int, set] = {}
    for seed, pair in zip(pd.to_numeric(ended[SEED_COL]).astype(int), pairs):
        have.setdefault(seed, set()).add(pair)
    return set(pairs), have


def complete_replicates(ended: pd.DataFrame) -> list[int]:
    """The replicates 1, 2, ... in order up to the first that is incomplete: a replicate is complete when every
    (method, setting) that `ended` holds anywhere has a run on it that has ended, finished or failed (a run that
    failed, a diverged trial, fails again when rerun: waiting for it would stall every later look). A look counts
    only these, so a look at n replicates compares n pairs whatever else (a later round cut short) the rows hold."""
    if not len(ended):
        return []
    pairs, have = _runs_by_replicate(ended)
    complete = []
    for seed in sorted(have):
        if seed != len(complete) + 1 or have[seed] != pairs:
            break
        complete.append(seed)
    return complete


def missing_note(ended: pd.DataFrame, size: int) -> str | None:
    """Why the look at `size` replicates cannot be made yet: the first replicate that lacks an ended run, and of
    which settings."""
    complete = complete_replicates(ended)
    if len(complete) >= size or not len(ended):
        return None
    seed = len(complete) + 1
    pairs, have = _runs_by_replicate(ended)
    if seed not in have:
        return f"replicate {seed} has no ended run yet"
    lacking = sorted(f"{m} ({str(s)[:8]})" for m, s in pairs - have[seed])
    return f"replicate {seed} has no ended run of {', '.join(lacking)}"


def settle(rows: pd.DataFrame, sizes: list[int], margin: float = MARGIN, method: str = STUDIED,
           alpha: float = 1 - LEVEL, ended: pd.DataFrame | None = None) -> pd.DataFrame:
    """The verdict of every comparison after the looks the rows allow. `rows` are the table's finished rows
    (`report.method_rows`) of the reported replicates, `ended` the same for every run that ended (finished or
    failed; default `rows`: none failed); `sizes` the study's look schedule. A look is made once replicates
    1..size are complete (`complete_replicates`), on those replicates alone (each method's setting chosen as the
    table chose it then, among the settings with no failed run there). A comparison whose compared setting has
    no finished run on some replicate of the look (it failed) is `undecided` there (`missing`: how many), never
    read on fewer pairs: dropping the failed replicates would favour whichever method fails."""
    ended = rows if ended is None else ended
    if not len(rows):
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    complete = complete_replicates(ended)
    failed = ended[ended["status"] == "FAILED"] if "status" in ended else ended.iloc[:0]

    def table_at(size: int, share: float) -> pd.DataFrame:
        counted = complete[:size]
        seen = rows[pd.to_numeric(rows[SEED_COL]).astype(int).isin(counted)]
        broke = failed[pd.to_numeric(failed[SEED_COL]).astype(int).isin(counted)]
        several = seen.groupby("method")["setting"].nunique()
        drop = {(m, s) for m, s in zip(broke["method"], broke["setting"]) if several.get(m, 0) > 1}
        if drop:  # a setting that failed on a counted replicate is never the one chosen among several
            seen = seen[[pair not in drop for pair in zip(seen["method"], seen["setting"])]]
        table = paired(seen, summarise(seen), method, margin, share)
        table["missing"] = size - table["replicates"]
        table.loc[table["missing"] > 0, "verdict"] = "undecided"
        return table

    out = run_looks(table_at, list(sizes), len(complete), alpha)
    return out.assign(schedule=schedule_text(sizes))[VERDICT_COLUMNS]


def all_settled(verdicts: pd.DataFrame) -> bool:
    return bool(len(verdicts)) and bool((verdicts["verdict"] != "undecided").all())


def verdicts_markdown(verdicts: pd.DataFrame, title: str, margin: float = MARGIN) -> str:
    """The verdicts in plain words: what a paper may claim for each comparison and on how many replicates."""
    if not len(verdicts):
        return ""
    looks = int(verdicts["looks"].max())
    words = {"better": "GLI is better", "worse": "GLI is worse", "equivalent": f"equivalent within ±{margin}",
             "undecided": "undecided: no claim either way"}
    lines = [f"**{title}: verdicts, run until settled**", "",
             f"Each comparison was looked at after every round of replicates, at most {looks} times; the 5% error rate "
             f"is split equally over those {looks} looks and, within a look, over the comparisons by Holm's "
             "adjustment, so every verdict below holds together with the others.", "",
             "| versus | metric | verdict | replicates | difference [lo, hi] |", "|---|---|---|---|---|"]
    for _, r in verdicts.iterrows():
        interval = ("-" if pd.isna(r["lo"]) else f"{r['mean_diff']:.4f} [{r['lo']:.4f}, {r['hi']:.4f}]")
        said = words[r["verdict"]]
        if pd.notna(r.get("missing")) and r["missing"] > 0:
            said = f"undecided: a compared run failed on {int(r['missing'])} of the look's replicates"
        lines.append(f"| {r['baseline']} | {r['metric']} | {said} | {int(r['replicates'])} | {interval} |")
    return "\n".join(lines) + "\n"
