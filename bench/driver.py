"""How many trial completions a second one driver sustains: the launcher's real plan, Optuna searcher
and MLflow tracking, with a stand-in trial (`bench/standin.py`: reports of the real shape, no training).

    python bench/driver.py [--shape capacity|default] [--slots 48] [--gli-trials 300] [--seconds 0]
                           [--search-batch B] [--tracking-uri URI]

Two shapes: `capacity` (the default) is GLI's search alone, baselines at fixed settings, with a
search batch as large as the slots (the launcher's own capacity: `--search-batch 48` on 48
slots); `default` is the default study's shape, every method's search at once, each batched as
the default study (4 settings at a time) with --budget trials (default 24).

Each worker's first trial waits until every slot's worker has started (`ReadyGate`, at most
--start-limit seconds): 48 workers take about 40 s of both CPUs of a 2-core machine to start,
work that on a cluster the workers' own nodes do once, so the rate is measured with every slot
ready. Prints a line and, as its last line, one JSON object: driver_trials_per_s (trial
completions a second, counted when each trial's MLflow run is written, over the middle half of
the completions: after the study's first trials, before its last stage waits for the search to
end; trials take --seconds, default none), second_half_trials_per_s (over the second half, which
includes that wait: the window of the first measurements in docs/benchmarks.md),
overall_trials_per_s (over the whole run, start-up included), workers_ready and
workers_ready_after_s (how many workers passed the gate, and when it opened),
tracking_ms_per_trial (the tracking writer's time per trial), ask_ms_at_500 (one multi-objective
TPE ask with 500 finished trials), slots and trials.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def ask_ms(finished: int, asks: int = 20) -> float:
    """One TPE ask over GLI's search space as the study declares it (`study.spaces.SearchSpace`, its bounds and
    w_end >= w_start), two objectives, `finished` trials told."""
    import optuna

    from study.spaces import SearchSpace

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace("gli")
    rng = __import__("random").Random(0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(finished):  # a history of `finished` trials, drawn at random
        trial = study.ask()
        space(trial)
        study.tell(trial, [rng.random(), rng.random()])
    study.sampler = optuna.samplers.TPESampler(seed=0)
    start = time.perf_counter()
    for _ in range(asks):
        trial = study.ask()
        space(trial)
        study.tell(trial, [rng.random(), rng.random()])
    return (time.perf_counter() - start) / asks * 1000


def rate(ended: list[float], start: float, stop: float) -> float:
    """Completions a second between the completions at fractions `start` and `stop` of the run."""
    i, j = int(start * len(ended)), max(0, int(stop * len(ended)) - 1)
    return (j - i) / (ended[j] - ended[i]) if j > i and ended[j] > ended[i] else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=48, help="logical CPU slots (one trial each)")
    parser.add_argument("--shape", choices=["capacity", "default"], default="capacity",
                        help="capacity: GLI's search alone, batch = slots; default: every method searched, batched")
    parser.add_argument("--gli-trials", type=int, default=300, help="capacity: GLI's search trials")
    parser.add_argument("--budget", type=int, default=24, help="default: each method's search trials")
    parser.add_argument("--search-batch", type=int, help="settings a search asks for at once (default: the slots "
                        "for capacity, the study's default for default)")
    parser.add_argument("--seconds", type=float, default=0.0, help="how long each stand-in trial takes")
    parser.add_argument("--tracking-uri", help="default: a SQLite file in a temporary folder")
    parser.add_argument("--start-limit", type=float, default=300.0,
                        help="seconds the trials wait for every slot's worker to start before they go on anyway")
    args = parser.parse_args()
    import ray
    from ray import tune

    from bench.standin import ReadyGate, standin_trial
    from study.config import resolve
    from study.config import data_config
    from study.pipeline import run_study
    from study.context import StudyContext
    from study.stages import Stage
    from study.tracking import Tracker
    from trainables.data import load_dataset

    ray.init(num_cpus=args.slots, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        flags = {"results_dir": f"{tmp}/r", "replicates": 1, "bootstrap": 0, "tracking_uri": args.tracking_uri,
                 "experiment_name": f"driver-bench-{int(time.time())}", "search_batch": args.search_batch}
        if args.shape == "capacity":
            flags.update(budget=args.gli_trials, paper_baselines=True,
                         search_batch=args.slots if args.search_batch is None else args.search_batch)
        else:
            flags.update(budget=args.budget, paper_baselines=False)
        cfg = resolve({}, {k: v for k, v in flags.items() if v is not None})
        data = load_dataset(data_config(cfg))
        tracker = Tracker(cfg.tracking_uri, cfg.experiment_name, Path(tmp) / "artifacts", cfg.tracking_outage)
        tracker.start_parent("driver-bench", cfg.experiment_name, {"budget": cfg.budget}, {"bench": "driver"})
        ctx = StudyContext(cfg, data, tracker, args.slots)
        gate_name = f"driver-bench-gate-{os.getpid()}"
        gate = ReadyGate.options(name=gate_name).remote(args.slots, args.start_limit)
        ctx.trainable = tune.with_parameters(standin_trial, seconds=args.seconds, gate=gate_name)
        ended: list[float] = []  # when each trial's run was written
        recorded = Stage.recorded

        def timed(stage, trial, ok, run_id=None):
            ended.append(time.perf_counter())
            recorded(stage, trial, ok, run_id)

        Stage.recorded = timed
        start, started_at = time.perf_counter(), time.time()
        stages = run_study(ctx)
        tracker.flush()
        wall = time.perf_counter() - start
        tracker.end_parent("FINISHED")
        trials = sum(s.done for s in stages)
        ready, opened = ray.get(gate.state.remote())
        opened_after = opened - started_at if opened else float("nan")
        out = {"driver_trials_per_s": round(rate(ended, 0.25, 0.75), 2),
               "second_half_trials_per_s": round(rate(ended, 0.5, 1.0), 2),
               "overall_trials_per_s": round(trials / wall, 2),
               "wall_s": round(wall, 1), "trials": trials, "workers_ready": ready,
               "workers_ready_after_s": round(opened_after, 1),
               "tracking_ms_per_trial": round(tracker.writer.busy_s / max(1, trials) * 1000, 2),
               "ask_ms_at_500": round(ask_ms(500), 2), "slots": args.slots, "trial_seconds": args.seconds,
               "shape": args.shape, "search_batch": cfg.search_batch, "searches": 1 + (0 if cfg.paper_baselines
                                                                                     else len(cfg.baselines)),
               "tracking": "sqlite" if cfg.tracking_uri.startswith("sqlite") else "server"}
    ray.shutdown()
    if ready < args.slots:
        print(f"warning: only {ready} of {args.slots} workers started within --start-limit "
              f"{args.start_limit:.0f}s; the rate was measured with fewer slots ready", file=sys.stderr)
    print(f"{args.shape} shape, search batch {cfg.search_batch}: {ready} workers ready after {opened_after:.0f} s; "
          f"{trials} trials in {wall:.1f} s on {args.slots} slots: {out['driver_trials_per_s']} trials/s sustained "
          f"(middle half; {out['second_half_trials_per_s']} over the second half, {out['overall_trials_per_s']} "
          f"overall); "
          f"tracking {out['tracking_ms_per_trial']} ms/trial; TPE ask at 500 trials {out['ask_ms_at_500']} ms")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
