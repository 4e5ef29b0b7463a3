"""`python -m study.launch`: the GLI unlearning study on a Ray cluster, tracked in MLflow.

A replicate r is a split seed and a training seed together (r and r). Replicate 0 tunes:
every search runs on it and it is never reported; replicates 1..N are reported. Stages:
base (original and retrained models per replicate), baseline (an Optuna search per
baseline with GLI's budget under --protocol fair; each baseline's paper setting per
reported replicate under paper or with --paper-baselines), gli (Optuna over step size,
iteration count and guidance strength), confirm (the chosen settings over every reported
replicate), all in one Tune run: a replicate's trials start once its base models exist.
With no flags it runs the whole study on digits on the local CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from dataclasses import asdict
from typing import TYPE_CHECKING

from trainables import engine
from trainables.data import DataConfig, DataError, load_dataset
from trainables.data.folder import FASHION_SIZES
from trainables.methods import REFERENCE_ROWS
from trainables.methods.interface import PROTOCOLS
from trainables.records import (AUDIT_STAGE, OBJECTIVES, BASE_STAGE, BASELINE_STAGE, CONFIRM_LIMIT, CONFIRM_STAGE,
                                DATA_FINGERPRINT_TAG, GIT_COMMIT_TAG, HARDWARE_TAG, SEARCH_STAGE, SETTINGS_PARAM,
                                STUDIED, TUNING_REPLICATE, AUDIT_REPLICATE, ULIRA_STAGE, journal_path)

AUDIT_SETTINGS = 3  # GLI's confirmed settings audited, best mean selection final score first
ULIRA_SETTINGS = 1  # ... and attacked with U-LiRA (each costs shadows + targets unlearning runs)

from .cluster import connect, preflight, slots
from .config import FIELDS, PLACEMENT, ConfigError, StudyConfig, data_config, load_yaml, resolve, write_resolved
from .spaces import SearchSpace, paper_point

if TYPE_CHECKING:
    from .plan import StudyContext

# MLflow, Optuna, Tune's search and the figures are imported by `_prepare`, on a thread
# that runs while Ray starts: both take seconds, and a study is often only minutes.

os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C reaches the launcher, which stops cleanly



EXAMPLES = """examples:
  the whole study on digits, on this machine's CPUs:
    python -m study.launch
  the whole path, small and quick:
    python -m study.launch --smoke-test
  MUFAC on 8 GPUs, two trials sharing each GPU:
    python -m study.launch --dataset mufac --data-dir /data/mufac --num-gpus 8

Rerunning the same command resumes the study. README.md says what every setting does."""


class _Help(argparse.RawDescriptionHelpFormatter):
    """The examples as written; each flag's declared default once, from `StudyConfig` (see `_flag`)."""


