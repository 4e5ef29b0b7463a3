"""`python -m trainables.run --method NAME`: run one unlearning method once and print its metrics.

Starts from the cached original model (trained on first use), runs the method with
the paper's defaults for the data set (override with `--set key=value`) under a
protocol (`fair` or `paper`, SPEC section 5.1), and prints the report-split metrics;
`--method all` prints one row per method with the original and retrained models as
reference rows. `--trace FILE` writes one JSON line per optimiser update and per
evaluation. Each row is one `trainables.trial.run_trial`, the function every trial of the
study runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import yaml

from . import engine
from .base_models import BASE_KINDS, base_model, default_configs
from .data import DATASETS, OPTIONAL_SETTINGS, DataConfig, DataError, Dataset, load_dataset
from .data.folder import FASHION_SIZES
from .methods import REFERENCE_ROWS, HyperParameterError, available, create, get, resolved_hparams
from .methods.interface import PROTOCOLS, SELECTION_ALIAS
from .metrics import BOOTSTRAP, PROTOCOL_LABEL, split_size_problem
from .records import ERROR, FINAL, numbers
from .trial import TrialSettings, TrialSpec, run_trial
from .unlearn import EvalConfig

RUN_STAGE = "run"  # the stage of a row run by hand (no study)

COLUMNS = [("accuracy", "acc"), ("top2_accuracy", "top2"), ("forgetting_score", "FS"), ("final_score", "final"),
           ("jsd", "JSD"), ("steps", "steps"), ("seconds", "seconds"), ("rte", "RTE")]


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise HyperParameterError(f"--set takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        parsed = yaml.safe_load(value)  # 0.01 -> float, 5 -> int, true -> bool
        if isinstance(parsed, str):  # YAML reads 1e8 (no dot, no sign) as text: a number is meant
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def base_models(data: Dataset, seed: int, device: torch.device, cache_dir: Path | None = None,
                width: int | None = None, base_epochs: int | None = None) -> dict:
    """{'original': (model, seconds), 'retrain': (model, seconds)}, from the checkpoint cache."""
    model_cfg, recipe = default_configs(data.name, width, base_epochs)
    out = {}
    for kind in BASE_KINDS:
        model, seconds, cached = base_model(data, kind, model_cfg, recipe, seed, device, cache_dir)
        print(f"[run] {kind} model {'from cache' if cached else f'trained in {seconds:.1f}s'}", file=sys.stderr)
        out[kind] = (model, seconds)
    return out


class Trace:
    """`--trace FILE`: one JSON line per optimiser update and one per evaluation."""

    def __init__(self, path: str | None):
        self.file = open(path, "w") if path else None

    def for_method(self, name: str):
        if self.file is None:
            return None, None

        def on_step(n: int, step) -> None:
            self.write({"method": name, "step": n, **step.trace(), "loss": float(step.loss)})

        def on_eval(n: int, metrics: dict) -> None:
            self.write({"event": "eval", "method": name, "step": n, **metrics})

        return on_step, on_eval

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


def run_method(name: str, data: Dataset, settings: TrialSettings, seed: int, hparams: dict | None = None,
               trace: Trace | None = None) -> dict:
    """One row: a reference row for original / retrain, else an unlearning run, as the study's trial runs it
    (`run_trial`); its numbers, the method, its resolved hyper-parameters and the protocol."""
    on_step, on_eval = trace.for_method(name) if trace else (None, None)
    report = run_trial(TrialSpec(RUN_STAGE, name, seed, dict(hparams or {})), settings, data, on_step, on_eval)
    if report.get(FINAL) != 1.0:
        print(f"[run] {name}: failed ({report.get(ERROR, 'no final report')})", file=sys.stderr)
    row = numbers(report)
    if name not in REFERENCE_ROWS:
        row["hparams"] = resolved_hparams(name, data.name, **(hparams or {}))
    row["method"] = name
    row["protocol"] = settings.evaluation.protocol
    return row


def format_table(rows: list[dict]) -> str:
    columns = [(k, h) for k, h in COLUMNS if any(k in r for r in rows)]
    lines = [f"{'method':<17}" + "".join(f"{h:>9}" for _, h in columns)]
    for r in rows:
        cells = []
        for key, _ in columns:
            value = r.get(key)
            if isinstance(value, (int, float)) and key in ("seconds", "steps"):
                cells.append(f"{value:>9.1f}" if key == "seconds" else f"{int(value):>9d}")
            elif isinstance(value, float):
                cells.append(f"{value:>9.4f}")
            else:
                cells.append(f"{'-':>9}")
        lines.append(f"{r['method']:<17}" + "".join(cells))
    return "\n".join(lines)


DATA = DataConfig()  # the data settings' declared defaults, for the help text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainables.run", description=__doc__.splitlines()[0])
    a = parser.add_argument
    a("--method", required=True, help=f"one of {', '.join(list(REFERENCE_ROWS) + available())}, or all")
    a("--dataset", default=DATA.dataset, choices=DATASETS, help="data set (default: %(default)s)")
    a("--data-dir", help="data folder for mufac / mucac")
    a("--attribute", help=f"mucac-binary: the attribute predicted as two classes (default {DATA.attribute})")
    a("--forget-count", type=int, help="forget-set size (digits, mufac: the first N train rows; fashion-mnist)")
    for split in ("train", "unseen", "test"):
        a(f"--{split}-count", type=int, help=f"fashion-mnist: {split} images (default {FASHION_SIZES[split]:,})")
    for name, what in (("test-max-id", "test"), ("retain-max-id", "retain"), ("forget-max-id", "forget")):
        a(f"--{name}", type=int, help=f"mucac: identity ids below this (and above the previous threshold) are {what}")
    a("--seed", type=int, default=0, help="the replicate: the data set's split seed and the seed of the base models "
      "and of the method run")
    a("--set", action="append", default=[], metavar="KEY=VALUE", help="override a hyper-parameter (repeatable)")
    a("--protocol", choices=PROTOCOLS,
      help=f"fair: one honest selection rule; paper: the notebooks step for step (default {PROTOCOLS[0]})")
    a("--selection", choices=sorted(SELECTION_ALIAS), help="deprecated: val is --protocol fair, test is --protocol paper")
    a("--eval-every", type=int, help="updates between evaluations (default: the protocol's)")
    a("--patience", type=int, help="stop after this many evaluations without improvement (default: the protocol's)")
    a("--image-size", type=int, help=f"decode face images at this size (default {DATA.image_size}), for small CPU runs")
    a("--width", type=int, help="use the width-reduced ResNet-18 at this width (small CPU runs)")
    a("--base-epochs", type=int, help="train the base models for this many epochs (default: the data set's recipe)")
    a("--trace", metavar="FILE", help="write one JSON line per optimiser update and per evaluation")
    a("--bootstrap", type=int, default=BOOTSTRAP, help="resamples behind fs_se at the chosen checkpoint (0: none; default %(default)s)")
    a("--cache-dir", help="cache for decoded images and base checkpoints")
    a("--json", action="store_true", help="print one JSON object per row (the last line is one)")
    return parser


def resolve_protocol(protocol: str | None, selection: str | None) -> str:
    if selection:
        print(f"[run] --selection is deprecated: use --protocol {SELECTION_ALIAS[selection]}", file=sys.stderr)
        if protocol and protocol != SELECTION_ALIAS[selection]:
            raise ValueError(f"--selection {selection} contradicts --protocol {protocol}")
    return protocol or (SELECTION_ALIAS[selection] if selection else PROTOCOLS[0])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = list(REFERENCE_ROWS) + available() if args.method == "all" else [args.method]
    try:
        protocol = resolve_protocol(args.protocol, args.selection)
        hparams = parse_sets(args.set)
        overrides = {}  # per row: with --method all, each method takes the --set keys it accepts
        for name in names:  # validate every row before any training
            if name not in REFERENCE_ROWS:
                accepted = set(get(name).Params.names())
                overrides[name] = {k: v for k, v in hparams.items() if k in accepted} if args.method == "all" else hparams
                create(name, args.dataset, **overrides[name])
        evaluation = EvalConfig(protocol=protocol, eval_every=args.eval_every, patience=args.patience,
                                bootstrap=args.bootstrap)
        evaluation.validate()
        given = {k: getattr(args, k) for k in OPTIONAL_SETTINGS + ("test_max_id", "retain_max_id", "forget_max_id")
                 if getattr(args, k) is not None}
        # the seed is a replicate: its split seed and its training seed
        data_cfg = DataConfig(dataset=args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir,
                              split_seed=args.seed, **given)
        data = load_dataset(data_cfg)
        if problem := split_size_problem(data, protocol):
            raise DataError(problem)
    except (KeyError, ValueError, DataError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    device = engine.pick_device()
    cache = Path(args.cache_dir).resolve() if args.cache_dir else None
    base_models(data, args.seed, device, cache, args.width, args.base_epochs)  # trained (or found) once, said once
    model_cfg, recipe = default_configs(data.name, args.width, args.base_epochs)
    settings = TrialSettings(models_dir=str(cache or ""), model=model_cfg, train=recipe, evaluation=evaluation,
                             threads=torch.get_num_threads(), data=data_cfg)
    trace = Trace(args.trace)
    rows = []
    try:
        for name in names:
            row = run_method(name, data, settings, args.seed, overrides.get(name, {}), trace)
            rows.append(row)
            if args.json:
                print(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}))
            elif row.get(FINAL) == 1.0:  # a failed row has said why in its own line
                print(f"[run] {name}: final {row['final_score']:.4f} in {row['seconds']:.1f}s", file=sys.stderr)
    finally:
        trace.close()
    if not args.json:
        print(f"{args.dataset}, seed {args.seed}; {PROTOCOL_LABEL[protocol]}")
        print(format_table(rows))
    return 1 if any(r.get(FINAL) != 1.0 for r in rows) else 0  # a row failed (diverged): said above, in one line


if __name__ == "__main__":
    sys.exit(main())
