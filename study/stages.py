"""The study's stages, base, baseline, gli (Optuna) and confirm, each handing out trials when they can run.

A trial starts as soon as what it needs exists (a seed's baseline and GLI trials need
that seed's base models; the confirm stage needs the searches' results), so stages
share the slots instead of each waiting for the last one's tail. Every stage skips the
trials MLflow already holds as finished (by trial key), and the Optuna searches continue
from their journal file, so a rerun resumes a study rather than repeating it.
"""

from __future__ import annotations

import math
import statistics
import sys
import threading
import time
import warnings
from collections import deque

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from trainables.records import (AUDIT_STAGE, ERROR, FINAL, METHOD_COL, SEL_ACCURACY, SEL_FINAL, SEL_FORGETTING,
                                TRIAL_KEY_COL, TUNING_REPLICATE, ULIRA_STAGE, hparams_of, journal_path,
                                optuna_study_name, repair_journal)
from trainables.trial import TrialSpec

from . import internals
from .tracking import git_commit

optuna.logging.set_verbosity(optuna.logging.WARNING)

PROGRESS_EVERY_S = 2.0  # at most one progress line per stage in this time, but for failures and the last trial
ESTIMATE_AFTER = 3  # a stage's trials that must have ended before its time left is estimated
UNSCORED = (AUDIT_STAGE, ULIRA_STAGE)  # stages whose trials' selection final scores are not a goal: none in their lines
ESTIMATE_OVER = 12  # ... from the pace of its last this many (a stage may wait for slots at first)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

OBJECTIVES = {  # records.OBJECTIVES, as Optuna's metrics and modes
    "pareto": ([SEL_ACCURACY, SEL_FORGETTING], ["max", "min"]),
    "final_score": (SEL_FINAL, "max"),
}


def describe(study: optuna.Study, metric, attrs: dict) -> None:
    """Name the objectives (optuna-dashboard shows them instead of "Objective 0") and record what the
    search belongs to as study user attributes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(metric) if isinstance(metric, list) else [metric])
    for key, value in attrs.items():
        study.set_user_attr(key, value)


class StudySearch(OptunaSearch):
    """OptunaSearch that records errored trials and non-finite objectives as FAIL.

    The stock searcher tells Optuna COMPLETE whenever the last result holds the
    objectives, which an errored trial's intermediate report can; a diverged trial
    must never reach the front.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.user_attrs: dict[str, dict] = {}  # trial id -> what its Optuna trial records (set before it ends)

    def on_trial_complete(self, trial_id, result=None, error=False):
        trials, completed = internals.optuna_trials(self), internals.completed_trials(self)
        if trial_id in completed or trial_id not in trials:
            return
        for key, value in self.user_attrs.pop(trial_id, {}).items():
            if value is not None:
                trials[trial_id].set_user_attr(key, value)
        values = [(result or {}).get(m) for m in internals.objectives(self)]
        final = (result or {}).get(FINAL) == 1.0
        study = internals.optuna_study(self)
        if error or not final or any(v is None or not math.isfinite(v) for v in values):
            study.tell(trials[trial_id], None, state=TrialState.FAIL)
        else:
            study.tell(trials[trial_id], values if len(values) > 1 else values[0])
        completed.add(trial_id)


