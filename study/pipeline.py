"""The study's pipeline: which stages run and what each waits for, and one study from start to report.

A replicate r is a split seed and a training seed together (r and r). Replicate 0 tunes:
every search runs on it and it is never reported; replicates 1..N are reported. Stages:
base (original and retrained models per replicate), baseline (an Optuna search per
baseline with GLI's budget under --protocol fair; each baseline's paper setting per
reported replicate under paper or with --paper-baselines), gli (Optuna over step size,
iteration count and guidance strength), confirm (the chosen settings over every reported
replicate), then the rounds of --until-settled and the audits, all in one Tune run: a
replicate's trials start once its base models exist.

A study is one identity, its key (`study_key`): every setting that can change a number. Its
MLflow parent run, Optuna studies and journal, Tune folder and look schedule are named by it;
the results folder holds the report of the study last run there (another study's is moved to
`superseded/<key>/`). Slots, GPUs, addresses and paths are not in it and change no number.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from trainables import engine
from trainables.methods import REFERENCE_ROWS
from trainables.records import (AUDIT_REPLICATE, AUDIT_STAGE, BASE_STAGE, BASELINE_STAGE, CONFIRM_STAGE,
                                SELECT_STAGE, SELECTION_REPLICATE, DATA_FINGERPRINT_TAG, GIT_COMMIT_TAG, HARDWARE_TAG, SEARCH_STAGE,
                                SETTINGS_PARAM, STUDIED, TUNING_REPLICATE, ULIRA_STAGE)

from analysis.results import supersede

from .cli import changed_settings, print_outcome
from .cluster import connect, slots
from .config import PLACEMENT, ConfigError, StudyConfig, write_resolved
from .spaces import SearchSpace, paper_point

if TYPE_CHECKING:
    from .context import StudyContext



def keyed(cfg: StudyConfig) -> dict:
    """The settings in the study key: every setting but placement ones; the look schedule and its end only with
    --until-settled (`round_size` only through the schedule it gives)."""
    what = {k: v for k, v in asdict(cfg).items() if k not in PLACEMENT and k != "round_size"}
    if not cfg.until_settled:
        what.pop("looks", None), what.pop("max_replicates", None)
    return what


def study_key(cfg: StudyConfig, fingerprint: str) -> str:
    """The study's identity: every setting that can change a number (`keyed`) and the data's fingerprint."""
    return hashlib.sha256(json.dumps([keyed(cfg), fingerprint], sort_keys=True, default=str).encode()).hexdigest()[:16]


def keyed_settings(cfg: StudyConfig) -> list[str]:
    """The names of the settings in the study key."""
    return list(keyed(cfg))


def _prepare(cfg: StudyConfig, out: dict) -> None:
    """The tracking store and the driver's remaining imports (run on a thread while Ray starts)."""
    try:
        for module in ("analysis.report", "study.context"):  # matplotlib, pandas; Tune's search, Optuna
            importlib.import_module(module)
        from .tracking import Tracker

        out["tracker"] = Tracker(cfg.tracking_uri, cfg.experiment_name, cfg.results_path / "artifacts",
                                 cfg.tracking_outage)
    except BaseException as exc:  # handed to the main thread
        out["error"] = exc


