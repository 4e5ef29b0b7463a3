"""`python -m study.audit --experiment NAME --models K`: add the privacy audit to a finished study.

Reruns the study's own launch command from its resolved configuration (`config.yaml` in
its results folder) with `--audit K`: every stage already finished is skipped (the
trials MLflow holds, the Optuna journal, the base checkpoints), so only the audit's
trials run; a later audit reuses the retrained models and runs an earlier one left.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.results import ResultsError, open_study

from .launch import main as launch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.audit", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="the study's MLflow experiment (its --experiment-name)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///./results/<experiment>/mlflow.db)")
    parser.add_argument("--models", type=int, required=True, help="K: unlearning runs per setting and retrained models")
    args = parser.parse_args(argv)
    try:
        _, params, _ = open_study(args.experiment, args.tracking_uri)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = Path(params["results_dir"]) / "config.yaml"
    if not config.is_file():
        print(f"error: {config}: the study's resolved configuration is missing", file=sys.stderr)
        return 2
    flags = ["--config", str(config), "--audit", str(args.models)]
    return launch(flags + (["--tracking-uri", args.tracking_uri] if args.tracking_uri else []))


if __name__ == "__main__":
    from .launch import _exit

    _exit(main())
