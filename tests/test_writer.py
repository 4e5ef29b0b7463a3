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
    tracker.record("gli/gli/0/abc", "gli", "gli", 0, {"step_size": 0.01, "iterations": 3}, "t1#0", "FINISHED",
                   {"accuracy": 0.9, "flag": True, "name": "not a number"}, 12, {"node_id": "n1"},
                   {records.LOSSES_ARTIFACT: {"forget": [1.0, 2.0], "unseen": [3.0]}},
                   [{"step": 1, "sel_accuracy": 0.5}, {"step": 2, "sel_accuracy": 0.6}], started, ended,
                   then=lambda: told.append("t1#0"))
    tracker.flush()
    assert told == ["t1#0"]  # `then` has run once flush returns
    df = tracker.children("gli")
    assert len(df) == 1
    row = df.iloc[0]
    assert row["tags.trial_key"] == "gli/gli/0/abc" and row["tags.node_id"] == "n1" and row["tags.trial_id"] == "t1#0"
    assert row["params.step_size"] == "0.01" and row["accuracy"] == 0.9 and "flag" not in df and "name" not in df
    run = tracker.client.get_run(row["run_id"])
    assert (run.info.start_time, run.info.end_time) == (int(started * 1000), int(ended * 1000))
    history = tracker.client.get_metric_history(row["run_id"], "sel_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.6)]
    forget, unseen = records.load_losses(tracker.client, row["run_id"])
    assert forget.tolist() == [1.0, 2.0] and unseen.tolist() == [3.0]
    tracker.end_parent("FINISHED")


def test_a_trial_recorded_again_reuses_its_run(tmp_path):
    """A retried bundle, or a resumed study, records a trial whose earlier attempt left a run: never two."""
    tracker = _tracker(tmp_path)
    handle = tracker.open_child("k1", "gli", "gli", 0, {"step_size": 0.01}, "t1")  # an attempt that died
    tracker.flush()
    tracker.record("k1", "gli", "gli", 0, {"step_size": 0.01}, "t2#0", "FINISHED", {"accuracy": 0.5})
    tracker.flush()
    df = tracker.children(status=None)
    assert len(df) == 1 and df.iloc[0]["status"] == "FINISHED" and df.iloc[0]["tags.trial_id"] == "t2#0"
    assert handle.key == "k1"
    tracker.end_parent("FINISHED")


def test_a_refused_write_warns_and_leaves_its_trial_untold(tmp_path, capfd):
    tracker = _tracker(tmp_path)
    told = []
    tracker.log(tracker.open_child("k1", "gli", "gli", 0, {}, "t1"), {"accuracy": 0.5})
    # A write for a trial the writer never opened is refused by the store's side: one line, no `then`.
    tracker.finish(RunHandle("never-opened"), "FINISHED",
                   {"accuracy": 0.5}, then=lambda: told.append("x"))
    tracker.record("k2", "gli", "gli", 0, {}, "t2", "FINISHED", {"accuracy": 0.5}, then=lambda: told.append("k2"))
    tracker.flush()
    assert told == ["k2"]  # the study goes on after a refused write
    assert "a write was refused" in capfd.readouterr().err
    tracker.end_parent("FINISHED")


def test_the_writer_process_gone_with_writes_queued_stops_the_study_in_one_line(tmp_path):
    tracker = _tracker(tmp_path)
    tracker.record("k0", "gli", "gli", 0, {}, "t0", "FINISHED", {"accuracy": 0.5})
    tracker.flush()
    proc = tracker.writer.proc
    os.kill(proc.pid, signal.SIGSTOP)  # writes queue up behind a writer that cannot run
    for i in range(1, 5):
        tracker.record(f"k{i}", "gli", "gli", 0, {}, f"t{i}", "FINISHED", {"accuracy": 0.5})
    os.kill(proc.pid, signal.SIGKILL)
    with pytest.raises(TrackingError, match=r"tracking writer process ended .* write\(s\) unwritten; run the same"):
        tracker.flush()
    with pytest.raises(TrackingError):
        tracker.record("k9", "gli", "gli", 0, {}, "t9", "FINISHED", {"accuracy": 0.5})


def test_the_writer_process_gone_while_idle_fails_the_next_write_instead_of_hanging(tmp_path):
    tracker = _tracker(tmp_path)
    tracker.record("k0", "gli", "gli", 0, {}, "t0", "FINISHED", {"accuracy": 0.5})
    tracker.flush()
    os.kill(tracker.writer.proc.pid, signal.SIGKILL)
    tracker.writer.proc.wait(timeout=10)
    deadline = time.time() + 10
    while tracker.writer.error is None and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(TrackingError, match=r"tracking writer process ended \(exit code -9\); run the same"):
        tracker.record("k1", "gli", "gli", 0, {}, "t1", "FINISHED", {"accuracy": 0.5})


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
t.record("k0", "gli", "gli", 0, {{}}, "t0", "FINISHED", {{"accuracy": 0.5}})
t.flush()
print(t.writer.proc.pid, flush=True)
os.kill(t.writer.proc.pid, signal.SIGSTOP)
for i in range(1, 50):
    t.record(f"k{{i}}", "gli", "gli", 0, {{}}, f"t{{i}}", "FINISHED", {{"accuracy": 0.5}})
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


def test_a_metric_s_value_is_the_final_report_s_even_where_an_evaluation_shares_its_step(tmp_path):
    """MLflow keeps as a metric's value the point with the highest (step, timestamp, value): the final report's
    must win over the curve's last evaluation at the same step, whatever the values."""
    tracker = _tracker(tmp_path)
    curve = [{"step": 5, "sel_accuracy": 0.7}, {"step": 10, "sel_accuracy": 0.99}]  # the last one is not chosen
    tracker.record("k1", "gli", "gli", 0, {}, "t1", "FINISHED", {"sel_accuracy": 0.7}, 10, curve=curve)
    handle = tracker.open_child("k2", "gli", "gli", 0, {}, "t2")
    tracker.finish(handle, "FINISHED", {"sel_accuracy": 0.7}, 10, curve=curve)
    tracker.flush()
    df = tracker.children("gli")
    assert sorted(df["sel_accuracy"]) == [0.7, 0.7]
    tracker.end_parent("FINISHED")