def run_study(ctx: StudyContext) -> list:
    """Base models first; each replicate's trials as soon as its base models exist; the searches (on the tuning
    replicate, never reported) before the baselines (they fill the slots while the searches' last trials run);
    select (each method's candidates on the selection replicates, never reported) once the searches end; confirm
    (each method's one chosen setting on the reported replicates 1..N) once select has ended."""
    cfg = ctx.cfg
    seeds = list(range(TUNING_REPLICATE + 1, TUNING_REPLICATE + 1 + cfg.replicates))  # the reported replicates
    selection = selection_replicates(cfg)
    base = ctx.grid(BASE_STAGE, [{"method": m, "seed": s, "hparams": {}} for s in [TUNING_REPLICATE, *selection, *seeds]
                                 for m in REFERENCE_ROWS])
    needs = base  # a replicate's trials wait for its base models
    searches = [ctx.search(SEARCH_STAGE, STUDIED, SearchSpace(STUDIED, cfg.gli_space),
                           paper_point(STUDIED, cfg.dataset, cfg.gli_space),
                           cfg.budget, needs)]
    if not cfg.paper_baselines:  # every baseline searched with GLI's budget
        searches += [ctx.search(BASELINE_STAGE, m, SearchSpace(m, cfg.spaces.get(m)),
                                paper_point(m, cfg.dataset, cfg.spaces.get(m)), cfg.budget, needs) for m in cfg.baselines]
    grid = [] if not cfg.paper_baselines else [
        ctx.grid(BASELINE_STAGE, [{"method": m, "seed": s, "hparams": ctx.fixed_hparams(m)}
                                  for s in seeds for m in cfg.baselines], needs=needs)]
    choice = Choice(ctx, searches)
    select = ctx.grid(SELECT_STAGE, choice.selection_runs, tuple(s.label for s in searches), needs)

    def confirm_runs(replicates=tuple(seeds)) -> list[dict]:  # once select has ended: one setting per method
        return [{"method": m, "seed": s, "hparams": h} for m, h in choice.chosen().items() for s in replicates]

    confirm = ctx.grid(CONFIRM_STAGE, confirm_runs, (select.label,), needs)
    rounds = settling_rounds(ctx, confirm_runs, (confirm.label, *(g.label for g in grid))) if cfg.until_settled else []
    after_confirm = (CONFIRM_STAGE, *(r.label for r in rounds))
    audit = [ctx.grid(AUDIT_STAGE, lambda: audit_runs(ctx, choice), after_confirm)] if cfg.audit else []
    stages = [base, *searches, select, confirm, *grid, *rounds, *audit,
              *(ulira_stages(ctx, choice, after_confirm) if cfg.attack == "ulira" else [])]
    ctx.run(stages)
    return stages


def selection_replicates(cfg: StudyConfig) -> list[int]:
    """The selection replicates' numbers (`records.SELECTION_REPLICATE` + 1, ...): their own split and training
    seeds, never reported; none with one candidate per method (`--candidates 1` or `--budget 1`: nothing to choose among)."""
    if min(cfg.candidates, cfg.budget) <= 1:
        return []
    return list(range(SELECTION_REPLICATE + 1, SELECTION_REPLICATE + 1 + cfg.selection_replicates))


class Choice:
    """Each searched method's reported setting, fixed before any reported replicate is seen, the same way for
    every method: its `--candidates` k best settings from its search (`SearchStage.candidates`) are rerun on the
    selection replicates, and the one with the best mean selection final score there is chosen (ties by the
    setting's digest: `analysis.choice.ranked_settings`). A candidate with a failed or missing run there is never
    chosen; a method with one candidate needs no selection runs. Read from MLflow, so a resumed study makes the
    same choice."""

    def __init__(self, ctx: StudyContext, searches):
        self.ctx, self.searches = ctx, searches

    def candidates(self) -> dict[str, list[dict]]:
        """Each searched method's candidates, as full hyper-parameters (its fixed ones and the searched)."""
        k = self.ctx.cfg.candidates
        return {s.method: [{**self.ctx.fixed_hparams(s.method), **c} for c in s.candidates(k)] for s in self.searches}

    def selection_runs(self) -> list[dict]:
        return [{"method": m, "seed": r, "hparams": h} for m, found in self.candidates().items() if len(found) > 1
                for h in found for r in selection_replicates(self.ctx.cfg)]

    def chosen(self) -> dict[str, dict]:
        """method -> its chosen hyper-parameters (a method whose search finished no trial has none)."""
        from analysis.choice import ranked_settings
        from trainables.records import METHOD_COL, SEED_COL, TRIAL_KEY_COL, hparams_of, setting_of

        ran = self.ctx.tracker.children(SELECT_STAGE, status=None)
        out = {}
        for method, found in self.candidates().items():
            if len(found) <= 1:
                out.update({method: found[0]} if found else {})
                continue
            rows = ran[ran[METHOD_COL] == method].copy() if len(ran) else ran
            if len(rows):
                rows["setting"] = rows[TRIAL_KEY_COL].map(setting_of)
            wanted = set(map(str, selection_replicates(self.ctx.cfg)))
            complete = {s for s, g in rows.groupby("setting")
                        if (g["status"] == "FINISHED").all() and wanted <= set(g[SEED_COL].astype(str))}
            rows = rows[rows["setting"].isin(complete) & (rows["status"] == "FINISHED")]
            if not len(rows):
                print(f"[study] select: no candidate of {method} finished on every selection replicate; {method} is "
                      "not confirmed and its comparisons are left out (the select runs' `error` tags say why)",
                      file=sys.stderr, flush=True)
                continue
            best = ranked_settings(rows)[0]
            out[method] = hparams_of(rows[rows["setting"] == best].iloc[0])
        return out