class Stage:
    """One stage of the study's single Tune run, handing out trial configs when they can run.

    A stage is activated once the stages named in `after` are complete (so it may be built
    from their results); activation decides how many trials are left to run. A trial of
    seed s waits for the trials of seed s of the stage it `needs` (the base models of that
    seed), not for a whole stage. A
    stage is complete when it has handed out all its trials and every one has ended.
    """

    def __init__(self, stage: str, label: str, after: tuple[str, ...] = (), needs: GridStage | None = None,
                 clock: float | None = None):
        self.stage, self.label, self.after = stage, label, tuple(after)
        self.needs = needs  # a trial of seed s waits until this stage's trials of seed s have ended
        self.active = False
        self.planned = self.issued = self.done = self.failed = 0
        self.live: dict[str, int] = {}  # trial id -> seed
        self.methods: dict[str, str] = {}  # trial id -> method, until the trial is done (progress lines)
        self.seconds: deque[float] = deque(maxlen=25)  # how long its last ended trials took (bundle sizes)
        self.printed = 0.0  # when the last progress line was printed
        self.first_error: str | None = None
        self.best, self.best_method = -math.inf, ""  # best selection final score so far, and whose
        self.scored = stage not in UNSCORED  # whether a best final score means anything in its progress lines
        self.clock = clock if clock is not None else time.time()  # the study's start: one clock for every line
        self.started = 0.0  # when this stage was activated
        self.ended_at: deque[float] = deque(maxlen=ESTIMATE_OVER)  # when its last trials were done (the estimate)

    @property
    def to_issue(self) -> int:
        """Trials the stage has yet to hand out (as planned at activation)."""
        return self.planned - self.issued

    def typical_seconds(self, after: int) -> float | None:
        """The median length of its last ended trials, once `after` of them have ended."""
        return statistics.median(self.seconds) if len(self.seconds) >= after else None

    @property
    def complete(self) -> bool:
        return self.active and self.issued >= self.planned and not self.live

    def activate(self) -> None:
        self.active, self.started = True, time.time()
        self.planned = self._plan()
        if self.planned:
            print(f"[study] stage {self.label}: {self.planned} trial(s)", file=sys.stderr, flush=True)

    def take(self, trial_id: str) -> dict | None:
        """Step 0 of a trial's life: the stage hands it out (a trial config), or None when none can start now."""
        given = self._suggest(trial_id) if self.issued < self.planned else None
        if given is None:
            return None
        config, seed = given
        self.issued += 1
        self.live[trial_id] = seed
        self.methods[trial_id] = config["method"]
        return config

    def ready(self, seed: int) -> bool:
        return self.needs is None or self.needs.seed_done(seed)

    def ended(self, trial_id: str, result: dict | None, error: bool, seconds: float | None = None) -> bool:
        """Step 1 (Tune's thread, as Tune reports the trial's end): its slot is free, `seconds` (how long it
        ran) joins the stage's typical length. True when the stage has completed."""
        if trial_id not in self.live:
            return False
        self.live.pop(trial_id)
        if not error and seconds is not None and math.isfinite(seconds):
            self.seconds.append(float(seconds))
        return self.complete

    def recorded(self, trial, ok: bool, run_id: str | None = None) -> None:
        """Step 2 (the tracking writer's thread, once the trial's MLflow run `run_id` is in the store): the
        stage counts it done and prints progress; a search stage first tells Optuna."""
        self.done += 1
        self.failed += not ok
        if not ok and self.first_error is None:
            reason = (trial.last_result or {}).get(ERROR) or getattr(trial, "error_msg", None) or "no final report"
            self.first_error = str(reason).strip().splitlines()[-1][:300]
        result, now = trial.last_result or {}, time.time()
        self.ended_at.append(now)
        self._better(result.get(SEL_FINAL, -math.inf) if ok else -math.inf, self.methods.pop(trial.trial_id, ""))
        if ok and self.done < self.planned and now - self.printed < PROGRESS_EVERY_S:
            return  # many short trials: a line every few seconds, not one per trial
        self.printed = now
        print(f"[study] {self.progress(now)}", file=sys.stderr, flush=True)

    def _better(self, score, method: str) -> None:
        if isinstance(score, (int, float)) and math.isfinite(score) and score > self.best:
            self.best, self.best_method = float(score), method

    def progress(self, now: float) -> str:
        """The stage's progress line: trials done, the best so far (whose, on which split), time left."""
        failed = f" ({self.failed} failed)" if self.failed else ""
        best = (f"; best final score on the selection split {self.best:.4f} ({self.best_method})"
                if self.scored and math.isfinite(self.best) else "")
        left, ended = self.planned - self.done, self.ended_at
        eta = ""
        if 0 < left and len(ended) >= ESTIMATE_AFTER and ended[-1] > ended[0]:  # its trials' recent pace is known
            eta = f"; about {_duration(left * (ended[-1] - ended[0]) / (len(ended) - 1))} left"
        return f"{self.label}: {self.done}/{self.planned} done{failed}{best}{eta} [{_duration(now - self.clock)}]"

    def resume_best(self, finished) -> None:
        """The best so far includes the stage's trials that an earlier run of the study finished
        (`finished`: their rows, as `Tracker.children` reads them)."""
        if finished is not None and len(finished) and SEL_FINAL in finished:
            i = finished[SEL_FINAL].astype(float).idxmax()
            self._better(float(finished.loc[i, SEL_FINAL]), str(finished.loc[i].get(METHOD_COL, "")))

    @property
    def all_failed(self) -> bool:
        return self.done > 0 and self.failed == self.done

    def _plan(self) -> int:
        raise NotImplementedError

    def _suggest(self, trial_id: str) -> tuple[dict, int] | None:
        raise NotImplementedError


