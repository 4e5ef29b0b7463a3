"""`python -m study.reproduce DIR/<method>.yaml`: rerun an exported configuration, compare with its numbers.

Reads a file written by `analysis.export`, reloads the data set (warning when its
fingerprint differs from the study's), takes the study's base models from its
checkpoint folder when it is still there (else retrains them, seeded, into the local
cache), reruns the method with the exported hyper-parameters on each seed, and prints
the reproduced metrics next to the exported ones. On the CPU with the same seed and
thread count the numbers agree; `--check` exits 1 when they do not.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import yaml

from trainables import engine
from trainables.base_models import BaseRecipe
from trainables.data import OPTIONAL_SETTINGS, DataConfig, DataError, load_dataset
from trainables.methods.interface import PROTOCOLS
from trainables.metrics import PROTOCOL_LABEL
from trainables.models import ModelConfig
from trainables.records import EXPORT_KIND, default_results_dir, numbers
from trainables.trial import TrialSettings, TrialSpec, run_trial
from trainables.unlearn import EvalConfig

WITHIN_SE = 3.0  # on other hardware, a reproduced number may differ by this many exported standard errors
SHOWN = ["accuracy", "forgetting_score", "final_score", "jsd", "sel_accuracy", "sel_forgetting_score"]


class ReproduceError(RuntimeError):
    """One line for the user."""


def load_export(path: str) -> dict:
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ReproduceError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError:
        raise ReproduceError(f"{path}: not valid YAML") from None
    if not isinstance(spec, dict) or spec.get("kind") != EXPORT_KIND:
        raise ReproduceError(f"{path}: not a method export of analysis.export (expected 'kind: {EXPORT_KIND}')")
    missing = [k for k in ("method", "hparams", "data", "model", "train", "evaluation", "seeds", "metrics") if k not in spec]
    if missing:
        raise ReproduceError(f"{path}: export is missing {', '.join(missing)}")
    return spec


def reproduce(spec: dict, seeds: list[int], data_dir: str | None = None, models_dir: str | None = None,
              protocol: str | None = None) -> dict:
    data_cfg = spec["data"]
    given = {k: data_cfg[k] for k in OPTIONAL_SETTINGS if data_cfg.get(k) is not None}
    data_settings = DataConfig(dataset=data_cfg["dataset"], data_dir=data_dir or data_cfg.get("data_dir"), **given)
    data = load_dataset(data_settings)
    if data_cfg.get("fingerprint") and data.fingerprint != data_cfg["fingerprint"]:
        print(f"warning: the data set's fingerprint is {data.fingerprint}, the study's was {data_cfg['fingerprint']}: "
              "numbers may differ", file=sys.stderr)
    accel = engine.Accel(**spec["accel"]) if spec.get("accel") else engine.Accel()  # as the study's trials ran
    model_cfg, recipe = ModelConfig(**spec["model"]), BaseRecipe.of(spec["train"])
    evaluation = EvalConfig(**{**spec["evaluation"], **({"protocol": protocol} if protocol else {})})
    folder = Path(models_dir) if models_dir else study_models(spec)
    cache = folder if folder is not None and folder.is_dir() else None  # the study's checkpoints, or the local cache
    # The trial's own settings (its thread count too, for equal numerics), run by the study's own runner.
    settings = TrialSettings(models_dir=str(cache or ""), model=model_cfg, train=recipe, evaluation=evaluation,
                             threads=max(1, int(spec.get("threads", 1))), accel=accel, data=data_settings)
    return {seed: numbers(run_trial(TrialSpec(spec.get("stage") or "reproduce", spec["method"], seed,
                                              dict(spec["hparams"] or {})), settings, data))
            for seed in seeds}


def study_models(spec: dict) -> Path | None:
    """The study's base-model checkpoints as its export locates them: under its results folder (as a rerun
    of the study here would find it, ./results/<experiment>), or, for an export written before exports said
    where, the path it recorded. A storage path elsewhere is the user's to give (--models-dir)."""
    where = spec.get("models") or {}
    if where.get("under") == "results":
        return default_results_dir(spec["experiment"]) / where["path"]
    return Path(spec["models_dir"]) if spec.get("models_dir") else None