def search_capacity(cfg: StudyConfig, slots: int) -> str | None:
    """One line when the planned searches cannot fill the slots: each search runs at most `search_batch` trials
    at once (the batch belongs to the study: it changes what is proposed)."""
    searches = 1 + (0 if cfg.paper_baselines else len(cfg.baselines))
    if not cfg.search_batch:
        return None
    most = searches * min(cfg.search_batch, cfg.budget)
    if most >= slots:
        return None
    return (f"the {searches} search(es) run at most {most} trials at once (--search-batch {cfg.search_batch}) on "
            f"{slots} slots; other stages fill the rest meanwhile. To search on more, raise --search-batch (or "
            "--budget): a new study, since it changes what is proposed")


def settling_rounds(ctx: StudyContext, confirm_runs, after: tuple[str, ...]) -> list:
    """The rounds of `--until-settled`, one per look of the study's schedule (`cfg.looks`) past the first
    replicates: each adds the next replicates' base models, confirm runs (and paper-setting baselines) once the
    previous round has ended, unless every GLI-minus-baseline comparison is already settled
    (`analysis.sequential`, on complete replicates only); then it and the rest are empty."""
    from analysis.report import ended_rows
    from analysis.sequential import all_settled, missing_note, settle

    cfg = ctx.cfg
    targets = [cfg.replicates] + [n for n in cfg.looks if n > cfg.replicates]
    decided: dict[int, bool] = {}

    def more(have: int) -> bool:
        """Whether the study goes on after `have` reported replicates (decided once per round, from MLflow: reading
        the children flushes the writer first, so every ended trial's run is there)."""
        if have not in decided:
            rows, ended = ended_rows(ctx.tracker.children(status=None), cfg.paper_baselines)
            due = [n for n in cfg.looks if n <= have]
            if due and (note := missing_note(ended, due[-1])):
                print(f"[study] the look at {due[-1]} replicates waits: {note}", file=sys.stderr, flush=True)
            decided[have] = not all_settled(settle(rows, cfg.looks, cfg.margin, ended=ended, primary=cfg.primary))
            if not decided[have]:
                print(f"[study] every comparison settled after {have} replicates", file=sys.stderr, flush=True)
        return decided[have]

    stages, previous = [], after
    for number, (have, size) in enumerate(zip(targets, targets[1:]), start=1):
        new = tuple(range(TUNING_REPLICATE + 1 + have, TUNING_REPLICATE + 1 + size))

        def base_runs(have=have, new=new):
            return [{"method": m, "seed": s, "hparams": {}} for s in new for m in REFERENCE_ROWS] if more(have) else []

        def method_runs(have=have, new=new):
            return confirm_runs(new) if more(have) else []

        def paper_runs(have=have, new=new):
            return ([{"method": m, "seed": s, "hparams": ctx.fixed_hparams(m)} for s in new for m in cfg.baselines]
                    if more(have) else [])

        base = ctx.grid(BASE_STAGE, base_runs, previous, label=f"{BASE_STAGE}-round{number}")
        round_stages = [base, ctx.grid(CONFIRM_STAGE, method_runs, previous, base, f"{CONFIRM_STAGE}-round{number}")]
        if cfg.paper_baselines:
            round_stages.append(ctx.grid(BASELINE_STAGE, paper_runs, previous, base, f"{BASELINE_STAGE}-round{number}"))
        stages += round_stages
        previous = tuple(s.label for s in round_stages)
    return stages


def failed_stage_message(stages) -> str | None:
    """One line when every trial of some stage failed: the study's numbers would mean nothing."""
    failed = [s for s in stages if s.all_failed]
    if not failed:
        return None
    s = failed[0]
    names = ", ".join(f"{f.label} ({f.failed})" for f in failed)
    return (f"every trial of stage(s) {names} failed; the first: {s.first_error} "
            "(each failed run's `error` tag in MLflow says why; fix it and run the same command again to resume)")


