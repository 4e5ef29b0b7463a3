"""`python -m study.launch`: the GLI unlearning study on a Ray cluster, tracked in MLflow.

The command line is `study.cli`'s; the stages and what each waits for are `study.pipeline`'s
(its docstring says what runs). With no flags it runs the whole study on digits on the local
CPU; rerunning the same command resumes the same study, and a command whose settings change a
number starts a new one (and says which settings differ).
"""

from __future__ import annotations

import os
import sys
import time

from trainables.data import DataError

from .config import ConfigError

os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C reaches the launcher, which stops cleanly


def main(argv: list[str] | None = None) -> int:
    start = time.time()
    from .cli import setup

    try:
        args, cfg, data = setup(argv)
    except (ConfigError, DataError, KeyError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    from .pipeline import execute  # MLflow, Optuna, Tune's search and the figures load on a thread while Ray starts

    return execute(cfg, data, start, dashboard=args.dashboard)


def _exit(code: int) -> None:
    """Exit without the interpreter's slow teardown of PyTorch, Ray and MLflow (seconds, once
    everything is written): the tracking runs are closed and Ray is stopped by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
