"""`python -m study.launch`: the GLI unlearning study on a Ray cluster, tracked in MLflow.

Stages: base (original and retrained models per seed), baseline (every baseline per
seed, or an Optuna search each with --tune-baselines), gli (Optuna over step size,
iteration count and guidance strength), confirm (the chosen settings over every seed).
With no flags it runs the whole study on digits on the local CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from dataclasses import asdict

import pandas as pd

from analysis import tables
from analysis.report import StudyInfo, build_report, gli_front, hparams_of
from trainables.data import DataConfig, DataError, load_dataset
from trainables.methods import REFERENCE_ROWS
from trainables.metrics import PROTOCOL_LABEL

from .cluster import connect, preflight, slots
from .config import FIELDS, ConfigError, StudyConfig, load_yaml, resolve, write_resolved
from .spaces import gli_space, method_space, paper_point
from .stages import StudyContext
from .tracking import Tracker, TrackingError, git_commit

os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C reaches the launcher, which stops cleanly

# Settings that say where and on what a study runs, not what it computes: a rerun that
# changes only these resumes the same study.
PLACEMENT = {"num_gpus", "num_cpus", "gpus_per_trial", "cpus_per_trial", "address", "storage_path", "tracking_uri",
             "results_dir", "allow_cpu", "max_failures", "gli_trials", "cache_dir", "fault_injection"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m study.launch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, argument_default=None)
    a = p.add_argument
    a("--config", help="YAML file of settings (names as below, with _ or -); flags override it")
    a("--dataset", help="digits (embedded, default), mufac, mucac or mucac-binary")
    a("--data-dir", help="the data folder for mufac / mucac")
    a("--forget-count", type=int, help="forget-set size (digits, mufac)")
    a("--results-dir", help="where results go (default ./results/<experiment>)")
    a("--experiment-name", help="MLflow experiment and results folder name (default gli-<dataset>)")
    a("--num-gpus", type=float, help="GPUs the study uses (0: CPU only)")
    a("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all cores)")
    a("--gpus-per-trial", type=float, help="GPU share of one trial; fractions let small trials share a GPU (default 0.25)")
    a("--cpus-per-trial", type=float, help="CPU share of one trial (default 1)")
    a("--address", help="join this running Ray cluster (e.g. ray://head:10001 or auto) instead of starting one")
    a("--storage-path", help="Ray storage shared by all nodes (default <results>/ray); a shared path for multi-node")
    a("--tracking-uri", help="MLflow tracking URI (default sqlite:///<results>/mlflow.db)")
    a("--gli-trials", type=int, help="Optuna trials for GLI, and for each baseline with --tune-baselines (default 24)")
    a("--seeds", type=int, help="seeds for base models, baselines and confirmation (default 3)")
    a("--selection", choices=["val", "test"], help="val: honest held-out halves (default); test: the paper's protocol")
    a("--objective", choices=["pareto", "final_score"], help="pareto: accuracy vs forgetting score (default); or one scalar")
    a("--tune-baselines", action="store_true", default=None, help="search each baseline with GLI's trial budget")
    a("--smoke-test", action="store_true", default=None, help="the whole path, small and quick")
    a("--allow-cpu", action="store_true", default=None, help="let --num-gpus run on the CPU (logical GPUs)")
    a("--eval-every", type=int, help="steps between evaluations inside a trial (default ~10 per epoch)")
    a("--patience", type=int, help="evaluations without improvement before a trial stops")
    a("--sampler-seed", type=int, help="seed of Optuna's sampler (default 0)")
    a("--max-failures", type=int, help="retries of a trial whose worker died (default 2)")
    a("--dashboard", action="store_true", help="start Ray's dashboard on the local instance (off by default)")
    return p


def study_key(cfg: StudyConfig, fingerprint: str) -> str:
    what = {k: v for k, v in asdict(cfg).items() if k not in PLACEMENT}
    return hashlib.sha256(json.dumps([what, fingerprint], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _setup(argv: list[str] | None):
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k in FIELDS}
    cfg = resolve(load_yaml(args.config) if args.config else {}, flags)
    preflight(cfg)
    data = load_dataset(DataConfig(dataset=cfg.dataset, data_dir=cfg.data_dir, forget_count=cfg.forget_count,
                                   cache_dir=cfg.cache_dir))
    tracker = Tracker(cfg.tracking_uri, cfg.experiment_name, cfg.results_path / "artifacts")
    return args, cfg, data, tracker


def run_study(ctx: StudyContext) -> pd.DataFrame:
    cfg, seeds = ctx.cfg, list(range(ctx.cfg.seeds))
    ctx.run_grid("base", [{"method": m, "seed": s, "hparams": {}} for s in seeds for m in REFERENCE_ROWS])
    tuned: dict[str, list[dict]] = {}
    if cfg.tune_baselines:
        for method in cfg.baselines:
            study = ctx.run_search("baseline", method, method_space(method), paper_point(method, cfg.dataset), cfg.gli_trials)
            tuned[method] = [_best_params(study, cfg.objective)]
    else:
        ctx.run_grid("baseline", [{"method": m, "seed": s, "hparams": ctx.fixed_hparams(m)}
                                  for s in seeds for m in cfg.baselines])
    ctx.run_search("gli", "gli", gli_space(cfg.gli_space), paper_point("gli", cfg.dataset, cfg.gli_space), cfg.gli_trials)
    front = gli_front(ctx.tracker.children("gli"), cfg.objective)
    settings = [hparams_of(r) for _, r in front.iterrows()]
    confirm = [{"method": "gli", "seed": s, "hparams": h} for h in settings for s in seeds]
    confirm += [{"method": m, "seed": s, "hparams": {**ctx.fixed_hparams(m), **h}}
                for m, hs in tuned.items() for h in hs for s in seeds]
    ctx.run_grid("confirm", confirm)


def _best_params(study, objective: str) -> dict:
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        return {}
    if objective == "pareto":  # among the front, the best accuracy - 2 FS, i.e. the final score's ordering
        best = max(study.best_trials, key=lambda t: t.values[0] - 2 * t.values[1])
    else:
        best = study.best_trial
    return dict(best.params)


def main(argv: list[str] | None = None) -> int:
    start = time.time()
    try:
        args, cfg, data, tracker = _setup(argv)
    except (ConfigError, DataError, TrackingError, KeyError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    results = cfg.results_path
    write_resolved(cfg, results / "config.yaml", {"data_fingerprint": data.fingerprint})
    try:
        resources, started_ray = connect(cfg, dashboard=args.dashboard)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    protocol = PROTOCOL_LABEL[cfg.selection]
    params = {**asdict(cfg), "data_fingerprint": data.fingerprint}
    ctx = StudyContext(cfg, data, tracker, slots(cfg, resources))
    params["trial_settings"] = ctx.settings  # model, base training and runner settings, for export
    tags = {"dataset": cfg.dataset, "selection": cfg.selection, "selection_protocol": protocol,
            "objective": cfg.objective, "git_commit": git_commit(), "data_fingerprint": data.fingerprint,
            "smoke_test": str(cfg.smoke_test)}
    parent_id, resumed = tracker.start_parent(study_key(cfg, data.fingerprint), cfg.experiment_name, params, tags)
    if resumed and (stale := tracker.close_stale_children()):
        print(f"[study] {stale} trial(s) left running by the interrupted study marked KILLED", file=sys.stderr)
    print(f"[study] {'resuming' if resumed else 'starting'} {cfg.experiment_name} on {cfg.dataset} "
          f"({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs); MLflow run {parent_id}", file=sys.stderr)
    status = "FAILED"
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops cleanly, like Ctrl-C
    try:
        run_study(ctx)
        info = StudyInfo(cfg.experiment_name, cfg.dataset, cfg.selection, cfg.objective, cfg.tune_baselines,
                         cfg.results_dir)
        summary, front, written = build_report(tracker, info, results)
        tracker.log_artifact(results / "config.yaml")
        for path in written:
            tracker.log_artifact(path, "summary")
        status = "FINISHED"
        print(tables.to_markdown(summary, info.title, cfg.dataset))
        print(f"GLI: {len(tracker.children('gli'))} trials finished, {len(front)} setting(s) confirmed "
              f"(front.csv, front.png). Wall time {time.time() - start:.0f}s.")
        print(f"Results: {results}\nMLflow:  {cfg.tracking_uri} (experiment {cfg.experiment_name})")
        print(f"Browse:  mlflow ui --backend-store-uri {cfg.tracking_uri} --host 127.0.0.1 --port 5000")
        return 0
    except KeyboardInterrupt:
        status = "KILLED"
        print("\n[study] interrupted: running trials stopped; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        tracker.end_parent(status)
        if started_ray:
            import ray

            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