def _declared(name: str):
    """The default `StudyConfig` declares for setting `name`, or None where it is derived or unset."""
    f = FIELDS.get(name)
    if f is None:
        return None
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _flag(group, flag: str, help: str, **kwargs) -> None:
    """A flag whose help ends with its setting's declared default (one default, stated once: argparse's own
    default stays None, so that a flag overrides the YAML file only when given)."""
    name = flag.lstrip("-").replace("-", "_")
    default = _declared(name)
    if default is not None and default is not False and default not in ([], {}) and kwargs.get("action") != "store_true":
        help = f"{help} (default: {default:g})" if isinstance(default, float) else f"{help} (default: {default})"
    group.add_argument(flag, help=help, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m study.launch", description=__doc__.split("\n\n")[0],
                                formatter_class=_Help, epilog=EXAMPLES)
    p.add_argument("--config", help="YAML file of settings (names as below, with _ or -); flags override it")
    g = p.add_argument_group("data")
    _flag(g, "--dataset", "digits (embedded), fashion-mnist, mufac, mucac, mucac-binary or folder")
    _flag(g, "--data-dir", "the data folder (mufac, mucac, folder; fashion-mnist: default the Debian package's)")
    _flag(g, "--forget-count", "forget-set size (digits, mufac, fashion-mnist)", type=int)
    data = DataConfig()  # the data settings' declared defaults
    for split in ("train", "unseen", "test"):
        _flag(g, f"--{split}-count", f"fashion-mnist: {split} images (default: {FASHION_SIZES[split]:,})", type=int)
    _flag(g, "--image-size", f"decode face images at this size (default: {data.image_size}), for small CPU runs",
          type=int)
    _flag(g, "--attribute", f"mucac-binary: the attribute predicted as two classes (default: {data.attribute})")
    g = p.add_argument_group("protocol and evaluation")
    _flag(g, "--protocol", "fair: the notebooks' loops with one honest selection rule; paper: the notebooks step "
          "for step", choices=PROTOCOLS)
    g.add_argument("--selection", choices=["val", "test"], help=argparse.SUPPRESS)  # deprecated alias of --protocol
    _flag(g, "--replicates", "reported replicates, each its own split and training seed (a tuning replicate, "
          "never reported, comes on top)", type=int)
    g.add_argument("--seeds", type=int, help=argparse.SUPPRESS)  # deprecated name of --replicates
    _flag(g, "--until-settled", "after --replicates, add rounds of replicates until every GLI-minus-baseline "
          "comparison is settled (better, worse or equivalent, with its error rate spent over the planned looks "
          "and Holm across comparisons) or --max-replicates are reported", action="store_true", default=None)
    _flag(g, "--max-replicates", "with --until-settled: stop after this many reported replicates", type=int)
    _flag(g, "--margin", "a comparison whose interval lies within +-margin is equivalent", type=float)
    _flag(g, "--round-size", "with --until-settled: replicates per round (default: as many as fill the free "
          "slots)", type=int)
    _flag(g, "--width", "use the width-reduced ResNet-18 at this width (small CPU runs)", type=int)
    _flag(g, "--base-epochs", "train the base models for this many epochs (default: the data set's recipe)", type=int)
    _flag(g, "--eval-every", "steps between evaluations inside a trial (default: about 10 per epoch, at most about 20 per run)", type=int)
    _flag(g, "--patience", "evaluations without improvement before a trial stops (default: none)", type=int)
    _flag(g, "--bootstrap", "resamples behind fs_se at the chosen checkpoint, the forgetting score's standard error "
          "(0: none, faster)", type=int)
    _flag(g, "--audit", "after confirm, audit GLI's best settings, each baseline and the original with K unlearning "
          "runs each against K retrained models (the unlearning challenge's forgetting quality; 0: no audit)",
          type=int, metavar="K")
    _flag(g, "--audit-ceiling", "F's ceiling: measured from K more retrained models, or simulated from identical "
          "score distributions at the same K and size (no training; labelled so)", choices=["retrained", "simulated"])
    _flag(g, "--attack", "after confirm, U-LiRA: per-example likelihood-ratio attacks on GLI's best setting, each "
          "baseline's, the original and the retrained model, from shadow models that forgot or never saw each "
          "forget example", choices=["ulira"])
    _flag(g, "--shadows", "with --attack ulira: shadow models per audited setting (even)", type=int)
    _flag(g, "--targets", "with --attack ulira: held-out target models per audited setting (even)", type=int)
    _flag(g, "--deterministic", "GPU trials that repeat bit for bit on the same GPU, driver and libraries: fp32, "
          "deterministic kernels, no CUDA graphs (slower; CPU runs repeat without it)", action="store_true", default=None)
    g = p.add_argument_group("search")
    _flag(g, "--budget", "Optuna trials per searched method: GLI, and under --protocol fair every baseline", type=int)
    g.add_argument("--gli-trials", type=int, help=argparse.SUPPRESS)  # deprecated name of --budget
    _flag(g, "--objective", "pareto: accuracy vs forgetting score; or one scalar", choices=OBJECTIVES)
    _flag(g, "--paper-baselines", "run the baselines at their paper settings instead of searching them with the "
          "budget (default: under --protocol paper only; the rows are labelled so)",
          action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--tune-baselines", action="store_true", default=None, help=argparse.SUPPRESS)  # deprecated
    _flag(g, "--sampler-seed", "seed of Optuna's sampler", type=int)
    _flag(g, "--search-batch", "settings each search asks for at once, asking again once all have ended: the "
          "same command then proposes the same settings whatever order trials end in (0: ask as slots free, "
          "faster with many slots, not repeatable)", type=int)
    g = p.add_argument_group("cluster")
    _flag(g, "--num-gpus", "GPUs the study uses (0: CPU only)", type=float)
    _flag(g, "--num-cpus", "CPUs of the local Ray instance (default: all cores)", type=int)
    _flag(g, "--gpus-per-trial", "GPU share of one trial; fractions let small trials share a GPU", type=float)
    _flag(g, "--cpus-per-trial", "CPU share of one trial", type=float)
    _flag(g, "--address", "join this running Ray cluster (e.g. ray://head:10001 or auto) instead of starting one")
    _flag(g, "--storage-path", "Ray storage shared by all nodes (default: <results>/ray); a shared path for multi-node")
    _flag(g, "--allow-cpu", "let --num-gpus run on the CPU (logical GPUs)", action="store_true", default=None)
    _flag(g, "--max-failures", "retries of a trial whose worker died", type=int)
    _flag(g, "--dashboard", "start Ray's dashboard on the local instance (off by default)", action="store_true")
    g = p.add_argument_group("tracking and results")
    _flag(g, "--results-dir", "where results go (default: ./results/<experiment>)")
    _flag(g, "--experiment-name", "MLflow experiment and results folder name (default: gli-<dataset>)")
    _flag(g, "--tracking-uri", "MLflow tracking URI (default: sqlite:///<results>/mlflow.db)")
    _flag(g, "--tracking-outage", "seconds the tracking store may stay unreachable, writes queued and retried, "
          "before the study stops (a rerun resumes)", type=float)
    g = p.add_argument_group("advanced")
    _flag(g, "--smoke-test", "the whole path, small and quick", action="store_true", default=None)
    _flag(g, "--bundle-seconds", "when a stage's trials take less than half this, run as many as fill it in one Ray "
          "Tune trial, so that the driver keeps up with many short trials (0: never)", type=float)
    return p


def study_key(cfg: StudyConfig, fingerprint: str) -> str:
    what = {k: v for k, v in asdict(cfg).items() if k not in PLACEMENT}
    return hashlib.sha256(json.dumps([what, fingerprint], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _setup(argv: list[str] | None):
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k in FIELDS}
    cfg = resolve(load_yaml(args.config) if args.config else {}, flags)
    preflight(cfg)
    data = load_dataset(data_config(cfg))
    from trainables.metrics import split_size_problem

    if problem := split_size_problem(data, cfg.protocol):
        raise DataError(problem)
    return args, cfg, data


def _prepare(cfg: StudyConfig, out: dict) -> None:
    """The tracking store and the driver's remaining imports (run on a thread while Ray starts)."""
    try:
        for module in ("analysis.report", "study.plan"):  # matplotlib, pandas; Tune's search, Optuna
            importlib.import_module(module)
        from .tracking import Tracker

        out["tracker"] = Tracker(cfg.tracking_uri, cfg.experiment_name, cfg.results_path / "artifacts",
                                 cfg.tracking_outage)
    except BaseException as exc:  # handed to the main thread
        out["error"] = exc


def run_study(ctx: StudyContext) -> list:
    """Base models first; each replicate's trials as soon as its base models exist; the searches (on the tuning
    replicate, never reported) before the baselines (they fill the slots while the searches' last trials run);
    confirm, on the reported replicates 1..N, once the searches end."""
    cfg = ctx.cfg
    seeds = list(range(TUNING_REPLICATE + 1, TUNING_REPLICATE + 1 + cfg.replicates))  # the reported replicates
    base = ctx.grid(BASE_STAGE, [{"method": m, "seed": s, "hparams": {}} for s in [TUNING_REPLICATE, *seeds]
                                 for m in REFERENCE_ROWS])
    needs = base  # a replicate's trials wait for its base models
    searches = [ctx.search(SEARCH_STAGE, STUDIED, SearchSpace(STUDIED, cfg.gli_space),
                           paper_point(STUDIED, cfg.dataset, cfg.gli_space),
                           cfg.budget, needs)]
    if not cfg.paper_baselines:  # every baseline searched with GLI's budget
        searches += [ctx.search(BASELINE_STAGE, m, SearchSpace(m), paper_point(m, cfg.dataset), cfg.budget, needs)
                     for m in cfg.baselines]
    grid = [] if not cfg.paper_baselines else [
        ctx.grid(BASELINE_STAGE, [{"method": m, "seed": s, "hparams": ctx.fixed_hparams(m)}
                              for s in seeds for m in cfg.baselines], needs=needs)]

    def confirm_runs(replicates=tuple(seeds)) -> list[dict]:  # once the searches have ended, from their studies
        runs = []
        for search in searches:
            limit = CONFIRM_LIMIT if search.method == STUDIED else 1
            runs += [{"method": search.method, "seed": s, "hparams": {**ctx.fixed_hparams(search.method), **chosen}}
                     for chosen in search.chosen(limit) for s in replicates]
        return runs

    confirm = ctx.grid(CONFIRM_STAGE, confirm_runs, tuple(s.label for s in searches), needs)
    rounds = settling_rounds(ctx, confirm_runs, (confirm.label, *(g.label for g in grid))) if cfg.until_settled else []
    after_confirm = (CONFIRM_STAGE, *(r.label for r in rounds))
    audit = [ctx.grid(AUDIT_STAGE, lambda: audit_runs(ctx, searches), after_confirm)] if cfg.audit else []
    stages = [base, *searches, confirm, *grid, *rounds, *audit, *(ulira_stages(ctx, searches, after_confirm)
                                                                  if cfg.attack == "ulira" else [])]
    ctx.run(stages)
    return stages


def round_size(cfg: StudyConfig, slots: int) -> int:
    """Replicates per round of `--until-settled`: as many as fill the free slots (a replicate's trials: its two
    base models, every baseline's setting and GLI's confirmed ones), at least one."""
    if cfg.round_size:
        return int(cfg.round_size)
    return max(1, slots // (len(REFERENCE_ROWS) + len(cfg.baselines) + CONFIRM_LIMIT))


def settling_rounds(ctx: StudyContext, confirm_runs, after: tuple[str, ...]) -> list:
    """The rounds of `--until-settled`, planned up to `--max-replicates`: each adds the next replicates' base
    models, confirm runs (and paper-setting baselines) once the previous round has ended, unless every
    GLI-minus-baseline comparison is already settled (`analysis.sequential`); then it and the rest are empty."""
    from analysis.report import method_rows
    from analysis.sequential import all_settled, look_sizes, settle

    cfg = ctx.cfg
    step = round_size(cfg, ctx.slots)
    sizes = look_sizes(cfg.replicates, cfg.max_replicates, step)
    decided: dict[int, bool] = {}

    def more(have: int) -> bool:
        """Whether the study goes on after `have` reported replicates (decided once per round, from MLflow: reading
        the children flushes the writer first, so every ended trial's run is there)."""
        if have not in decided:
            rows = method_rows(ctx.tracker.children(), cfg.paper_baselines)
            verdicts = settle(rows, cfg.replicates, cfg.max_replicates, step, cfg.margin)
            decided[have] = not all_settled(verdicts)
            if not decided[have]:
                print(f"[study] every comparison settled after {have} replicates", file=sys.stderr, flush=True)
        return decided[have]

    stages, previous = [], after
    for number, (have, size) in enumerate(zip(sizes, sizes[1:]), start=1):
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


def audit_runs(ctx: StudyContext, searches) -> list[dict]:
    """The audit's trials, built once confirm has ended, all on one reported replicate's split
    (`AUDIT_REPLICATE`): 2K retrained models (seeds 0..K-1 are the reference; K..2K-1 measure F's ceiling, F
    between two independent sets of K retrained models), the original as a control, and K runs (training seeds
    0..K-1, all from that replicate's original) of GLI's best confirmed settings and of each baseline's chosen
    setting."""
    k = ctx.cfg.audit
    here = {"replicate": AUDIT_REPLICATE}
    retrained = 2 * k if ctx.cfg.audit_ceiling == "retrained" else k  # simulated: no second set to train
    runs = [{"method": "retrain", "seed": s, "hparams": {}, **here} for s in range(retrained)]
    runs.append({"method": "original", "seed": AUDIT_REPLICATE, "hparams": {}, **here})  # one run stands for all K
    settings = audited_settings(ctx, searches, AUDIT_SETTINGS)
    return runs + [{"method": m, "seed": s, "hparams": h, **here} for m, h in settings for s in range(k)]


def audited_settings(ctx: StudyContext, searches, gli_settings: int) -> list[tuple[str, dict]]:
    """(method, hyper-parameters) of what the privacy audits examine, once confirm has ended: GLI's
    `gli_settings` best confirmed settings (mean selection final score) and each baseline's chosen setting."""
    from trainables.records import METHOD_COL, SEL_FINAL, TRIAL_KEY_COL, hparams_of, setting_of

    settings = []
    confirmed = ctx.tracker.children(CONFIRM_STAGE)
    if len(confirmed):
        gli = confirmed[confirmed[METHOD_COL] == STUDIED].copy()
        gli["setting"] = gli[TRIAL_KEY_COL].map(setting_of)
        best = gli.groupby("setting")[SEL_FINAL].mean().sort_values(ascending=False).head(gli_settings)
        settings += [(STUDIED, hparams_of(gli[gli["setting"] == s].iloc[0])) for s in best.index]
    tuned = {s.method: s for s in searches[1:]}
    for method in ctx.cfg.baselines:
        chosen = tuned[method].chosen(1) if method in tuned else [{}]
        settings += [(method, {**ctx.fixed_hparams(method), **c}) for c in chosen[:1]]
    return settings


def ulira_stages(ctx: StudyContext, searches, after: tuple[str, ...]) -> list:
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
                for m, h in audited_settings(ctx, searches, ULIRA_SETTINGS) for j in models]

    return [shadows, ctx.grid(ULIRA_STAGE, unlearning_runs, after, shadows)]


def main(argv: list[str] | None = None) -> int:
    start = time.time()
    try:
        args, cfg, data = _setup(argv)
    except (ConfigError, DataError, KeyError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    results = cfg.results_path
    write_resolved(cfg, results / "config.yaml", {"data_fingerprint": data.fingerprint})
    prepared: dict = {}
    preparing = threading.Thread(target=_prepare, args=(cfg, prepared), daemon=True)
    preparing.start()
    try:
        resources, started_ray = connect(cfg, dashboard=args.dashboard)
    except ConfigError as exc:
        preparing.join()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    preparing.join()
    from analysis.report import StudyInfo, build_report
    from analysis.results import StudyRecords
    from trainables.metrics import PROTOCOL_LABEL

    from .plan import StudyContext
    from .tracking import TrackingError, git_commit, runs_link

    if "error" in prepared:
        if started_ray:
            _stop_ray()
        if isinstance(prepared["error"], TrackingError):
            print(f"error: {prepared['error']}", file=sys.stderr)
            return 2
        raise prepared["error"]
    tracker = prepared["tracker"]
    protocol = PROTOCOL_LABEL[cfg.protocol]
    ctx = StudyContext(cfg, data, tracker, slots(cfg, resources), started=start)
    if cfg.until_settled and cfg.round_size is None:  # what the slots give, recorded with the study's settings
        cfg.round_size = round_size(cfg, ctx.slots)
        write_resolved(cfg, results / "config.yaml", {"data_fingerprint": data.fingerprint})
    params = {**asdict(cfg), "data_fingerprint": data.fingerprint}
    params[SETTINGS_PARAM] = ctx.settings.as_dict()  # model, base training and evaluation settings, for export
    tags = {"dataset": cfg.dataset, "protocol": cfg.protocol, "protocol_label": protocol,
            "objective": cfg.objective, GIT_COMMIT_TAG: git_commit(), DATA_FINGERPRINT_TAG: data.fingerprint,
            "smoke_test": str(cfg.smoke_test), HARDWARE_TAG: json.dumps(engine.hardware(), sort_keys=True)}
    status = "FAILED"
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops cleanly, like Ctrl-C
    try:
        parent_id, resumed = tracker.start_parent(study_key(cfg, data.fingerprint), cfg.experiment_name, params, tags)
        if resumed and (stale := tracker.close_stale_children()):
            print(f"[study] {stale} trial(s) left running by the interrupted study marked KILLED", file=sys.stderr)
        print(f"[study] {'resuming' if resumed else 'starting'} {cfg.experiment_name} on {cfg.dataset} "
              f"({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs); MLflow run {parent_id}",
              file=sys.stderr)
        stages = run_study(ctx)
        tracker.flush()  # every trial's run written (and counted) before the report reads them
        failure = failed_stage_message(stages)
        if started_ray:  # the trials are over: Ray stops while the report is built
            stopping = threading.Thread(target=_stop_ray, daemon=True)
            stopping.start()
        info = StudyInfo.from_params(asdict(cfg))
        summary, front, written = build_report(StudyRecords(tracker.client, tracker.experiment_id, parent_id), info,
                                               results)
        tracker.log_parent_metrics({**headline(summary), **tuning_headline(results / "tuning.csv")})
        tracker.describe_parent((results / "summary.md").read_text())
        tracker.log_artifact(results / "config.yaml")
        for path in written:
            tracker.log_artifact(path, "summary")
        print((results / "summary.md").read_text())  # the table, and GLI against each baseline seed by seed
        print(f"GLI: {len(tracker.children(SEARCH_STAGE))} trials finished, {len(front)} setting(s) confirmed "
              f"(front.csv, front.png). Wall time {time.time() - start:.0f}s.")
        print(f"Results: {results}\nMLflow:  {cfg.tracking_uri} (experiment {cfg.experiment_name})")
        if cfg.tracking_uri.startswith(("http://", "https://")):
            print(f"Browse:  {runs_link(cfg.tracking_uri, tracker.experiment_id)}")
        else:
            print(f"Browse:  mlflow ui --backend-store-uri {cfg.tracking_uri} --host 127.0.0.1 --port 5000\n"
                  f"         then open {runs_link(cfg.tracking_uri, tracker.experiment_id)}")
        print(f"Search:  optuna-dashboard {journal_path(results)}   (pip install optuna-dashboard)")
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


def _stop_ray() -> None:
    import ray

    with _RAY_STOP:  # once, whichever of the report thread and the exit path comes first
        if ray.is_initialized():
            ray.shutdown()


_RAY_STOP = threading.Lock()


def _exit(code: int) -> None:
    """Exit without the interpreter's slow teardown of PyTorch, Ray and MLflow (seconds, once
    everything is written): the tracking runs are closed and Ray is stopped by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