class GridStage(Stage):
    """One trial per {method, seed, hparams} entry, skipping those MLflow holds as finished.

    `runs` may be a function, called on activation: the confirm stage's settings exist
    only once the searches have ended.
    """

    def __init__(self, ctx, stage: str, runs, after: tuple[str, ...] = (), needs: GridStage | None = None,
                 label: str | None = None):
        super().__init__(stage, label or stage, after, needs, getattr(ctx, "started", None))
        self.ctx, self.runs, self.pending = ctx, runs, []

    def _plan(self) -> int:
        runs = self.runs() if callable(self.runs) else self.runs
        finished = self.ctx.tracker.children(self.stage)
        done = set(finished[TRIAL_KEY_COL]) if len(finished) else set()
        keys = [self.ctx.key(self.stage, r["method"], r["seed"], r["hparams"], r.get("replicate")) for r in runs]
        self.pending = [r for r, key in zip(runs, keys) if key not in done]
        if len(finished):
            self.resume_best(finished[finished[TRIAL_KEY_COL].isin(keys)])
        if len(self.pending) < len(runs):
            print(f"[study] stage {self.label}: {len(runs) - len(self.pending)} of {len(runs)} trial(s) already finished",
                  file=sys.stderr, flush=True)
        return len(self.pending)

    def _suggest(self, trial_id: str) -> tuple[dict, int] | None:
        for i, run in enumerate(self.pending):
            if self.ready(run["seed"]):
                del self.pending[i]
                spec = TrialSpec(self.stage, run["method"], run["seed"], run["hparams"], replicate=run.get("replicate"))
                return spec.config(), run["seed"]
        return None

    def seed_done(self, seed: int) -> bool:
        """Every trial of `seed` has ended (the base models of that seed exist)."""
        return (self.active and all(r["seed"] != seed for r in self.pending)
                and seed not in self.live.values())


