"""The tracking writer: every queued MLflow write of a study, in order, in a process of its own.

Writing one trial's run costs tens of milliseconds of CPU in MLflow's store (the SQLAlchemy ORM;
`bench/driver.py`, docs/benchmarks.md). On a thread of the launcher that work would hold
the interpreter's lock the driver needs to hand out trials and ask Optuna; in this process
it does not. The launcher (`Writer`) sends each write as a message (an operation of
`Store` and its arguments) and gets back one acknowledgement per write, in order; a
write's `then` callback runs in the launcher once its acknowledgement arrives (so Optuna
hears of a trial only once its run is written).

A write that fails because the store cannot be reached is retried with backoff, in place,
so later writes stay behind it (`Retry`); past `outage_s` the process reports the outage
and skips the rest, and the launcher raises `TrackingError`. The process never outlives
the launcher: it exits as soon as its parent is gone, without writing what was still
queued (the resume rules cover that: a trial whose run was not written is run again).

Run as `python -m study.writer` by `Writer`; it imports MLflow, not Ray or PyTorch.
"""

from __future__ import annotations

import os
import pickle
import queue
import re
import signal
import subprocess
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from trainables import records

# HTTP statuses that say the server (or a proxy in front of it) cannot answer now, not that it refused the write.
TRANSIENT_STATUS = frozenset({408, 429, 502, 503, 504})
HTTP_STATUS = re.compile(r"API request to endpoint \S+ failed with error code (\d{3}) != \d{3}")  # MLflow's words


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written: one line for the user."""


def _chain(exc: BaseException):
    """`exc` and the exceptions it was raised from or while handling (MLflow's client wraps the one that
    says what happened, a connection error, in an exception of its own)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the store could not be reached (worth retrying), not that a write was refused:
    a connection error or time-out anywhere in its chain, an HTTP status that says "not now" (a proxy's 502,
    an overloaded server's 503, MLflow's own retries of those given up), or SQLite's lock time-out. A
    refused write (any other 4xx or 5xx, a value the store will not take) is not retried."""
    import requests
    import sqlite3
    from mlflow.exceptions import MlflowException, RestException

    for link in _chain(exc):
        if isinstance(link, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                             requests.exceptions.RetryError, ConnectionError, TimeoutError)):
            return True
        if isinstance(link, sqlite3.OperationalError) and "database is locked" in str(link):
            return True
        if isinstance(link, MlflowException):
            if link.get_http_status_code() in TRANSIENT_STATUS:
                return True
            # A non-JSON answer (a proxy's 502 page): MLflow keeps the status only in its own sentence
            said = None if isinstance(link, RestException) else HTTP_STATUS.match(link.message)
            if said and int(said.group(1)) in TRANSIENT_STATUS:
                return True
            # SQLite's lock time-out reaches us wrapped by SQLAlchemy and MLflow, its text kept (a server
            # sends it back as an internal error); a REST answer's text is the server's, so not read.
            if not isinstance(link, RestException) and "(sqlite3.OperationalError) database is locked" in link.message:
                return True
    return False


class Retry:
    """Runs `write(attempt)`, retrying while the store is unreachable (1 s doubling to 10 s); raises
    `TrackingError` once it has been unreachable for more than `outage_s`."""

    def __init__(self, outage_s: float, uri: str, pending=None):
        self.outage_s, self.uri, self.pending = outage_s, uri, pending
        self.down_since: float | None = None

    def __call__(self, write):
        attempt, delay = 0, 1.0
        while True:
            try:
                result = write(attempt)
            except Exception as exc:
                if not unreachable(exc):
                    raise
                now = time.time()
                if self.down_since is None:
                    self.down_since = now
                    print(f"[tracking] warning: {self.uri} unreachable ({str(exc).splitlines()[0][:160]}); "
                          f"writes are queued and retried for up to {self.outage_s:.0f}s", file=sys.stderr, flush=True)
                if now - self.down_since > self.outage_s:
                    raise TrackingError(
                        f"tracking URI {self.uri} unreachable for more than {self.outage_s:.0f}s (--tracking-outage); "
                        "the study stopped: start the tracking server and run the same command again to resume"
                    ) from None
                time.sleep(delay)
                attempt, delay = attempt + 1, min(2 * delay, 10.0)
                continue
            if self.down_since is not None:
                queued = f"{self.pending()} queued write(s)" if self.pending else "queued writes"
                print(f"[tracking] {self.uri} reachable again after {time.time() - self.down_since:.0f}s; "
                      f"{queued} continue", file=sys.stderr, flush=True)
                self.down_since = None
            return result


class Store:
    """The writes themselves, run in the writer process with its own MLflow client. Trials are named by
    their trial key; the process keeps each key's run id (an earlier attempt's run is reused, never
    duplicated: a create whose answer was lost is looked up before it is retried)."""

    def __init__(self, uri: str, experiment_id: str, parent_id: str, scratch: Path):
        from mlflow.tracking import MlflowClient

        self.uri, self.client = uri, MlflowClient(tracking_uri=uri)
        self.experiment_id, self.parent_id = experiment_id, parent_id
        self.known: dict[str, str] | None = None  # trial key -> run id, loaded on first use
        self.repos: dict[str, object] = {}  # run id -> artifact repository, for the runs created here
        self.scratch = scratch  # where artifacts are staged

    def _known(self) -> dict[str, str]:
        if self.known is None:
            df = records.child_runs(self.client, self.experiment_id, self.parent_id, None, None)
            self.known = dict(zip(df[records.TRIAL_KEY_COL], df["run_id"])) if len(df) else {}
        return self.known

    def _find(self, key: str) -> str | None:
        """The run of `key` as the store holds it now (read again: a retried create may have happened)."""
        self.known = None
        return self._known().get(key)

    def _create(self, key: str, name: str, tags: dict, started: float | None = None) -> str:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags,
                                     start_time=int(started * 1000) if started else None)
        self._known()[key] = run.info.run_id
        self.repos[run.info.run_id] = get_artifact_repository(run.info.artifact_uri, tracking_uri=self.uri)
        return run.info.run_id

    def _batch(self, run_id: str, metrics: dict | None = None, step: int = 0, params: dict | None = None,
               tags: dict | None = None, points: list | None = None) -> None:
        """Metrics (the curve `points`, (name, value, step) each, and the final values at `step`), params and
        tags of one run in as few requests as MLflow allows (1,000 entries each). Curves and final values
        have names of their own (`records.CURVE_PREFIX`), so a curve holds evaluations only."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, s) for k, v, s in points or []] + [
            Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
        params_ = [Param(k, records.param_text(v)) for k, v in (params or {}).items() if v is not None]
        tags_ = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        if not (items or params_ or tags_):
            return
        first = True
        for i in range(0, max(1, len(items)), 900):
            self.client.log_batch(run_id, metrics=items[i : i + 900], params=params_ if first else [],
                                  tags=tags_ if first else [])
            first = False

    def _arrays(self, run_id: str, arrays: dict) -> None:
        """Float arrays as compressed .npz artifacts, one per name (`records.load_arrays` reads them)."""
        for name, values in arrays.items():
            records.save_arrays(self.client, run_id, name, self.scratch, self.repos.get(run_id), **values)

    # --- the operations `Writer.submit` names; each takes the attempt number first ------------
    def _run(self, key: str, name: str, tags: dict, attempt: int, started: float | None = None) -> tuple[str, bool]:
        """The run of trial `key`: the one an earlier attempt (or an earlier study) left, or a new one;
        returns (run id, created now)."""
        run_id = self._known().get(key) or (self._find(key) if attempt else None)
        if run_id is not None:
            return run_id, False
        return self._create(key, name, tags, started), True

    def _missing(self, run_id: str, params: dict) -> dict:
        """The params a run found again lacks (a create whose batch failed left none); those it has stay as
        written (MLflow refuses a param logged again with another value, e.g. in an older encoding)."""
        have = self.client.get_run(run_id).data.params
        return {k: v for k, v in params.items() if k not in have}

    def open(self, attempt: int, key: str, name: str, tags: dict, params: dict, first_tags: dict,
             first_metrics: dict) -> str:
        """A trial's run as it starts: created, or the one an earlier attempt left reopened, with whichever
        of its params that run lacks."""
        run_id, created = self._run(key, name, tags, attempt)
        if not created:
            self.client.update_run(run_id, status="RUNNING")
        self._batch(run_id, first_metrics, params=params if created else self._missing(run_id, params),
                    tags=first_tags if created else {records.TRIAL_ID_TAG: tags[records.TRIAL_ID_TAG], **first_tags})
        return run_id

    def log(self, attempt: int, key: str, metrics: dict | None = None, step: int = 0, tags: dict | None = None) -> str:
        run_id = self._known()[key]
        self._batch(run_id, metrics, step, tags=tags)
        return run_id

    def finish(self, attempt: int, key: str, status: str, metrics: dict, step: int, tags: dict, arrays: dict,
               points: list) -> str:
        run_id = self._known()[key]
        self._batch(run_id, metrics, step, tags=tags, points=points)
        self._arrays(run_id, arrays)
        self.client.set_terminated(run_id, status=status)
        return run_id

    def write_ended(self, attempt: int, key: str, name: str, tags: dict, params: dict, status: str, metrics: dict,
               step: int, arrays: dict, points: list, started: float | None, ended: float | None) -> str:
        """A trial written whole once it has ended (an item of a bundle): three requests, not five (a run found
        again: its missing params, as in `open`)."""
        run_id, created = self._run(key, name, tags, attempt, started)
        self._batch(run_id, metrics, step, params=params if created else self._missing(run_id, params),
                    tags=None if created else tags, points=points)
        self._arrays(run_id, arrays)
        self.client.set_terminated(run_id, status=status, end_time=int(ended * 1000) if ended else None)
        return run_id

    def log_parent(self, attempt: int, run_id: str, metrics: dict) -> str:
        """The study's headline numbers on its parent run."""
        self._batch(run_id, metrics)
        return run_id

    def kill(self, attempt: int, run_id: str) -> None:
        """A run left RUNNING by a killed study: marked interrupted and KILLED."""
        self.client.set_tag(run_id, "interrupted", "true")
        self.client.set_terminated(run_id, status="KILLED")

    def set_tag(self, attempt: int, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def log_artifact(self, attempt: int, run_id: str, path: str, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, path, folder)


class Writer:
    """The launcher's side: writes queued, in order, to the writer process, started on the first write.

    One process: a second one, with SQLite, only made the two wait for each other's locks, and
    against a tracking server it gained nothing (docs/benchmarks.md). `submit` never waits for the
    store (a thread feeds the process); `flush()` waits until every queued write is
    acknowledged and its `then` has run (on one thread, in order); `call(write)` runs a write
    (or a read) now, in the launcher, retried like a queued one. Once the process reports an
    outage past its limit, or ends unasked, `submit`, `flush` and `call` raise
    `TrackingError`.
    """

    def __init__(self, outage_s: float, uri: str):
        self.outage_s, self.uri = outage_s, uri
        self.error: TrackingError | None = None
        self.busy_s = 0.0  # time the process spent writing, for bench/driver.py
        self.retry = Retry(outage_s, uri, lambda: self.unacked)
        self.store_args: tuple = (None, None)  # (experiment id, parent run id), set by `Tracker`
        self.proc: subprocess.Popen | None = None
        self.outbox: queue.Queue = queue.Queue()
        self.waiting: dict[int, object] = {}  # sequence number -> then callback (or None)
        self.sent = self.acked = 0
        self.closing = False  # set by `close`: the process ending is then expected
        self.done = threading.Condition()

    @property
    def unacked(self) -> int:
        return self.sent - self.acked

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
               # Against a tracking server, MLflow's client reads each run back as it is terminated, to print
               # a "View run" link: one line per trial on the launcher's stderr and a request that, with
               # the whole run in its answer, took half the time of the terminate (docs/benchmarks.md).
               "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
        self.proc = subprocess.Popen([sys.executable, "-m", "study.writer"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=root)
        pickle.dump((self.uri, self.outage_s, os.getpid(), *self.store_args), self.proc.stdin)
        self.proc.stdin.flush()
        threading.Thread(target=self._feed, name="tracking-feed", daemon=True).start()
        self.ack_thread = threading.Thread(target=self._acks, name="tracking-acks", daemon=True)
        self.ack_thread.start()

    def submit(self, op: str, then=None, **kwargs) -> None:
        """Queue `Store.<op>(**kwargs)`; `then(run_id)` runs once it is written (the run it wrote to)."""
        with self.done:  # the error is read under the lock that `_acks` sets it under, with `sent` and `acked`
            if self.error:
                raise self.error
            if self.proc is None:
                self._start()
            seq = self.sent
            self.sent += 1
            self.waiting[seq] = then
        self.outbox.put((seq, op, kwargs))

    def _feed(self) -> None:
        proc, outbox = self.proc, self.outbox  # this process's: `close` replaces both for a later one
        try:
            while (message := outbox.get()) is not None:
                pickle.dump(message, proc.stdin)
                if outbox.empty():
                    proc.stdin.flush()
            proc.stdin.close()
        except (OSError, ValueError):
            pass  # the process is gone: `_acks` says so

    def _acks(self) -> None:
        proc = self.proc
        while True:
            try:
                kind, seq, detail, busy = pickle.load(proc.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                kind, seq, detail, busy = "died", None, proc.wait(), 0.0
            if kind == "fatal" and self.error is None:
                self.error = TrackingError(detail)
            elif kind == "died" and self.error is None and not self.closing:  # idle or not: nothing more can be
                unwritten = f" with {self.unacked} write(s) unwritten" if self.unacked else ""  # written
                self.error = TrackingError(f"the tracking writer process ended (exit code {detail}){unwritten}; "
                                           "run the same command to resume")
            with self.done:
                then = self.waiting.pop(seq, None) if kind == "ack" else None
            if then is not None and detail and self.error is None:  # detail: the run id written (None: the
                try:  # store refused it, and its trial stays untold, to run again on resume)
                    then(detail)
                except Exception as exc:  # a bug in the launcher's follow-up: every waiter must still be released
                    self.error = TrackingError(f"after a tracking write: {type(exc).__name__}: {exc}")
            with self.done:
                self.busy_s += busy
                if kind == "ack":
                    self.acked += 1
                if self.error is not None:  # nothing more will be written: release every waiter
                    self.acked, self.waiting = self.sent, {}
                self.done.notify_all()
            if kind != "ack":
                return

    def flush(self) -> None:
        with self.done:
            self.done.wait_for(lambda: self.acked >= self.sent or self.error is not None)
            if self.error:
                raise self.error

    def call(self, write):
        """Run `write(attempt)` now, in the launcher, retried like a queued write; an outage past its limit
        stops the writer as one in the process would (`error` set, every later write refused)."""
        if self.error:
            raise self.error
        try:
            return self.retry(write)
        except TrackingError as exc:
            with self.done:
                self.error = self.error or exc
                self.acked, self.waiting = self.sent, {}
                self.done.notify_all()
            raise

    def abandon(self) -> None:
        """The process ends now, what is still queued unwritten (after an outage past its limit: a rerun
        resumes from what the store holds)."""
        if self.proc is not None:
            self.closing = True
            self.proc.kill()
            self.close()

    def close(self) -> None:
        """Every queued write done, then the process ends."""
        if self.proc is not None:
            self.closing = True
            self.outbox.put(None)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.ack_thread.join(timeout=30)  # it has seen the process end, as expected
            self.proc, self.outbox, self.closing = None, queue.Queue(), False  # a later write starts a new one


def _serve() -> None:
    """The writer process: read writes, run them in order, acknowledge each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's: it flushes, then closes us
    inbox = sys.stdin.buffer
    outbox = os.fdopen(os.dup(1), "wb")  # the acknowledgements; anything else written to stdout goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    uri, outage_s, parent, experiment_id, parent_id = pickle.load(inbox)

    def orphaned() -> bool:
        return os.getppid() != parent

    scratch = Path(tempfile.mkdtemp(prefix="gli-writer-"))

    def watch() -> None:  # a launcher killed outright: stop now, mid-retry included, write nothing more
        while not orphaned():
            time.sleep(0.1)
        shutil.rmtree(scratch, ignore_errors=True)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    store = Store(uri, experiment_id, parent_id, scratch)
    retry = Retry(outage_s, uri)
    failed = False
    while True:
        try:
            message = pickle.load(inbox)
        except EOFError:
            break
        if message is None:
            break
        seq, op, kwargs = message
        started, written = time.perf_counter(), None
        if not failed and not orphaned():
            try:
                written = retry(lambda attempt: getattr(store, op)(attempt, **kwargs)) or True
            except TrackingError as exc:
                failed = True
                pickle.dump(("fatal", seq, str(exc), time.perf_counter() - started), outbox)
                outbox.flush()
                continue
            except Exception as exc:  # a write the store refused: one line, the study goes on
                what = kwargs.get("key") or kwargs.get("run_id") or ""
                print(f"[tracking] warning: the store refused {op} {what} ({str(exc).splitlines()[0][:200]}); "
                      "its trial is not recorded and runs again on resume", file=sys.stderr, flush=True)
        pickle.dump(("ack", seq, written, time.perf_counter() - started), outbox)
        outbox.flush()
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    _serve()
