"""The tracking writer process (study/writer.py) and the trials it records whole (bundles)."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from study.tracking import RunHandle, Tracker, TrackingError
from trainables import records


def _tracker(tmp_path: Path, name: str = "w") -> Tracker:
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", name, tmp_path / "artifacts", outage_s=5)
    tracker.start_parent("study", name, {"a": 1}, {})
    return tracker


def test_a_trial_recorded_whole_has_its_run_params_curve_arrays_and_times(tmp_path):
    tracker = _tracker(tmp_path)
    told = []
    started, ended = time.time() - 5, time.time() - 1
    tracker.write_ended("gli/gli/0/abc", "gli", "gli", 0, {"step_size": 0.01, "iterations": 3}, "t1#0", "FINISHED",
                   {"accuracy": 0.9, "flag": True, "name": "not a number"}, 12, {"node_id": "n1"},
                   {records.LOSSES_ARTIFACT: {"forget": [1.0, 2.0], "unseen": [3.0]}},
                   [{"step": 1, "sel_accuracy": 0.5}, {"step": 2, "sel_accuracy": 0.6}], started, ended,
                   then=lambda run_id: told.append("t1#0"))
    tracker.flush()
    assert told == ["t1#0"]  # `then` has run once flush returns
    df = tracker.children("gli")
    assert len(df) == 1
    row = df.iloc[0]
    assert row["tags.trial_key"] == "gli/gli/0/abc" and row["tags.node_id"] == "n1" and row["tags.trial_id"] == "t1#0"
    assert row["params.step_size"] == "0.01" and row["accuracy"] == 0.9 and "flag" not in df and "name" not in df
    run = tracker.client.get_run(row["run_id"])
    assert (run.info.start_time, run.info.end_time) == (int(started * 1000), int(ended * 1000))
    history = tracker.client.get_metric_history(row["run_id"], "eval/sel_accuracy")  # the curve: evaluations only
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.6)]
    forget, unseen = records.load_losses(tracker.client, row["run_id"])
    assert forget.tolist() == [1.0, 2.0] and unseen.tolist() == [3.0]
    tracker.end_parent("FINISHED")


def test_a_trial_recorded_again_reuses_its_run(tmp_path):
    """A retried bundle, or a resumed study, records a trial whose earlier attempt left a run: never two."""
    tracker = _tracker(tmp_path)
    tracker.open_child("k1", "gli", "gli", 0, {"step_size": 0.01}, "t1")  # an attempt that died
    tracker.flush()
    tracker.write_ended("k1", "gli", "gli", 0, {"step_size": 0.01}, "t2#0", "FINISHED", {"accuracy": 0.5})
    tracker.flush()
    df = tracker.children(status=None)
    assert len(df) == 1 and df.iloc[0]["status"] == "FINISHED" and df.iloc[0]["tags.trial_id"] == "t2#0"
    assert df.iloc[0]["params.step_size"] == "0.01"
    tracker.end_parent("FINISHED")


def test_a_refused_write_warns_and_leaves_its_trial_untold(tmp_path, capfd):
    tracker = _tracker(tmp_path)
    told = []
    tracker.log(tracker.open_child("k1", "gli", "gli", 0, {}, "t1"), {"accuracy": 0.5})
    # A write for a trial the writer never opened is refused by the store's side: one line, no `then`.
    tracker.finish(RunHandle("never-opened"), "FINISHED",
                   {"accuracy": 0.5}, then=lambda run_id: told.append("x"))
    tracker.write_ended("k2", "gli", "gli", 0, {}, "t2", "FINISHED", {"accuracy": 0.5}, then=lambda run_id: told.append(run_id))
    tracker.flush()
    assert told == list(tracker.children(status=None).query("`tags.trial_key` == 'k2'")["run_id"])  # goes on
    err = capfd.readouterr().err
    assert "the store refused finish never-opened" in err and "runs again on resume" in err
    tracker.end_parent("FINISHED")


def test_the_writer_process_gone_with_writes_queued_stops_the_study_in_one_line(tmp_path):
    tracker = _tracker(tmp_path)
    tracker.write_ended("k0", "gli", "gli", 0, {}, "t0", "FINISHED", {"accuracy": 0.5})
    tracker.flush()
    proc = tracker.writer.proc
    os.kill(proc.pid, signal.SIGSTOP)  # writes queue up behind a writer that cannot run
    for i in range(1, 5):
        tracker.write_ended(f"k{i}", "gli", "gli", 0, {}, f"t{i}", "FINISHED", {"accuracy": 0.5})
    os.kill(proc.pid, signal.SIGKILL)
    with pytest.raises(TrackingError, match=r"tracking writer process ended .* write\(s\) unwritten; run the same"):
        tracker.flush()
    with pytest.raises(TrackingError):
        tracker.write_ended("k9", "gli", "gli", 0, {}, "t9", "FINISHED", {"accuracy": 0.5})


def test_the_writer_process_gone_while_idle_fails_the_next_write_instead_of_hanging(tmp_path):
    tracker = _tracker(tmp_path)
    tracker.write_ended("k0", "gli", "gli", 0, {}, "t0", "FINISHED", {"accuracy": 0.5})
    tracker.flush()
    os.kill(tracker.writer.proc.pid, signal.SIGKILL)
    tracker.writer.proc.wait(timeout=10)
    deadline = time.time() + 10
    while tracker.writer.error is None and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(TrackingError, match=r"tracking writer process ended \(exit code -9\); run the same"):
        tracker.write_ended("k1", "gli", "gli", 0, {}, "t1", "FINISHED", {"accuracy": 0.5})


def test_the_writer_process_never_outlives_the_launcher(tmp_path):
    """Killed outright, the launcher leaves no writer behind to write what it had queued."""
    import subprocess
    import sys

    code = f"""