def hardware_difference(spec: dict) -> list[str]:
    """How this machine differs from the one that made the export, in what changes float results."""
    theirs, ours = spec.get("hardware") or {}, engine.hardware()
    return [f"{k}: {ours.get(k)!r} here, {theirs.get(k)!r} in the study" for k in engine.NUMERIC_HARDWARE
            if k in theirs and theirs.get(k) != ours.get(k)]


def standard_error(key: str, row: dict) -> float | None:
    """The exported standard error of `key` (bootstrap fs_se, binomial accuracy_se; final = (acc + 1 - 2 FS) / 2)."""
    prefix = "sel_" if key.startswith("sel_") else ""
    fs, acc = row.get(f"{prefix}fs_se"), row.get(f"{prefix}accuracy_se")
    name = key[len(prefix):]
    if name == "forgetting_score":
        return fs
    if name == "accuracy":
        return acc
    if name == "final_score" and fs is not None and acc is not None:
        return math.sqrt(acc ** 2 / 4 + fs ** 2)
    return None


def compare(spec: dict, results: dict, within: float | None = None) -> tuple[str, float, list[str]]:
    """A table of exported vs reproduced numbers; returns it, the largest absolute difference and, with
    `within` (a number of standard errors), the numbers that differ by more than that many."""
    exported = spec["metrics"]["per_seed"]
    lines = [f"{'seed':>4} {'metric':<22} {'exported':>10} {'reproduced':>11}" + ("  |diff| / se" if within else "")]
    worst, outside = 0.0, []
    for seed, row in results.items():
        old_row = exported.get(seed, {})
        for key in SHOWN:
            new = row.get(key)
            old = old_row.get(key)
            if new is None:
                continue
            line = f"{seed:>4} {key:<22} {'-' if old is None else f'{old:.6f}':>10} {new:>11.6f}"
            if old is not None and math.isfinite(new):
                worst = max(worst, abs(new - old))
                se = standard_error(key, old_row)
                if within and se:
                    ratio = abs(new - old) / se
                    line += f"  {ratio:>11.2f}"
                    if ratio > within:
                        outside.append(f"seed {seed} {key}")
            lines.append(line)
    return "\n".join(lines), worst, outside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("export", help="a <method>.yaml written by analysis.export")
    parser.add_argument("--seeds", type=int, help="how many seeds (default: the exported ones)")
    parser.add_argument("--data-dir", help="the data folder, if it moved since the study")
    parser.add_argument("--models-dir", help="the study's base-model checkpoints, if they moved")
    parser.add_argument("--protocol", choices=PROTOCOLS,
                        help="rerun under this protocol instead of the exported one (the numbers then differ)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a number differs: by more than 1e-6 on the study's hardware, by more than "
                             f"{WITHIN_SE:g} standard errors on other hardware")
    args = parser.parse_args(argv)
    try:
        spec = load_export(args.export)
        seeds = spec["seeds"]
        if args.seeds:
            seeds = (seeds + [s for s in range(args.seeds + len(seeds)) if s not in seeds])[: args.seeds]
        results = reproduce(spec, seeds, args.data_dir, args.models_dir, args.protocol)
    except (ReproduceError, DataError, KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    differences = hardware_difference(spec)
    table, worst, outside = compare(spec, results, WITHIN_SE if differences else None)
    label = PROTOCOL_LABEL[args.protocol] if args.protocol else spec["protocol_label"]
    print(f"{spec['method']} on {spec['data']['dataset']}; {label}")
    if differences:  # float results differ between CPUs, GPUs and library versions: compare within uncertainty
        print("other hardware than the study's (" + "; ".join(differences) + "): numbers are compared within "
              f"{WITHIN_SE:g} of their exported standard errors, not for equality")
    else:
        print("same hardware and libraries as the study: numbers are compared for equality (1e-6)")
    print(table)
    if differences:
        verdict = ("agree within their uncertainty" if not outside
                   else f"differ beyond {WITHIN_SE:g} standard errors ({', '.join(outside)})")
        failed = bool(outside)
    else:
        verdict = "agree" if worst <= 1e-6 else f"differ (largest difference {worst:.2e})"
        failed = worst > 1e-6
    print(f"reproduced numbers {verdict} with the export")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