def audit_runs(ctx: StudyContext, choice: Choice) -> list[dict]:
    """The audit's trials, built once confirm has ended, all on one reported replicate's split
    (`AUDIT_REPLICATE`): 2K retrained models (seeds 0..K-1 are the reference; K..2K-1 measure F's ceiling, F
    between two independent sets of K retrained models), the original as a control, and K runs (training seeds
    0..K-1, all from that replicate's original) of each method's reported setting."""
    k = ctx.cfg.audit
    here = {"replicate": AUDIT_REPLICATE}
    retrained = 2 * k if ctx.cfg.audit_ceiling == "retrained" else k  # simulated: no second set to train
    runs = [{"method": "retrain", "seed": s, "hparams": {}, **here} for s in range(retrained)]
    runs.append({"method": "original", "seed": AUDIT_REPLICATE, "hparams": {}, **here})  # one run stands for all K
    return runs + [{"method": m, "seed": s, "hparams": h, **here} for m, h in audited_settings(ctx, choice)
                   for s in range(k)]


def audited_settings(ctx: StudyContext, choice: Choice) -> list[tuple[str, dict]]:
    """(method, hyper-parameters) of what the privacy audits examine, once confirm has ended: each method's
    reported setting (`Choice.chosen`; a baseline at its paper setting under --paper-baselines)."""
    chosen = choice.chosen()  # a method none of whose candidates finished is not audited: it was never reported
    return [(m, chosen[m] if m in chosen else ctx.fixed_hparams(m)) for m in [STUDIED, *ctx.cfg.baselines]
            if m in chosen or (ctx.cfg.paper_baselines and m != STUDIED)]


def ulira_stages(ctx: StudyContext, choice: Choice, after: tuple[str, ...]) -> list:
    """U-LiRA's trials, on the audit's replicate (`AUDIT_REPLICATE`): models (seeds) 0..S-1 are the shadows and
    `TARGET_SEED`.. the T targets. Model j's original trains on the retain set and half the forget candidates
    (`trainables.audit.shadow_member_mask`) and its retrained model on the retain set (the replicate's own, so
    the privacy audit's retrained models serve both); both come from the bank, and need not wait for confirm.
    Once confirm has ended, model j of GLI's best setting and of each baseline's unlearns its half from its
    original. The original and the retrained model are attacked too: the attack's ceiling and its floor."""
    from trainables.audit import TARGET_SEED

    models = [*range(ctx.cfg.shadows), *range(TARGET_SEED, TARGET_SEED + ctx.cfg.targets)]
    here = {"replicate": AUDIT_REPLICATE}
    shadows = ctx.grid(ULIRA_STAGE, [{"method": m, "seed": j, "hparams": {}, **here} for j in models
                                     for m in REFERENCE_ROWS], label=f"{ULIRA_STAGE}-models")

    def unlearning_runs() -> list[dict]:
        return [{"method": m, "seed": j, "hparams": h, **here}
                for m, h in audited_settings(ctx, choice) for j in models]

    return [shadows, ctx.grid(ULIRA_STAGE, unlearning_runs, after, shadows)]


def headline(summary) -> dict:
    """The study's headline numbers for its parent run, per table row: report-split final score, accuracy and
    forgetting score (mean over seeds; GLI's row is its best confirmed setting), named `<method>/<metric>`."""
    if summary is None or not len(summary):
        return {}
    return {f"{r['method']}/{m}": r[m] for _, r in summary.iterrows()
            for m in ("final_score", "accuracy", "forgetting_score") if m in r and r[m] == r[m]}


def tuning_headline(path: Path) -> dict:
    """Each searched method's tuning card for its parent run: `<method>/tuning_trials` (finished) and
    `<method>/tuning_best` (the best selection final score its search reached)."""
    if not path.exists():
        return {}
    import pandas as pd

    cards = pd.read_csv(path)
    out = {f"{r['method']}/tuning_trials": float(r["finished"]) for _, r in cards.iterrows()}
    out.update({f"{r['method']}/tuning_best": float(r["best_sel_final_score"]) for _, r in cards.iterrows()
                if r["best_sel_final_score"] == r["best_sel_final_score"]})
    return out


