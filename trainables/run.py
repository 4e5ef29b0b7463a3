"""`python -m trainables.run --method NAME`: run one unlearning method once and print its metrics.

Starts from the cached original model (trained on first use), runs the method with
the paper's defaults for the data set (override with `--set key=value`), and prints
the report-split metrics; `--method all` prints one row per method with the original
and retrained models as reference rows. The study calls the same `run_method`.
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
from .data import DATASETS, DataConfig, DataError, Dataset, load_dataset
from .methods import REFERENCE_ROWS, HyperParameterError, available, create, get
from .metrics import PROTOCOL_LABEL
from .unlearn import EvalConfig, reference_row, unlearn

COLUMNS = [("accuracy", "acc"), ("top2_accuracy", "top2"), ("forgetting_score", "FS"), ("final_score", "final"),
           ("jsd", "JSD"), ("seconds", "seconds"), ("rte", "RTE")]


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise HyperParameterError(f"--set takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)  # 0.01 -> float, 5 -> int, true -> bool
    return out


def base_models(data: Dataset, seed: int, device: torch.device, cache_dir: Path | None = None) -> dict:
    """{'original': (model, seconds), 'retrain': (model, seconds)}, from the checkpoint cache."""
    model_cfg, train_cfg = default_configs(data.name)
    out = {}
    for kind in BASE_KINDS:
        model, seconds, cached = base_model(data, kind, model_cfg, train_cfg, seed, device, cache_dir)
        print(f"[run] {kind} model {'from cache' if cached else f'trained in {seconds:.1f}s'}", file=sys.stderr)
        out[kind] = (model, seconds)
    return out


def run_method(
    name: str, data: Dataset, bases: dict, seed: int, device: torch.device,
    hparams: dict | None = None, evaluation: EvalConfig | None = None,
) -> dict:
    """One row: a reference row for original / retrain, else an unlearning run. Returns flat metrics."""
    evaluation = evaluation or EvalConfig()
    if name in REFERENCE_ROWS:
        model, seconds = bases[name]
        row = reference_row(model, data, evaluation.selection, seconds)
    else:
        method = create(name, data.name, **(hparams or {}))
        result = unlearn(method, bases["original"][0], data, seed, device, evaluation,
                         retrain_seconds=bases["retrain"][1])
        row = result["metrics"]
        row["hparams"] = method.config()
    if name == "retrain":
        row["rte"] = 1.0
    row["method"] = name
    row["selection"] = evaluation.selection
    return row


def format_table(rows: list[dict]) -> str:
    columns = [(k, h) for k, h in COLUMNS if any(k in r for r in rows)]
    lines = [f"{'method':<17}" + "".join(f"{h:>9}" for _, h in columns)]
    for r in rows:
        cells = []
        for key, _ in columns:
            value = r.get(key)
            cells.append(f"{value:>9.4f}" if isinstance(value, float) and key not in ("seconds",)
                         else f"{value:>9.1f}" if isinstance(value, float) else f"{'-':>9}")
        lines.append(f"{r['method']:<17}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainables.run", description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help=f"one of {', '.join(list(REFERENCE_ROWS) + available())}, or all")
    parser.add_argument("--dataset", default="digits", choices=DATASETS, help="data set (default: the embedded digits)")
    parser.add_argument("--data-dir", help="data folder for mufac / mucac")
    parser.add_argument("--seed", type=int, default=0, help="seed of the base models and of the method run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a hyper-parameter (repeatable)")
    parser.add_argument("--selection", default="val", choices=["val", "test"], help="checkpoint selection protocol")
    parser.add_argument("--eval-every", type=int, help="steps between evaluations (default: about 10 per epoch)")
    parser.add_argument("--patience", type=int, help="stop after this many evaluations without improvement")
    parser.add_argument("--cache-dir", help="cache for decoded images and base checkpoints")
    parser.add_argument("--json", action="store_true", help="print one JSON object per row (the last line is one)")
    args = parser.parse_args(argv)
    names = list(REFERENCE_ROWS) + available() if args.method == "all" else [args.method]
    try:
        hparams = parse_sets(args.set)
        overrides = {}  # per row: with --method all, each method takes the --set keys it accepts
        for name in names:  # validate every row before any training
            if name not in REFERENCE_ROWS:
                accepted = set(get(name).Params.names())
                overrides[name] = {k: v for k, v in hparams.items() if k in accepted} if args.method == "all" else hparams
                create(name, args.dataset, **overrides[name])
        evaluation = EvalConfig(eval_every=args.eval_every, selection=args.selection, patience=args.patience)
        evaluation.validate()
        data = load_dataset(DataConfig(dataset=args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir))
    except (KeyError, ValueError, DataError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    device = engine.pick_device()
    bases = base_models(data, args.seed, device, Path(args.cache_dir).resolve() if args.cache_dir else None)
    rows = []
    for name in names:
        row = run_method(name, data, bases, args.seed, device, overrides.get(name, {}), evaluation)
        rows.append(row)
        if args.json:
            print(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}))
        else:
            print(f"[run] {name}: final {row['final_score']:.4f} in {row['seconds']:.1f}s", file=sys.stderr)
    if not args.json:
        print(f"{args.dataset}, seed {args.seed}; {PROTOCOL_LABEL[args.selection]}")
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
