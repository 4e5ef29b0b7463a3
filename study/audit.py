"""`python -m study.audit --experiment NAME --models K [--attack ulira --shadows S]`: add the privacy audits to a
finished study.

Reruns the study's own launch command from its resolved configuration (`config.yaml` in
its results folder) with `--audit K` (the unlearning challenge's forgetting quality) and/or
`--attack ulira` (U-LiRA's per-example attack over S shadow models): every stage already
finished is skipped (the trials MLflow holds, the Optuna journal, the bank's models), so
only the audits' trials run; a later audit reuses the retrained and shadow models and
runs what an earlier one left.
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
    parser.add_argument("--models", type=int, help="K: unlearning runs per setting and retrained models (the "
                        "challenge's forgetting quality)")
    parser.add_argument("--audit-ceiling", choices=["retrained", "simulated"],
                        help="F's ceiling from K more retrained models (default) or simulated (cheaper)")
    parser.add_argument("--attack", choices=["ulira"], help="U-LiRA, the per-example attack over shadow models")
    parser.add_argument("--shadows", type=int, help="with --attack ulira: shadow models per setting (even; default 16)")
    parser.add_argument("--targets", type=int, help="with --attack ulira: target models per setting (even; default 4)")
    args = parser.parse_args(argv)
    if args.models is None and args.attack is None:
        parser.error("give --models K (the forgetting quality), --attack ulira, or both")
    try:
        _, params, _ = open_study(args.experiment, args.tracking_uri)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = Path(params["results_dir"]) / "config.yaml"
    if not config.is_file():
        print(f"error: {config}: the study's resolved configuration is missing", file=sys.stderr)
        return 2
    flags = ["--config", str(config)] + (["--audit", str(args.models)] if args.models is not None else [])
    flags += ["--attack", args.attack] if args.attack else []
    flags += [f for name in ("shadows", "targets", "audit_ceiling") if getattr(args, name) is not None
              for f in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]
    return launch(flags + (["--tracking-uri", args.tracking_uri] if args.tracking_uri else []))


if __name__ == "__main__":
    from .launch import _exit

    _exit(main())