def execute(cfg: StudyConfig, data, start: float, dashboard: bool = False) -> int:
    """One study, from Ray's start to the report: 0 when every stage ran, 1 when some stage failed whole, 2 for a
    setting or cluster problem, 3 when the tracking store stopped it, 130 when interrupted."""
    results = cfg.results_path
    key = study_key(cfg, data.fingerprint)
    if moved := supersede(results, key):
        print(f"[study] {results} held study {moved}'s report: moved to superseded/{moved}/", file=sys.stderr)
    write_resolved(cfg, results / "config.yaml", {"data_fingerprint": data.fingerprint, "study_key": key})
    prepared: dict = {}
    preparing = threading.Thread(target=_prepare, args=(cfg, prepared), daemon=True)
    preparing.start()
    try:
        resources, started_ray = connect(cfg, dashboard=dashboard)
    except ConfigError as exc:
        preparing.join()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    preparing.join()
    from analysis.report import StudyInfo, build_report
    from analysis.results import StudyRecords
    from trainables.metrics import PROTOCOL_LABEL

    from .context import StudyContext
    from .tracking import TrackingError, git_commit

    if "error" in prepared:
        if started_ray:
            _stop_ray()
        if isinstance(prepared["error"], TrackingError):
            print(f"error: {prepared['error']}", file=sys.stderr)
            return 2
        raise prepared["error"]
    tracker = prepared["tracker"]
    ctx = StudyContext(cfg, data, tracker, slots(cfg, resources), started=start, study_key=key)
    params = {**asdict(cfg), "data_fingerprint": data.fingerprint, "study_key": key}
    params[SETTINGS_PARAM] = ctx.settings.as_dict()  # model, base training and evaluation settings, for export
    tags = {"dataset": cfg.dataset, "protocol": cfg.protocol, "protocol_label": PROTOCOL_LABEL[cfg.protocol],
            "objective": cfg.objective, GIT_COMMIT_TAG: git_commit(), DATA_FINGERPRINT_TAG: data.fingerprint,
            "smoke_test": str(cfg.smoke_test), HARDWARE_TAG: json.dumps(engine.hardware(), sort_keys=True)}
    status = "FAILED"
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops cleanly, like Ctrl-C
    try:
        parent_id, resumed = tracker.start_parent(key, cfg.experiment_name, params, tags)
        if resumed and (stale := tracker.close_stale_children()):
            print(f"[study] {stale} trial(s) left running by the interrupted study marked KILLED", file=sys.stderr)
        if not resumed and (before := tracker.latest_other_parent(key)) is not None:
            other, old = before
            differ = changed_settings(old, params, [*keyed_settings(cfg), "data_fingerprint"])
            print(f"[study] a new study in experiment {cfg.experiment_name}: its settings differ from study "
                  f"{old.get('study_key') or other} ({'; '.join(differ) or 'the same settings, keyed by an earlier version'}); "
                  "none of its searches or runs is reused (base models come from the bank by content)", file=sys.stderr)
        print(f"[study] {'resuming' if resumed else 'starting'} {cfg.experiment_name} on {cfg.dataset} "
              f"({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs); study {key}, MLflow run "
              f"{parent_id}", file=sys.stderr)
        if capacity := search_capacity(cfg, ctx.slots):
            print(f"[study] {capacity}", file=sys.stderr)
        stages = run_study(ctx)
        tracker.flush()  # every trial's run written (and counted) before the report reads them
        failure = failed_stage_message(stages)
        if started_ray:  # the trials are over: Ray stops while the report is built
            stopping = threading.Thread(target=_stop_ray, daemon=True)
            stopping.start()
        info = StudyInfo.from_params({**asdict(cfg), "study_key": key})
        summary, front, written = build_report(StudyRecords(tracker.client, tracker.experiment_id, parent_id), info,
                                               results)
        tracker.log_parent_metrics({**headline(summary), **tuning_headline(results / "tuning.csv")})
        tracker.describe_parent((results / "summary.md").read_text())
        tracker.log_artifact(results / "config.yaml")
        for path in written:
            tracker.log_artifact(path, "summary")
        print_outcome(cfg, results, tracker, key, len(tracker.children(SEARCH_STAGE)), len(front),
                      time.time() - start)
        if failure:  # the report holds what did finish; the study as a whole did not
            print(f"error: {failure}", file=sys.stderr)
            return 1
        status = "FINISHED"
        return 0
    except KeyboardInterrupt:
        status = "KILLED"
        print("\n[study] interrupted: running trials stopped; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception:
        if tracker.writer.error is None:  # raised from inside Tune's loop, possibly wrapped
            raise
        print(f"error: {tracker.writer.error}", file=sys.stderr)
        return 3
    finally:
        if tracker.writer.error is None:
            tracker.end_parent(status)
        else:
            tracker.writer.abandon()  # nothing more can be written: its process ends now
        if started_ray:
            _stop_ray()
        tracker.checkpoint()  # mlflow.db alone then holds every run written


def _stop_ray() -> None:
    import ray

    with _RAY_STOP:  # once, whichever of the report thread and the exit path comes first
        if ray.is_initialized():
            ray.shutdown()


_RAY_STOP = threading.Lock()
