"""The study's command line: parse, check, print. `study.launch` and `study.audit` both use it; what runs is
`study.pipeline`'s.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from trainables.data import DataConfig, DataError, load_dataset
from trainables.data.folder import FASHION_SIZES
from trainables.methods.interface import PROTOCOLS
from trainables.records import OBJECTIVES, journal_path

from .config import FIELDS, StudyConfig, data_config, load_yaml, resolve
from .cluster import preflight


def _whole_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None


EXAMPLES = """examples:
  the whole study on digits, on this machine's CPUs:
    python -m study.launch
  the whole path, small and quick:
    python -m study.launch --smoke-test
  MUFAC on 8 GPUs, two trials sharing each GPU:
    python -m study.launch --dataset mufac --data-dir /data/mufac --num-gpus 8

Rerunning the same command resumes the study. docs/guide.md says what every setting does."""


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
          "comparison on the primary metric is settled (better, worse or equivalent, its error rate spent over the "
          "planned looks, Bonferroni across comparisons) or --max-replicates are reported", action="store_true",
          default=None)
    _flag(g, "--primary", "the one metric the verdicts test; the others are estimates with simultaneous "
          "intervals, not tested", choices=["final_score", "forgetting_score", "privacy_gap"])
    _flag(g, "--candidates", "each method's best settings from its search rerun on the selection replicates "
          "(default: 3; the same for every method)", type=int)
    _flag(g, "--selection-replicates", "replicates, never reported, on which each method's candidates are rerun "
          "and its setting chosen before any reported replicate is seen (default: 2)", type=int)
    _flag(g, "--max-replicates", "with --until-settled: stop after this many reported replicates", type=int)
    _flag(g, "--margin", "a comparison whose interval lies within +-margin is equivalent", type=float)
    _flag(g, "--looks", "with --until-settled: reported replicates at each look, comma-separated (default: four "
          "equally spaced up to --max-replicates: 5,10,15,20); part of the study, never of the cluster",
          type=_whole_list)
    _flag(g, "--round-size", "with --until-settled and no --looks: replicates between looks (default: four equal looks)", type=int)
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
    _flag(g, "--trial-threads", "torch threads of one trial (part of the study: thread counts change float sums)",
          type=int)
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


def setup(argv: list[str] | None):
    """Parse the flags over the YAML file, check the settings and the cluster, load the data: (args, cfg, data).
    Raises `ConfigError` or `DataError` with one line for the user."""
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k in FIELDS}
    cfg = resolve(load_yaml(args.config) if args.config else {}, flags)
    preflight(cfg)
    data = load_dataset(data_config(cfg))
    from trainables.metrics import split_size_problem

    if problem := split_size_problem(data, cfg.protocol):
        raise DataError(problem)
    return args, cfg, data


def changed_settings(before: dict, now: dict, names) -> list[str]:
    """`name old -> new` for each of `names` whose value differs between two studies' settings (as the parent
    runs record them: decoded params)."""
    from trainables.records import decode, param_text

    def norm(value):
        return None if value is None else decode(param_text(value))

    return [f"{n} {norm(before.get(n))} -> {norm(now.get(n))}" for n in names if norm(before.get(n)) != norm(now.get(n))]


def print_outcome(cfg: StudyConfig, results: Path, tracker, study_key: str, searched: int, front: int,
                  seconds: float) -> None:
    """The report and where everything went, as the study's last lines."""
    from .tracking import runs_link

    print((results / "summary.md").read_text())  # the table, and GLI against each baseline seed by seed
    print(f"GLI: {searched} trials finished, {front} setting(s) on its front (front.csv, front.png); each method's "
          f"setting chosen on {cfg.selection_replicates} selection replicate(s) (selection.csv). Wall time {seconds:.0f}s.")
    print(f"Results: {results} (study {study_key})\nMLflow:  {cfg.tracking_uri} (experiment {cfg.experiment_name})")
    if cfg.tracking_uri.startswith(("http://", "https://")):
        print(f"Browse:  {runs_link(cfg.tracking_uri, tracker.experiment_id)}")
    else:
        print(f"Browse:  mlflow ui --backend-store-uri {cfg.tracking_uri} --host 127.0.0.1 --port 5000\n"
              f"         then open {runs_link(cfg.tracking_uri, tracker.experiment_id)}")
    print(f"Search:  optuna-dashboard {journal_path(results, study_key)}   (pip install optuna-dashboard)")
