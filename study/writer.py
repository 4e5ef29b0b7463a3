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
and skips the rest, and the launcher raises `TrackingError`. A write the store refuses is
skipped with a warning; any other failure is a bug, which stops the study as an outage does
(its traceback on stderr); how a failure is told apart, and the outage clock, are in
`study.outages`. The process never outlives the launcher: it exits as soon as its parent
is gone, without writing what was still queued (the resume rules cover that: a trial
whose run was not written is run again).

This module holds both ends of that pipe: `Writer`, the launcher's side, and `_serve`, the
process's loop; the writes themselves are `study.store.Store`'s operations. Run as
`python -m study.writer` by `Writer`; it imports MLflow, not Ray or PyTorch.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import subprocess
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from .outages import Retry, TrackingError, failure, refused
from .store import Store


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
                    self.error = failure(exc, "after a tracking write")
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
        """Run `write(attempt)` now, in the launcher, retried like a queued write; an outage past its limit,
        or a bug, stops the writer as one in the process would (`error` set, every later write refused); a
        refusal is the caller's to handle."""
        if self.error:
            raise self.error
        try:
            return self.retry(write)
        except Exception as exc:
            if refused(exc):
                raise
            stop = exc if isinstance(exc, TrackingError) else failure(exc, "a tracking call")
            with self.done:
                self.error = self.error or stop
                self.acked, self.waiting = self.sent, {}
                self.done.notify_all()
            if stop is exc:
                raise
            raise stop from None

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
            except Exception as exc:
                what = kwargs.get("key") or kwargs.get("run_id") or ""
                if not refused(exc):  # a bug: the study stops, as after an outage
                    failed = True
                    pickle.dump(("fatal", seq, str(failure(exc, f"the tracking write {op} {what}".rstrip())),
                                 time.perf_counter() - started), outbox)
                    outbox.flush()
                    continue
                print(f"[tracking] warning: the store refused {op} {what} ({str(exc).splitlines()[0][:200]}); "
                      "its trial is not recorded and runs again on resume", file=sys.stderr, flush=True)
        pickle.dump(("ack", seq, written, time.perf_counter() - started), outbox)
        outbox.flush()
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    _serve()
