"""Verdicts whose error rate holds: GLI against each baseline on one primary metric, looked at a few planned
times, with intervals that are simultaneous over every look and every comparison, whatever the shape of the
differences.

The design, fixed before any reported replicate is seen:

- **One primary metric** (`--primary`, default the final score) is tested: one comparison per baseline, GLI's
  value minus the baseline's, replicate by replicate (each method at its one reported setting).
- **What is tested is the median difference**, by the sign test: whether GLI is ahead on more replicates than
  chance allows. A test of the mean cannot hold its level here: at the levels a family of twelve comparisons
  over four looks needs (1e-9 to 4e-3) and 5 to 20 replicates, the t test on centred-exponential differences
  claims falsely in about 30% of studies and Hall's skewness-corrected t in 12% (`analysis.simulate`); the
  sign test is exact for any continuous shape. The mean difference is reported beside it, not tested.
- **Planned looks** (`looks`, default four, equally spaced up to `--max-replicates`: 5, 10, 15, 20; a study
  without `--until-settled` makes one look at its `--replicates`). Each comparison's error rate is spent over
  the looks by the Lan-DeMets O'Brien-Fleming-type function, with exact sign-test boundaries
  (`analysis.groupseq.sign_bounds`): early looks are strict (at 5 and 10 replicates none can reject).
- **Bonferroni across comparisons**: each of the m comparisons gets 5% / m to spend. Its interval at a look is
  the sign test's interval for the median, [d_(b+1), d_(n-b)], b the look's boundary: every comparison's
  interval covers its true median at every look with probability at least 95% jointly, whatever rule stops the
  study, so the verdicts read from them hold together (`better`/`worse`: excludes 0; `equivalent`: within
  +-margin; else `undecided`). Holm's step-down would test more sharply after a rejection, but the interval it
  gives a rejected comparison reaches only to 0, which cannot settle equivalence: one interval decides here.
- **Equal differences decide nothing by themselves**: a look whose boundary is -1 (too few replicates for its
  level: two equal differences, or three zeros) has no interval and no verdict.
- **Secondary metrics** (the others of `COMPARED`) are estimates, never tested: their intervals are
  simultaneous over all of them (the same construction), labelled `not tested`.
- **Reachable margin**: the margin the final look could settle as equivalent were the true median 0, projected
  from the spread seen; the margin itself is fixed before the study.

A look at n replicates is made once replicates 1..n are complete (every setting's run on each has ended,
finished or failed); a later, partial replicate is never read, and a comparison whose setting failed on a
counted replicate stays undecided at that look (`missing`). Everything is replayed from the recorded rows
(each look sees the replicates it saw then), so a resumed study reaches the same verdicts.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from trainables.records import REFERENCE_ROWS, SEED_COL, STUDIED, hparams_of

from .groupseq import sign_bounds
from .tables import LEVEL, MARGIN, row_settings

# The compared metrics and which sign of GLI-minus-baseline favours GLI. `privacy_gap` is |mia_advantage - the
# same replicate's retrained model's|: as close to retraining as possible, not as low.
COMPARED = (("final_score", +1), ("forgetting_score", -1), ("privacy_gap", -1))
PRIMARY = "final_score"
VERDICT_COLUMNS = ["baseline", "metric", "tested", "median_diff", "lo", "hi", "mean_diff", "replicates", "verdict",
                   "bound", "look", "looks", "missing", "reachable_margin", "schedule", "primary", "gli_setting",
                   "baseline_setting"]
WORDS = {"better": "GLI is better", "worse": "GLI is worse", "undecided": "undecided: no claim either way",
         "not tested": "not tested (an estimate)"}


def default_looks(most: int, looks: int = 4) -> list[int]:
    """`looks` equally spaced looks up to `most` replicates (5, 10, 15, 20 for 20), none before 2 replicates."""
    return sorted({min(most, max(2, math.ceil(most * k / looks))) for k in range(1, looks + 1)})


def look_sizes(start: int, most: int, step: int) -> list[int]:
    """Looks after `start` replicates, then after every `step` more, up to `most` (the older `--round-size`
    schedule, kept for studies that set it)."""
    count = 1 + max(0, math.ceil((most - start) / max(1, step)))
    return [min(most, start + k * max(1, step)) for k in range(count)]


def schedule_text(sizes) -> str:
    """A look schedule as recorded (the parent run's `looks` param, `verdicts.csv`'s `schedule`): `5,10,15,20`."""
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


def differences(rows: pd.DataFrame, metrics, method: str = STUDIED) -> list[dict]:
    """`method` minus each other unlearning method, replicate by replicate, each at its table row's setting
    (`tables.row_settings`), per metric: dicts of baseline, metric, favour, diff (an array) and the two settings as
    JSON."""
    if not len(rows):
        return []
    chosen = row_settings(rows)  # the settings the table reports; no intervals needed here
    if method not in chosen:
        return []

    def per_seed(name):
        group = rows[(rows["method"] == name) & (rows["setting"] == chosen.get(name, ""))]
        return group.set_index(pd.to_numeric(group[SEED_COL]))

    def hparams(frame) -> str:
        """The compared setting's hyper-parameters, as JSON (as `tuning.csv` shows a chosen setting)."""
        return json.dumps(hparams_of(frame.iloc[0]), sort_keys=True) if len(frame) else ""

    retrained = per_seed("retrain") if "mia_advantage" in rows and "retrain" in chosen else None

    def with_gap(frame):
        if retrained is not None and len(frame):
            reference = pd.to_numeric(retrained["mia_advantage"]).reindex(frame.index)
            frame = frame.assign(privacy_gap=(pd.to_numeric(frame["mia_advantage"]) - reference).abs())
        return frame

    favour = dict(COMPARED) | {"accuracy": +1}
    ours, out = with_gap(per_seed(method)), []
    for other in chosen:
        if other == method or other in REFERENCE_ROWS:
            continue
        theirs = with_gap(per_seed(other))
        seeds = sorted(set(ours.index) & set(theirs.index))
        for metric in metrics:
            if metric not in ours or metric not in theirs:
                continue
            diff = (pd.to_numeric(ours.loc[seeds, metric]) - pd.to_numeric(theirs.loc[seeds, metric]))
            keep = np.isfinite(diff.to_numpy(dtype=float))  # a seed missing a value is left out
            out.append({"baseline": other, "metric": metric, "favour": favour.get(metric, +1),
                        "diff": diff.to_numpy(dtype=float)[keep], "gli_setting": hparams(ours),
                        "baseline_setting": hparams(theirs)})
    return out


