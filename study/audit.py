"""`python -m study.audit --experiment NAME --models K [--attack ulira --shadows S]`: add the privacy audits to a
finished study.

Runs the study's own pipeline again (`study.cli.setup`, `study.pipeline.execute`) from its
resolved configuration (`config.yaml` in its results folder, or under `superseded/<key>/`
there when another study has run in that folder since) with `--audit K` (the unlearning
challenge's forgetting quality) and/or `--attack ulira` (U-LiRA's per-example attack over S
shadow models). The audits' settings are not in the study key, so it is the same study: every
stage already finished is skipped (the trials MLflow holds, the Optuna journal, the bank's
models) and only the audits' trials run; a later audit reuses the retrained and shadow models
and runs what an earlier one left.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from analysis.results import ResultsError, open_study
from trainables.data import DataError
from trainables.records import STUDY_KEY_TAG

from .config import ConfigError


def study_config(results_dir: str, key: str | None) -> Path | None:
    """The resolved configuration of the study with `key`: in its results folder, or set aside there when another
    study ran in the folder since (`study.pipeline.supersede`); None when neither is that study's."""
    for path in (Path(results_dir) / "config.yaml", Path(results_dir) / "superseded" / str(key) / "config.yaml"):
        if path.is_file() and (key is None or (yaml.safe_load(path.read_text()) or {}).get("study_key") in (key, None)):
            return path
    return None


def main(argv: list[str] | None = None) -> int:
    start = time.time()
    parser = argparse.ArgumentParser(prog="python -m study.audit", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="the study's MLflow experiment (its --experiment-name)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///./results/<experiment>/mlflow.db)")
    parser.add_argument("--study", help="the study key (default: the experiment's most recent finished study)")
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
        _, params, tags = open_study(args.experiment, args.tracking_uri, args.study)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    key = params.get("study_key") or tags.get(STUDY_KEY_TAG)
    config = study_config(params["results_dir"], key)
    if config is None:
        print(f"error: {params['results_dir']}: the resolved configuration of study {key} is missing", file=sys.stderr)
        return 2
    flags = ["--config", str(config)] + (["--audit", str(args.models)] if args.models is not None else [])
    flags += ["--attack", args.attack] if args.attack else []
    flags += [f for name in ("shadows", "targets", "audit_ceiling") if getattr(args, name) is not None
              for f in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]
    flags += ["--tracking-uri", args.tracking_uri] if args.tracking_uri else []
    from .cli import setup

    try:
        _, cfg, data = setup(flags)
    except (ConfigError, DataError, KeyError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    from .pipeline import execute

    return execute(cfg, data, start)


if __name__ == "__main__":
    from .launch import _exit

    _exit(main())
