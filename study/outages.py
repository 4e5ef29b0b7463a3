"""How a failed tracking write is classified, and the clock an outage is timed on.

A failure is one of three kinds: an outage (`unreachable`: the store cannot be reached now, worth
retrying), a refusal (`refused`: the store's answer to a write, a status that says no or a value it
will not take; the write is skipped with a warning), or anything else, a bug (`failure`: its
traceback on stderr, and the one line, a `TrackingError`, that stops the study as an outage does).
`Retry` runs a write, retrying it in place with backoff while the store is unreachable, and raises
`TrackingError` once the outage has lasted more than `outage_s`.

Used on both sides of the tracking writer (`study.writer`): in its process, and in the launcher's
own calls (`Writer.call`). Imports MLflow only when a failure is classified.
"""

from __future__ import annotations

import re
import sys
import time
import traceback

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


def refused(exc: BaseException) -> bool:
    """Whether `exc` is the store's answer to a write, a refusal (a status that says no, a value it will
    not take): an MLflow error with a 4xx or 5xx status, not an outage, raised from nothing but the store's,
    its database's or its transport's own exceptions. Anything else is a bug in the writer or the store."""
    import requests
    import sqlite3
    import sqlalchemy
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException) or not 400 <= exc.get_http_status_code() < 600 or unreachable(exc):
        return False
    answers = (MlflowException, sqlalchemy.exc.SQLAlchemyError, sqlite3.DatabaseError,
               requests.exceptions.RequestException, OSError)  # MLflow's local store wraps any exception
    return all(isinstance(link, answers) for link in _chain(exc))


def failure(exc: BaseException, what: str) -> TrackingError:
    """A bug met on `what` (neither an outage nor a refusal): its traceback on stderr, and the one line that
    stops the study (the trials it leaves unrecorded would otherwise go unnoticed)."""
    traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()
    line = (str(exc).splitlines() or [""])[0][:200]
    return TrackingError(f"{what}: {type(exc).__name__}: {line} (a bug: its traceback is above); the study stopped")


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
                    if refused(exc):
                        self._answered()
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
            self._answered()
            return result

    def _answered(self) -> None:
        """The store answered (a write taken or refused): an outage is over, and the next one is timed
        from its own start."""
        if self.down_since is not None:
            queued = f"{self.pending()} queued write(s)" if self.pending else "queued writes"
            print(f"[tracking] {self.uri} reachable again after {time.time() - self.down_since:.0f}s; "
                  f"{queued} continue", file=sys.stderr, flush=True)
            self.down_since = None