def median_intervals(diffs: list[np.ndarray], bound: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(median, lo, hi) per comparison: the sign test's interval for the median difference, [d_(b+1), d_(n-b)]
    (order statistics, 1-based) for a look whose boundary is b (`groupseq.sign_bounds`): the medians the look's
    sign test would not reject. No interval (nan) where b < 0 (too few replicates for the look's level)."""
    med = np.array([float(np.median(d)) if len(d) else math.nan for d in diffs])
    lo, hi = np.full(len(diffs), math.nan), np.full(len(diffs), math.nan)
    for i, d in enumerate(diffs):
        n = len(d)
        if 0 <= bound and n >= 2 * bound + 1:
            ordered = np.sort(np.asarray(d, dtype=float))
            lo[i], hi[i] = ordered[bound], ordered[n - bound - 1]
    return med, lo, hi


def verdict(lo: float, hi: float, favour: int, margin: float = MARGIN) -> str:
    """`better` or `worse` (for GLI) when the interval excludes 0, `equivalent` when it lies within +-margin,
    else `undecided`."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "undecided"
    if lo > 0 or hi < 0:
        return "better" if (lo > 0) == (favour > 0) else "worse"
    return "equivalent" if -margin < lo and hi < margin else "undecided"


def reachable_margin(diff: np.ndarray, bound_last: int, planned: int) -> float:
    """The margin the final look (at `planned` replicates, boundary `bound_last`) could settle as equivalent were
    the true median difference 0, projected from the spread seen: the larger distance from the median to the
    sample quantiles at the final interval's ranks. The margin itself must be fixed before the study."""
    if bound_last < 0 or len(diff) < 2 or planned < 1:
        return math.nan
    centred = np.asarray(diff, dtype=float) - float(np.median(diff))
    ranks = np.array([bound_last + 1, planned - bound_last]) / (planned + 1)
    return float(np.max(np.abs(np.quantile(centred, ranks))))


def decide(comparisons: list[list[dict]], sizes: list[int], margin: float = MARGIN, alpha: float = 1 - LEVEL,
           primary: str = PRIMARY) -> pd.DataFrame:
    """The design on given differences: `comparisons[k]` are look k's (`differences`' dicts, the same
    comparisons in the same order at every look made; fewer lists than `sizes`: looks not made yet). The
    primary metric's comparisons are tested at alpha / m each, spent over `sizes`; each keeps the verdict and
    interval of the first look that settles it. The others are estimated at the last look made, with intervals
    simultaneous over all of them. Returns `VERDICT_COLUMNS` but the schedule."""
    if not comparisons or not comparisons[0]:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    rows = decide_rows(comparisons, sizes, margin, alpha, primary)
    return pd.DataFrame(rows).assign(looks=len(sizes), primary=primary).reindex(columns=VERDICT_COLUMNS)


def decide_rows(comparisons: list[list[dict]], sizes: list[int], margin: float = MARGIN, alpha: float = 1 - LEVEL,
                primary: str = PRIMARY, reach: bool = True) -> list[dict]:
    """`decide`'s rows, as dicts in the comparisons' order (what the simulations in `analysis.simulate` call)."""
    first = comparisons[0]
    tested = [i for i, c in enumerate(first) if c["metric"] == primary]
    estimated = [i for i, c in enumerate(first) if c["metric"] != primary]
    bounds = {True: sign_bounds(sizes, sizes[-1], alpha / max(1, len(tested))),
              False: sign_bounds(sizes, sizes[-1], alpha / max(1, len(estimated)))}
    rows: dict[int, dict] = {}
    made = 0
    for k, look in enumerate(comparisons):
        made = k + 1
        open_ = [i for i in tested if i not in rows or rows[i]["verdict"] == "undecided"]
        med, lo, hi = median_intervals([look[i]["diff"] for i in open_], bounds[True][k])
        for j, i in enumerate(open_):
            c = look[i]
            said = "undecided" if c.get("missing", 0) else verdict(lo[j], hi[j], c["favour"], margin)
            rows[i] = {**_row(c, med[j], lo[j], hi[j], bounds[True][k], k + 1, said), "reachable_margin": (
                reachable_margin(c["diff"], bounds[True][-1], sizes[-1]) if reach else math.nan)}
        if tested and all(rows[i]["verdict"] != "undecided" for i in tested):
            break
    last = comparisons[made - 1]
    med, lo, hi = median_intervals([last[i]["diff"] for i in estimated], bounds[False][made - 1]) \
        if estimated else ([], [], [])
    for j, i in enumerate(estimated):
        rows[i] = {**_row(last[i], med[j], lo[j], hi[j], bounds[False][made - 1], made, "not tested"),
                   "reachable_margin": math.nan}
    return [rows[i] for i in range(len(first))]


def _row(c: dict, median, lo, hi, bound, look, said) -> dict:
    diff = np.asarray(c["diff"], dtype=float)
    return {"baseline": c["baseline"], "metric": c["metric"], "tested": said != "not tested",
            "median_diff": median, "lo": lo, "hi": hi, "mean_diff": float(diff.mean()) if len(diff) else math.nan,
            "replicates": len(diff), "verdict": said, "bound": bound, "look": look,
            "missing": c.get("missing", 0), "gli_setting": c["gli_setting"], "baseline_setting": c["baseline_setting"]}


def settle(rows: pd.DataFrame, sizes: list[int], margin: float = MARGIN, method: str = STUDIED,
           alpha: float = 1 - LEVEL, ended: pd.DataFrame | None = None, primary: str = PRIMARY) -> pd.DataFrame:
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
    metrics = [primary] + [m for m, _ in COMPARED if m != primary]
    looks = []
    for size in sizes:
        if size > len(complete):
            break
        counted = complete[:size]
        seen = rows[pd.to_numeric(rows[SEED_COL]).astype(int).isin(counted)]
        broke = failed[pd.to_numeric(failed[SEED_COL]).astype(int).isin(counted)]
        several = seen.groupby("method")["setting"].nunique()
        drop = {(m, s) for m, s in zip(broke["method"], broke["setting"]) if several.get(m, 0) > 1}
        if drop:  # a setting that failed on a counted replicate is never the one chosen among several
            seen = seen[[pair not in drop for pair in zip(seen["method"], seen["setting"])]]
        look = differences(seen, metrics, method)
        for c in look:
            c["missing"] = size - len(c["diff"])
        if looks and [(c["baseline"], c["metric"]) for c in look] != [(c["baseline"], c["metric"]) for c in looks[0]]:
            break  # a comparison appeared or vanished (cannot happen on complete replicates): stop reading
        looks.append(look)
    if not looks:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    return decide(looks, list(sizes), margin, alpha, primary).assign(schedule=schedule_text(sizes))[VERDICT_COLUMNS]


def all_settled(verdicts: pd.DataFrame) -> bool:
    """Every tested comparison has a verdict other than undecided."""
    if not len(verdicts):
        return False
    tested = verdicts[verdicts["tested"].astype(bool)] if "tested" in verdicts else verdicts
    return bool(len(tested)) and bool((tested["verdict"] != "undecided").all())


def _cell(r) -> str:
    return "-" if pd.isna(r["lo"]) else f"{r['median_diff']:.4f} [{r['lo']:.4f}, {r['hi']:.4f}]"


def verdicts_markdown(verdicts: pd.DataFrame, title: str, margin: float = MARGIN) -> str:
    """The verdicts in plain words: what a paper may claim for each comparison and on how many replicates; then
    the secondary estimates, labelled as not tested."""
    if not len(verdicts):
        return ""
    looks, schedule = int(verdicts["looks"].max()), str(verdicts["schedule"].iloc[0]) if "schedule" in verdicts else ""
    primary = str(verdicts["primary"].iloc[0]) if "primary" in verdicts else PRIMARY
    tested = verdicts[verdicts["tested"].astype(bool)]
    words = {**WORDS, "equivalent": f"equivalent within ±{margin}"}
    lines = [f"**{title}: verdicts on the primary metric, {primary.replace('_', ' ')}**", "",
             f"GLI minus each baseline, replicate by replicate: the median difference and the sign test's interval "
             f"for it. Planned looks at {schedule or looks} reported replicates; each of the {len(tested)} "
             f"comparisons spends 5%/{len(tested)} over the looks (Lan-DeMets, O'Brien-Fleming type, exact sign-test "
             "boundaries), so every interval below covers its true median at every look with probability at least "
             "95% jointly, whatever the shape of the differences, and the verdicts read from them hold together: "
             f"excludes 0 (better or worse), within ±{margin} (equivalent), else undecided. The mean difference is "
             "an estimate beside it. The reachable margin: what the final look could settle as equivalent were the "
             "true median 0, projected from the spread seen.", "",
             "| versus | verdict | replicates | median difference [simultaneous interval] | mean difference | "
             "reachable margin |", "|---|---|---|---|---|---|"]
    for _, r in tested.iterrows():
        said = words[r["verdict"]]
        if pd.notna(r.get("missing")) and r["missing"] > 0:
            said = f"undecided: a compared run failed on {int(r['missing'])} of the look's replicates"
        reach = "-" if pd.isna(r["reachable_margin"]) else f"{r['reachable_margin']:.4f}"
        mean = "-" if pd.isna(r["mean_diff"]) else f"{r['mean_diff']:.4f}"
        lines.append(f"| {r['baseline']} | {said} | {int(r['replicates'])} | {_cell(r)} | {mean} | {reach} |")
    rest = verdicts[~verdicts["tested"].astype(bool)]
    if len(rest):
        lines += ["", f"**Secondary metrics: estimates, not tested** (median differences, intervals simultaneous over "
                  f"these {len(rest)}, at the last look made)", "",
                  "| versus | metric | replicates | median difference [simultaneous interval] |", "|---|---|---|---|"]
        lines += [f"| {r['baseline']} | {r['metric']} | {int(r['replicates'])} | {_cell(r)} |" for _, r in rest.iterrows()]
    lines += ["", "final score: GLI's minus the baseline's; positive favours GLI. forgetting score: negative favours "
              "GLI (it forgets better). privacy gap: the distance of the attack's advantage from the same replicate's "
              "retrained model's, GLI's minus the baseline's; negative favours GLI (closer to retraining). An "
              "undecided comparison is a difference within noise: it supports no claim either way."]
    return "\n".join(lines) + "\n"