class SearchStage(Stage):
    """An Optuna search for one method on the tuning replicate (never reported), resumable from the journal file.

    With `search_batch` B > 0 (the study's setting) the search asks Optuna for B settings at once and
    asks again only when all B have ended and Optuna has been told of each: every proposal is then
    made from the same finished trials, whatever order they ended in, so a seeded search proposes
    the same settings on every run (the cost: at most B trials of one search run at a time, and a
    batch's last trial holds up the next; other stages fill the slots meanwhile). With 0, a setting
    is asked for whenever a slot is free, from whichever trials have ended by then.
    """

    def __init__(self, ctx, stage: str, method: str, space, point: dict | None, budget: int,
                 after: tuple[str, ...] = (), needs: GridStage | None = None):
        super().__init__(stage, stage if stage == method else f"{stage}-{method}", after, needs,
                         getattr(ctx, "started", None))
        self.ctx, self.method, self.space, self.point, self.budget = ctx, method, space, point, budget
        self.attrs: dict[str, dict] = {}  # trial id -> its Optuna trial's user attributes, as they become known
        self.study: optuna.Study | None = None
        self.searcher: StudySearch | None = None
        # Optuna hears of a trial's end only once its MLflow run is written, so the two agree one to
        # one: a trial whose run was lost (a crash, a tracking outage past its limit) stays RUNNING in
        # the journal and is closed as interrupted on resume, its budget given back.
        self.untold: dict[str, tuple[dict | None, bool]] = {}
        self.written_ids: set[str] = set()
        self.lock = threading.Lock()  # the searcher is told from the tracking writer's thread
        self.batch = int(getattr(ctx.cfg, "search_batch", 0) or 0)
        self.ahead: deque[tuple[str, dict]] = deque()  # the batch's settings not yet handed out (placeholder id)

    def _plan(self) -> int:
        cfg = self.ctx.cfg
        metric, mode = OBJECTIVES[cfg.objective]
        journal = journal_path(cfg.results_dir, self.ctx.study_key)
        if dropped := repair_journal(journal):
            print(f"[study] {journal}: dropped a torn last line ({dropped} bytes, a write cut short by a crash)",
                  file=sys.stderr, flush=True)
        storage = JournalStorage(JournalFileBackend(str(journal)))
        study_name = optuna_study_name(cfg.experiment_name, self.method, cfg.protocol, cfg.objective, self.ctx.study_key)
        directions = ["maximize", "minimize"] if isinstance(mode, list) else ["maximize"]
        study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True, directions=directions)
        self.study = study
        if not study.user_attrs:  # what optuna-dashboard shows beside the front, written once
            describe(study, metric, {"experiment": cfg.experiment_name, "method": self.method, "dataset": cfg.dataset,
                                     "protocol": cfg.protocol, "objective": cfg.objective, "study_key": self.ctx.study_key,
                                     "git_commit": git_commit()})
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # Left behind by a killed study: it will never report. Closed as failed, marked so that
            # it does not use up the budget (its setting may be drawn again).
            storage.set_trial_system_attr(internals.storage_id(t), "interrupted", True)
            storage.set_trial_state_values(internals.storage_id(t), TrialState.FAIL)
        finished = len([t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
                        if not t.system_attrs.get("interrupted")])
        if finished:
            earlier = self.ctx.tracker.children(self.stage)
            if len(earlier):
                self.resume_best(earlier[earlier[METHOD_COL] == self.method])
        remaining = self.budget - finished
        if remaining <= 0:
            print(f"[study] stage {self.stage} ({self.method}): all {self.budget} trials already in the Optuna study",
                  file=sys.stderr, flush=True)
            return 0
        self.searcher = StudySearch(
            space=self.space, metric=metric, mode=mode, study_name=study_name, storage=storage,
            sampler=optuna.samplers.TPESampler(seed=cfg.sampler_seed + finished),
            points_to_evaluate=[self.point] if self.point and not study.trials else None,  # enqueued once, ever
        )
        return remaining

    def _ask_batch(self) -> None:
        """The next batch's settings, asked once every trial of the last one has ended and Optuna has heard of
        each (their runs written: step 2 of a trial's end, waited for here if it is still on its way)."""
        if self.untold:
            self.ctx.tracker.flush()
        with self.lock:
            for i in range(min(self.batch, self.to_issue)):
                placeholder = f"{self.label}-ahead-{self.issued + i}"
                params = self.searcher.suggest(placeholder)
                if params is None or params == Searcher.FINISHED:
                    break
                self.ahead.append((placeholder, params))

    def _next_setting(self, trial_id: str):
        if not self.batch:
            with self.lock:
                return self.searcher.suggest(trial_id)
        if not self.ahead:
            if self.live:  # the batch's trials are still running: the next batch waits for all of them
                return None
            self._ask_batch()
            if not self.ahead:
                return Searcher.FINISHED
        placeholder, params = self.ahead.popleft()
        with self.lock:
            internals.rename_trial(self.searcher, placeholder, trial_id)
        return params

    def _suggest(self, trial_id: str) -> tuple[dict, int] | None:
        if not self.ready(TUNING_REPLICATE):
            return None
        params = self._next_setting(trial_id)
        if params is None and self.batch:
            return None  # a batch still running
        if params is None or params == Searcher.FINISHED:
            if not self.live:
                self.planned = self.issued  # nothing running and nothing more to give: never wait forever
            return None
        hparams = {**self.ctx.fixed_hparams(self.method), **params}  # the suggestion goes into hparams
        paper = bool(self.point) and set(params) == set(self.point) and all(
            math.isclose(float(params[k]), float(self.point[k]), rel_tol=1e-9) for k in params)
        self.attrs[trial_id] = {"seed": TUNING_REPLICATE, "setting": "paper" if paper else "searched"}
        return TrialSpec(self.stage, self.method, TUNING_REPLICATE, hparams).config(), TUNING_REPLICATE

    def on_result(self, trial_id: str, result: dict) -> None:
        with self.lock:
            self.searcher.on_trial_result(trial_id, result)

    def ended(self, trial_id: str, result: dict | None, error: bool, seconds: float | None = None) -> bool:
        if trial_id not in self.live:  # not this stage's running trial (already ended): Optuna hears nothing twice
            return False
        wake = super().ended(trial_id, result, error, seconds)
        # a batch's last trial: the next batch can be asked for (wait trials woken)
        wake |= bool(self.batch) and not self.live and not self.ahead and self.to_issue > 0
        with self.lock:
            score = (result or {}).get(SEL_FINAL)
            self.attrs.setdefault(trial_id, {})["final_score"] = (
                float(score) if isinstance(score, (int, float)) and math.isfinite(score) else None)
            if trial_id in self.written_ids:
                self._tell(trial_id, result, error)
            else:
                self.untold[trial_id] = (result, error)
        return wake

    def __getstate__(self) -> dict:  # Tune pickles its searcher; a lock does not travel
        return {**self.__dict__, "lock": None}

    def recorded(self, trial, ok: bool, run_id: str | None = None) -> None:
        """Optuna hears of the trial's end here, once its run is written (steps 1 and 2 come on two threads,
        in either order: whichever comes second tells Optuna); then the progress line."""
        trial_id = trial.trial_id
        with self.lock:
            self.attrs.setdefault(trial_id, {})["mlflow_run_id"] = run_id
            if trial_id in self.untold:
                self._tell(trial_id, *self.untold.pop(trial_id))
            else:
                self.written_ids.add(trial_id)
        super().recorded(trial, ok, run_id)

    def _tell(self, trial_id: str, result: dict | None, error: bool) -> None:
        """Optuna hears of the trial's end, with what leads from it to the rest of the study: its seed, its
        MLflow run, its selection final score and whether it is the paper's setting."""
        self.written_ids.discard(trial_id)
        self.searcher.user_attrs[trial_id] = self.attrs.pop(trial_id, {})
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def candidates(self, k: int) -> list[dict]:
        """The search's k candidates (`analysis.choice.candidates`, the one source every reader uses): read from
        its finished trials' MLflow runs, its front first, best selection final score first; each as the
        searched hyper-parameters."""
        from analysis.choice import candidates

        trials = self.ctx.tracker.children(self.stage)  # flushes first when anything was written since its last read
        if len(trials):
            trials = trials[trials[METHOD_COL] == self.method]
        names = list(self.space.fields)
        out = []
        for _, row in candidates(trials, self.ctx.cfg.objective, k).iterrows():
            hparams = hparams_of(row)
            if missing := [k for k in names if k not in hparams]:
                raise KeyError(f"{self.label}: run {row['run_id']} records no {', '.join(missing)}")
            out.append({k: hparams[k] for k in names})
        return out