import os, signal, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from study.tracking import Tracker
t = Tracker("sqlite:///{tmp_path}/m.db", "orphan", None, outage_s=5)
t.start_parent("s", "orphan", {{}}, {{}})
t.write_ended("k0", "gli", "gli", 0, {{}}, "t0", "FINISHED", {{"accuracy": 0.5}})
t.flush()
print(t.writer.proc.pid, flush=True)
os.kill(t.writer.proc.pid, signal.SIGSTOP)
for i in range(1, 50):
    t.write_ended(f"k{{i}}", "gli", "gli", 0, {{}}, f"t{{i}}", "FINISHED", {{"accuracy": 0.5}})
time.sleep(0.5)
os.kill(os.getpid(), signal.SIGKILL)
"""
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
    writer = int(launcher.stdout.readline())
    assert launcher.wait(timeout=120) == -signal.SIGKILL
    os.kill(writer, signal.SIGCONT)  # free to run again, orphaned: it must exit without writing
    deadline = time.time() + 10
    while time.time() < deadline and Path(f"/proc/{writer}").exists() and "Z" not in _state(writer):
        time.sleep(0.1)
    assert not Path(f"/proc/{writer}").exists() or "Z" in _state(writer)
    with sqlite3.connect(tmp_path / "m.db") as db:
        children = db.execute("select count(*) from tags where key = 'trial_key'").fetchone()[0]
    assert children == 1  # only the write acknowledged before the kill


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_the_tracking_database_is_in_write_ahead_log_mode(tmp_path):
    _tracker(tmp_path).end_parent("FINISHED")
    with sqlite3.connect(tmp_path / "m.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_curve_holds_evaluations_only_and_the_chosen_value_has_its_own_name(tmp_path):
    """The final (chosen) value never lands on the curve: a curve whose last evaluation is not the chosen one
    ends where the evaluations end, and the chosen value is one point under the plain name."""
    tracker = _tracker(tmp_path)
    curve = [{"step": 5, "sel_accuracy": 0.7}, {"step": 10, "sel_accuracy": 0.99}]  # the last one is not chosen
    tracker.write_ended("k1", "gli", "gli", 0, {}, "t1", "FINISHED", {"sel_accuracy": 0.7}, 10, curve=curve)
    handle = tracker.open_child("k2", "gli", "gli", 0, {}, "t2")
    tracker.finish(handle, "FINISHED", {"sel_accuracy": 0.7}, 10, curve=curve)
    tracker.flush()
    df = tracker.children("gli")
    assert sorted(df["sel_accuracy"]) == [0.7, 0.7] and not any(c.startswith("eval/") for c in df.columns)
    for run_id in df["run_id"]:
        points = tracker.client.get_metric_history(run_id, "eval/sel_accuracy")
        assert [(m.step, m.value) for m in points] == [(5, 0.7), (10, 0.99)]
        assert [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, "sel_accuracy")] == [(10, 0.7)]
    tracker.end_parent("FINISHED")


def test_system_values_are_named_apart_from_results():
    from study.callback import outcome

    status, metrics, _, tags, _, _ = outcome({"final": 1.0, "accuracy": 0.9, "scheduled_at": 1.0, "gpu_id": 0.0,
                                             "peak_rss_mb": 300.0, "trial_seconds": 2.0, "accel": '{"precision": "fp32"}'})
    assert status == "FINISHED" and metrics == {"accuracy": 0.9, "system/scheduled_at": 1.0, "system/gpu_id": 0.0,
                                                 "system/peak_rss_mb": 300.0, "system/trial_seconds": 2.0}
    assert tags == {"accel": '{"precision": "fp32"}'}


class _FailingOnce:
    """A client method that fails the first `times` calls as an unreachable server does, then works."""

    def __init__(self, method, times: int = 1):
        self.method, self.left = method, times

    def __call__(self, *args, **kwargs):
        if self.left:
            self.left -= 1
            import requests

            raise requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected())")
        return self.method(*args, **kwargs)


@pytest.mark.parametrize("op", ["open", "write_ended"])
def test_a_create_whose_first_batch_failed_still_ends_with_its_params(tmp_path, op):
    """The store fails between a child's create and its first batch: the retry finds the run the create
    made and must still log its params (not only its tags)."""
    from study.outages import Retry
    from study.store import Store

    tracker = _tracker(tmp_path)
    tracker.flush()
    store = Store(tracker.uri, tracker.experiment_id, tracker.parent_id, tmp_path)
    store.client.log_batch = _FailingOnce(store.client.log_batch)
    retry = Retry(30, tracker.uri)
    tags = {records.PARENT_TAG: tracker.parent_id, "method": "gli", "stage": "gli", "seed": "0", "trial_key": "k1",
            "trial_id": "t1"}
    params = {"step_size": 0.01, "iterations": 3}
    if op == "open":
        run_id = retry(lambda attempt: store.open(attempt, "k1", "n", tags, params, {}, {"system/scheduled_at": 1.0}))
    else:
        run_id = retry(lambda attempt: store.write_ended(attempt, "k1", "n", tags, params, "FINISHED", {"accuracy": 0.5},
                                                    1, {}, [], None, None))
    assert store.client.log_batch.left == 0  # the failure did happen
    assert tracker.client.get_run(run_id).data.params == {"step_size": "0.01", "iterations": "3"}
    assert len(tracker.children(status=None)) == 1  # one run, found again, not a second one
    tracker.end_parent("FINISHED")


def test_an_outage_in_a_launcher_side_call_stops_the_writer_like_one_in_its_process(tmp_path):
    """`Writer.call` past the outage limit sets the writer's error: the launcher then prints one line, and
    every later write is refused at once instead of waiting out a second outage."""
    import requests

    tracker = _tracker(tmp_path)
    tracker.writer.outage_s = tracker.writer.retry.outage_s = 0.2

    def down(attempt):
        raise requests.exceptions.ConnectionError("connection refused")

    with pytest.raises(TrackingError, match="unreachable for more than 0s"):
        tracker.writer.call(down)
    assert isinstance(tracker.writer.error, TrackingError)
    with pytest.raises(TrackingError):
        tracker.write_ended("k1", "gli", "gli", 0, {}, "t1", "FINISHED", {"accuracy": 0.5})
    with pytest.raises(TrackingError):
        tracker.flush()
    tracker.writer.abandon()
    assert tracker.writer.proc is None


def test_flush_returns_once_the_writer_has_failed_even_with_a_write_counted_after_the_failure(tmp_path):
    """A write counted as sent after the writer failed (a submit racing the failure) must not leave flush
    waiting for an acknowledgement that can never come."""
    import threading

    tracker = _tracker(tmp_path)
    tracker.write_ended("k0", "gli", "gli", 0, {}, "t0", "FINISHED", {"accuracy": 0.5})
    tracker.flush()
    tracker.writer.proc.kill()
    tracker.writer.ack_thread.join()  # the failure is recorded, every waiter released
    assert tracker.writer.error is not None
    with tracker.writer.done:
        tracker.writer.sent += 1  # what a submit that read the error before it was set went on to do
    raised = []
    flusher = threading.Thread(target=lambda: raised.append(pytest.raises(TrackingError, tracker.writer.flush)),
                               daemon=True)
    flusher.start()
    flusher.join(timeout=60)  # a hang guard, not a speed bound: it returns at once or never
    assert not flusher.is_alive() and len(raised) == 1


@pytest.mark.parametrize("make,outage", [
    (lambda E: E.MlflowException("INVALID_PARAMETER_VALUE: param 'run_503' = '502' exceeds the limit",
                                 error_code=E.INVALID_PARAMETER_VALUE), False),
    (lambda E: E.RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "run 5035020 not found"}), False),
    (lambda E: E.RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "try later"}), True),
    (lambda E: E.MlflowException("API request to endpoint /x failed with error code 502 != 200",
                                 error_code=E.get_error_code(502)), True),
    (lambda E: E.MlflowException("API request to endpoint /x failed with error code 400 != 200 (a value 503)",
                                 error_code=E.get_error_code(400)), False),
    (lambda E: E.wrapped_connection_error(), True),
])
def test_outages_are_told_from_refused_writes_by_status_and_cause_not_by_digits_in_the_text(make, outage):
    from mlflow import exceptions as mlflow_exceptions
    from mlflow.protos import databricks_pb2

    from study.outages import unreachable

    def wrapped_connection_error():  # as MLflow's REST client raises it: its own exception, the cause inside
        import requests

        try:
            raise requests.exceptions.ConnectionError("Max retries exceeded (run 503)")
        except requests.exceptions.ConnectionError as exc:
            try:
                raise mlflow_exceptions.MlflowException(f"API request to /x failed with exception {exc}")
            except mlflow_exceptions.MlflowException as wrapped:
                return wrapped

    E = type("E", (), {"MlflowException": mlflow_exceptions.MlflowException,
                       "RestException": mlflow_exceptions.RestException,
                       "get_error_code": staticmethod(mlflow_exceptions.get_error_code),
                       "INVALID_PARAMETER_VALUE": databricks_pb2.INVALID_PARAMETER_VALUE,
                       "wrapped_connection_error": staticmethod(wrapped_connection_error)})
    assert unreachable(make(E)) is outage


def test_a_run_found_again_keeps_its_params_and_gets_the_ones_it_lacks(tmp_path, capfd):
    """A run left by an earlier study (params in the older JSON encoding, `"layer3"`) or by a create whose batch
    failed (no params): reopening it adds what it lacks and never rewrites what it has, which MLflow refuses."""
    tracker = _tracker(tmp_path)
    tracker.flush()
    tags = {records.PARENT_TAG: tracker.parent_id, records.METHOD_TAG: "eu_k", records.STAGE_TAG: "baseline",
            records.SEED_TAG: "0", records.TRIAL_KEY_TAG: "k1", records.TRIAL_ID_TAG: "t0"}
    old = tracker.client.create_run(tracker.experiment_id, tags=tags).info.run_id
    tracker.client.log_param(old, "blocks", '"layer3"')
    tracker.open_child("k1", "baseline", "eu_k", 0, {"blocks": "layer3", "lr": 0.1}, "t1")
    tracker.flush()
    assert tracker.client.get_run(old).data.params == {"blocks": '"layer3"', "lr": "0.1"}
    assert "refused" not in capfd.readouterr().err
    tracker.end_parent("FINISHED")


def test_a_long_report_is_cut_at_a_line_where_mlflow_would_cut_it_anywhere():
    from study.tracking import NOTE_LIMIT, parent_note

    short = "# study\n\n| a | b |\n"
    assert parent_note(short) == short
    long = "".join(f"| row {i} | {'x' * 60} |\n" for i in range(200))
    note = parent_note(long)
    assert len(note) <= NOTE_LIMIT and note.endswith("the `summary/summary.md` artifact of this run)\n")
    body = note.split("\n\n(cut here")[0]
    assert long.startswith(body) and body.endswith("|")  # whole rows only


def test_children_are_read_again_only_after_a_write(tmp_path, monkeypatch):
    """A resumed study activates its rounds one after another with nothing run between them: each asks for the
    same children, which are read from the store once; any write since makes the next ask read again."""
    tracker = _tracker(tmp_path)
    tracker.write_ended("k1", "gli", "gli", 0, {}, "t1", "FINISHED", {"accuracy": 0.5})
    reads = []
    real = records.child_runs
    monkeypatch.setattr(records, "child_runs", lambda *args: reads.append(args[3:]) or real(*args))
    first = tracker.children("gli")
    first.loc[:, "accuracy"] = 0.0  # a caller that changes what it got changes nothing for the next
    again = tracker.children("gli")
    assert reads == [("gli", "FINISHED")] and again["accuracy"].tolist() == [0.5]
    tracker.children()  # another question: read once
    tracker.children()
    assert reads == [("gli", "FINISHED"), (None, "FINISHED")]
    tracker.write_ended("k2", "gli", "gli", 1, {}, "t2", "FINISHED", {"accuracy": 0.7})
    assert sorted(tracker.children("gli")["accuracy"]) == [0.5, 0.7] and len(reads) == 3  # read after the write
    tracker.end_parent("FINISHED")


class _Clock:
    """The writer's clock, made up: a retry's sleep moves it on at once (the outage limit is counted on it)."""

    def __init__(self):
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_an_outage_that_ends_in_a_refused_write_leaves_the_next_blip_its_whole_limit(tmp_path, monkeypatch):
    """The store's answer, a refusal included, ends an outage: a one-second blip long after it must be
    retried, not taken for the same outage gone on past its limit."""
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    import study.outages

    tracker = _tracker(tmp_path)
    clock = _Clock()
    monkeypatch.setattr(study.outages, "time", clock)
    tracker.writer.retry.outage_s = 30
    attempts = []

    def down_then_refused(attempt):  # down for 7 s of the 30 the limit allows, then an answer: no
        attempts.append(attempt)
        if attempt < 4:
            raise requests.exceptions.ConnectionError("connection refused")
        raise MlflowException("run not found", error_code=RESOURCE_DOES_NOT_EXIST)

    with pytest.raises(MlflowException):
        tracker.writer.call(down_then_refused)
    assert attempts == [0, 1, 2, 3, 4] and tracker.writer.error is None  # a refusal is the caller's
    clock.now += 3600  # an hour of writes later, a blip
    attempts.clear()

    def blip(attempt):
        attempts.append(attempt)
        if attempt == 0:
            raise requests.exceptions.ConnectionError("connection refused")
        return "written"

    assert tracker.writer.call(blip) == "written" and attempts == [0, 1]
    assert tracker.writer.error is None
    tracker.end_parent("FINISHED")


@pytest.mark.parametrize("where", ["process", "launcher"])
def test_a_bug_in_the_store_stops_the_writer_in_one_line_with_its_traceback_logged(tmp_path, capfd, where):
    """A TypeError in the store is no refusal: the study stops (one line for the user, the traceback on
    stderr) instead of going on with trials unrecorded; the process and the launcher's calls alike."""
    tracker = _tracker(tmp_path)
    if where == "process":
        tracker.open_child("k1", "gli", "gli", 0, {}, "t1")
        tracker.writer.submit("log", key="k1", metrics={"accuracy": [0.5]})  # float() of a list, in `Store._batch`
        with pytest.raises(TrackingError) as raised:
            tracker.flush()
    else:
        def buggy(attempt):
            return None + attempt

        with pytest.raises(TrackingError) as raised:
            tracker.writer.call(buggy)
    line = str(raised.value)
    assert "TypeError" in line and "\n" not in line and tracker.writer.error is raised.value
    err = capfd.readouterr().err
    assert "Traceback (most recent call last)" in err and ("in _batch" if where == "process" else "in buggy") in err
    assert "store refused" not in err
    with pytest.raises(TrackingError):
        tracker.write_ended("k2", "gli", "gli", 0, {}, "t2", "FINISHED", {"accuracy": 0.5})
    with pytest.raises(TrackingError):
        tracker.writer.call(lambda attempt: "never run")
    tracker.writer.abandon()


@pytest.mark.parametrize("case,answer", [
    ("not found", True), ("server error", True), ("TypeError", False), ("KeyError", False),
    ("TypeError wrapped", False),  # MLflow's local store wraps any exception in its own
    ("IntegrityError wrapped", True),
])
def test_a_refusal_is_an_answer_of_the_store_not_any_exception(case, answer):
    import sqlite3

    from mlflow.exceptions import MlflowException, RestException

    from study.outages import refused

    def wrapped(cause):
        try:
            raise cause
        except Exception:
            try:
                raise MlflowException(str(cause))
            except MlflowException as exc:
                return exc

    make = {"not found": lambda: RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "run not found"}),
            "server error": lambda: RestException({"error_code": "INTERNAL_ERROR", "message": "boom"}),
            "TypeError": lambda: TypeError("unsupported operand"), "KeyError": lambda: KeyError("k1"),
            "TypeError wrapped": lambda: wrapped(TypeError("unsupported operand")),
            "IntegrityError wrapped": lambda: wrapped(sqlite3.IntegrityError("UNIQUE constraint failed"))}
    assert refused(make[case]()) is answer
