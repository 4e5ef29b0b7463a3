"""A study that survives crashes, failed trials and bad input (issue 7).

The SIGKILL and Ctrl-C cases run the launcher as a separate process, as a user would;
the others share one Ray instance (2 CPUs) and call the launcher in-process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from study.launch import main as launch
from tests.fixtures import study_journal

ROOT = Path(__file__).resolve().parents[1]


def _runs(uri: str, experiment: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


# The crash and outage studies: the smoke study with two baselines (one trained, one edit-only), which exercise
# every stage as the full list does at a fraction of its trials (tests/test_study.py's smoke study runs them all).
BASELINES = ["finetune", "ssd"]


def _start(results: Path, cache: Path, *extra: str, settings: dict | None = None) -> subprocess.Popen:
    """The smoke study with `BASELINES` in a process of its own; or, given `settings`, the study they make
    (a YAML config, not the smoke test, whose budget is 4 at most), named as the smoke study."""
    env = {**os.environ, "GLI_CACHE_DIR": str(cache), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    config = results.parent / "study.yaml"  # beside the results: the rerun reads the same file, the same study
    # one candidate a method: no selection replicate (the smoke study in tests/test_study.py runs that stage)
    config.write_text(yaml.safe_dump(settings or {"baselines": BASELINES, "candidates": 1}))
    how = ["--experiment-name", "gli-digits-smoke"] if settings else ["--smoke-test"]
    return subprocess.Popen([sys.executable, "-m", "study.launch", *how, "--config", str(config),
                             "--results-dir", str(results), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            start_new_session=True)


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 240) -> list[str]:
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    proc.kill()
    raise AssertionError(f"never saw {text!r}; output:\n{''.join(lines[-30:])}")


def _study(results: Path):
    journal, key = study_journal(results)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=f"gli-digits-smoke-gli-fair-pareto-{key}", storage=storage)


@pytest.mark.slow
def test_sigkill_mid_search_then_resume(tmp_path):
    results, cache = tmp_path / "r", tmp_path / "cache"
    proc = _start(results, cache)
    _wait_for(proc, "[study] gli: 1/4 done")
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and everything it started, at once
    proc.wait(timeout=30)
    before = {t.number: t.state.name for t in _study(results).trials}
    assert list(before.values()).count("COMPLETE") >= 1
    stamps = {str(p): p.stat().st_mtime_ns for p in (results / "ray" / "models").rglob("*.pt") if p.is_file()}
    uri = f"sqlite:///{results}/mlflow.db"
    _, children = _runs(uri, "gli-digits-smoke")
    finished_before = {c.info.run_id for c in children if c.info.status == "FINISHED" and c.data.tags["stage"] == "gli"}
    with open(study_journal(results)[0], "ab") as f:  # a kill during a journal write: half a line
        f.write(b'{"op_code": 5, "worker_id": "abc')

    again = _start(results, cache)
    out, _ = again.communicate(timeout=400)
    assert again.returncode == 0, out[-3000:]
    # replicate 0's base models were needed for the search's first trial; replicate 1's may not have finished
    assert re.search(r"stage base: [2-4] of 4 trial\(s\) already finished", out)
    assert "dropped a torn last line" in out
    # The baselines' searches run beside GLI's: whatever finished before the kill is not run again.
    for method in BASELINES:
        assert (re.search(rf"stage baseline-{method}: [1-4] trial\(s\)", out)
                or f"stage baseline ({method}): all 4 trials already in the Optuna study" in out), method
    # every checkpoint file that existed (the folders' own times change as others are added)
    after = {str(p): p.stat().st_mtime_ns for p in (results / "ray" / "models").rglob("*.pt") if p.is_file()}
    assert stamps and {name: after.get(name) for name in stamps} == stamps  # no finished checkpoint trained again
    study = _study(results)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4  # the budget, with the trials from before the crash counted once
    assert all(t.system_attrs.get("interrupted") for t in study.trials if t.state.name == "FAIL")
    parents, children = _runs(uri, "gli-digits-smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    keys = [c.data.tags["trial_key"] for c in children]
    assert len(keys) == len(set(keys))  # no second child run for any trial
    gli_finished = {c.info.run_id for c in children if c.info.status == "FINISHED" and c.data.tags["stage"] == "gli"}
    assert finished_before < gli_finished  # the front and tables read trials from before and after
    trials_csv = (results / "gli_trials.csv").read_text()
    assert all(run_id in trials_csv for run_id in finished_before)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_rerun_resumes(tmp_path):
    results, cache = tmp_path / "r", tmp_path / "cache"
    proc = _start(results, cache)
    _wait_for(proc, "[study] stage gli")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:]
    assert "run the same command again to resume" in out
    uri = f"sqlite:///{results}/mlflow.db"
    parents, _ = _runs(uri, "gli-digits-smoke")
    assert [p.info.status for p in parents] == ["KILLED"]
    again = _start(results, cache)
    out, _ = again.communicate(timeout=400)
    assert again.returncode == 0, out[-3000:]
    parents, children = _runs(uri, "gli-digits-smoke")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert not [c for c in children if c.info.status == "RUNNING"]


@pytest.fixture(scope="module")
def ray_instance():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def test_diverging_trials_fail_without_stopping_the_study(ray_instance, tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"baselines": ["finetune", "neggrad"], "budget": 2, "paper_baselines": True,
                                      "method_hparams": {"neggrad": {"lr": 1.0e8}, "gli": {"lr": 1.0e8}}}))
    uri = f"sqlite:///{tmp_path}/store.db"
    # Every GLI trial diverges: the study finishes what it can, then exits 1 with one line saying why.
    assert launch(["--smoke-test", "--config", str(config), "--results-dir", str(tmp_path / "r"),
                   "--tracking-uri", uri]) == 1
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "every trial of stage(s) gli (2) failed" in error[0] and "non-finite" in error[0]
    parents, children = _runs(uri, "gli-digits-smoke")
    assert [p.info.status for p in parents] == ["FAILED"]
    by = {(c.data.tags["stage"], c.data.tags["method"]): c for c in children}
    neggrad = by[("baseline", "neggrad")]
    assert neggrad.info.status == "FAILED" and "non-finite" in neggrad.data.tags["error"]
    assert neggrad.data.tags["attempts"] == "1"  # a diverged setting is not retried
    assert by[("baseline", "finetune")].info.status == "FINISHED"
    gli = [c for c in children if c.data.tags["stage"] == "gli"]
    assert gli and all(c.info.status == "FAILED" for c in gli)
    assert [t.state.name for t in _study(tmp_path / "r").trials] == ["FAIL", "FAIL"]
    summary = (tmp_path / "r" / "summary.csv").read_text()
    assert "neggrad" not in summary and "gli" not in summary and "finetune" in summary


def test_dying_worker_is_retried(ray_instance, tmp_path, monkeypatch):
    from tests.faults import dying_once

    marker = tmp_path / "killed-once"
    monkeypatch.setattr("study.trainable.study_trial", dying_once("finetune", str(marker)))  # from outside the study
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"baselines": ["finetune"], "budget": 1, "max_failures": 2}))
    uri = f"sqlite:///{tmp_path}/store.db"
    assert launch(["--smoke-test", "--config", str(config), "--results-dir", str(tmp_path / "r"),
                   "--tracking-uri", uri]) == 0
    assert marker.exists()  # the worker really died once
    _, children = _runs(uri, "gli-digits-smoke")
    finetune = [c for c in children if c.data.tags["method"] == "finetune" and c.data.tags["stage"] == "baseline"]
    assert len(finetune) == 1 and finetune[0].info.status == "FINISHED"
    assert int(finetune[0].data.tags["attempts"]) == 2


def test_a_worker_dying_mid_bundle_reruns_the_bundle_and_records_each_trial_once(ray_instance, tmp_path,
                                                                                   monkeypatch):
    """A worker killed while it runs a bundle of short trials: Tune retries the bundle as a whole; its trials'
    runs are written only once it ends, so each is recorded once, and Optuna holds each once."""
    from tests.faults import dying_once

    marker = tmp_path / "killed-once"
    monkeypatch.setattr("study.trainable.study_trial", dying_once("gli", str(marker), bundled=True))
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"baselines": ["finetune"], "replicates": 1, "base_epochs": 3, "method_epochs": 1,
                                      "eval_every": 7, "budget": 10, "max_failures": 2, "bundle_seconds": 60,
                                      "candidates": 1}))
    uri = f"sqlite:///{tmp_path}/store.db"
    assert launch(["--config", str(config), "--results-dir", str(tmp_path / "r"), "--tracking-uri", uri,
                   "--experiment-name", "gli-digits-smoke"]) == 0
    assert marker.exists()  # a worker really died, inside a bundle
    _, children = _runs(uri, "gli-digits-smoke")
    keys = [c.data.tags["trial_key"] for c in children]
    assert len(keys) == len(set(keys)) and all(c.info.status == "FINISHED" for c in children)
    gli = [c for c in children if c.data.tags["stage"] == "gli"]
    assert len(gli) == 10 and any("#" in c.data.tags["trial_id"] for c in gli)
    trials = _study(tmp_path / "r").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 10


def _bad(tmp_path: Path, case: str) -> tuple[list[str], str]:
    if case == "malformed data folder":
        (tmp_path / "mufac").mkdir()
        return ["--dataset", "mufac", "--data-dir", str(tmp_path / "mufac")], "custom_train_dataset.csv: missing"
    if case == "unknown data set":
        return ["--dataset", "imagenet"], "unknown data set 'imagenet'"
    if case == "unknown method":
        (tmp_path / "c.yaml").write_text("baselines: [finetune, magic]\n")
        return ["--config", str(tmp_path / "c.yaml")], "unknown baseline method(s) magic"
    if case == "YAML does not parse":
        (tmp_path / "c.yaml").write_text("replicates: [1,\n")
        return ["--config", str(tmp_path / "c.yaml")], "not valid YAML"
    if case == "YAML unknown key":
        (tmp_path / "c.yaml").write_text("sedes: 3\n")
        return ["--config", str(tmp_path / "c.yaml")], "unknown setting(s) sedes"
    if case == "search bounds low above high":
        (tmp_path / "c.yaml").write_text("gli_space: {step_size: [0.1, 0.001], iterations: [1, 10], guidance: [100, 20000]}\n")
        return ["--config", str(tmp_path / "c.yaml")], "low 0.1 is above high 0.001"
    if case == "non-positive step size":
        (tmp_path / "c.yaml").write_text("gli_space: {step_size: [0, 0.1], iterations: [1, 10], guidance: [100, 20000]}\n")
        return ["--config", str(tmp_path / "c.yaml")], "step_size (alpha) must be positive"
    if case == "GPUs above the cluster":
        return ["--num-gpus", "3", "--allow-cpu"], "the Ray cluster has 0 GPU(s)"
    if case == "unreachable address":
        return ["--address", "127.0.0.1:9"], "cannot reach the Ray cluster"
    if case == "unwritable tracking URI":
        return ["--tracking-uri", "sqlite:////proc/none/mlflow.db"], "cannot write the database"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["malformed data folder", "unknown data set", "unknown method", "YAML does not parse",
                                  "YAML unknown key", "search bounds low above high", "non-positive step size",
                                  "GPUs above the cluster", "unreachable address", "unwritable tracking URI"])
def test_bad_input_one_line_no_running_parent(ray_instance, tmp_path, capsys, case):
    argv, message = _bad(tmp_path, case)
    results = tmp_path / "r"
    code = launch(argv + ["--smoke-test", "--results-dir", str(results)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and message in err[-1], err[-3:]
    assert not any(line.startswith("[study] stage") for line in err)  # before any stage: no expensive work
    if (results / "mlflow.db").exists():
        parents, _ = _runs(f"sqlite:///{results}/mlflow.db", "gli-digits-smoke")
        assert not [p for p in parents if p.info.status == "RUNNING"]
    assert not (results / "ray" / "models").exists()  # nothing was trained


def test_an_outage_met_by_the_launcher_itself_stops_the_study_in_one_line(ray_instance, tmp_path, capsys,
                                                                        monkeypatch):
    """The store goes away while the launcher (not the writer process) reads or writes it: one line, exit 3,
    no traceback, and no second wait for the store when the study closes."""
    import requests

    from study.tracking import Tracker

    def down(self, *args, **kwargs):  # what a store gone at that moment does to the launcher's call
        def write(attempt):
            raise requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected())")
        return self.writer.call(write)

    monkeypatch.setattr(Tracker, "start_parent", down)
    ended = []
    monkeypatch.setattr(Tracker, "end_parent", lambda self, status: ended.append(status))
    code = launch(["--smoke-test", "--results-dir", str(tmp_path / "r"), "--tracking-outage", "0.5"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 3 and "Traceback" not in err, err[-2000:]
    assert len(errors) == 1 and "unreachable for more than 0s" in errors[0] and "run the same command" in errors[0]
    assert ended == []  # the parent is not closed through a store that is gone
    assert not (tmp_path / "r" / "ray" / "models").exists()  # nothing was trained


def _tune_trials(results: Path) -> dict[str, dict]:
    """Each study trial's final result as Tune wrote it: trial id -> last reported result."""
    import json

    out = {}
    for path in (results / "ray" / f"gli-digits-smoke-{study_journal(results)[1]}").glob("study_trial_*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        final = [r for r in lines if r.get("final") == 1.0]
        if final:
            out[final[-1]["trial_id"]] = final[-1]
    return out


def _check_resumed_once(uri: str, results: Path, budget: int = 4) -> None:
    """The parent FINISHED, no trial recorded twice, nothing RUNNING, and the Optuna study and the FINISHED
    GLI children agreeing one to one, the budget met."""
    parents, children = _runs(uri, "gli-digits-smoke")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert not [c for c in children if c.info.status == "RUNNING"]
    keys = [c.data.tags["trial_key"] for c in children]
    assert len(keys) == len(set(keys))  # no trial recorded twice
    gli = [c for c in children if c.data.tags["stage"] == "gli" and c.info.status == "FINISHED"]
    complete = [t for t in _study(results).trials if t.state.name == "COMPLETE"]
    assert len(gli) == len(complete) == budget


def _check_tracking_matches_trials(uri: str, results: Path, budget: int = 4) -> None:
    """As `_check_resumed_once`, and the final MLflow state equals what the trials reported to Tune: one
    FINISHED child per trial with the same final metrics."""
    _check_resumed_once(uri, results, budget)
    _, children = _runs(uri, "gli-digits-smoke")
    by_trial = {c.data.tags["trial_id"]: c for c in children if c.info.status == "FINISHED"}
    reported = _tune_trials(results)
    missing = [t for t in reported if t not in by_trial]
    assert not missing, f"trials reported to Tune but not in MLflow: {missing}"
    for trial_id, result in reported.items():
        metrics = by_trial[trial_id].data.metrics
        for name in ("accuracy", "forgetting_score", "final_score", "sel_final_score"):
            assert metrics[name] == pytest.approx(result[name]), (trial_id, name)


@pytest.mark.slow
def test_tracking_server_down_for_15_seconds_loses_nothing(tmp_path, mlflow_server):
    """A real `mlflow server` stopped mid-search and started again 15 s later (writes queue meanwhile)."""
    results = tmp_path / "r"
    proc = _start(results, tmp_path / "cache", "--tracking-uri", mlflow_server.uri, "--tracking-outage", "180")
    _wait_for(proc, "[study] gli: 1/4 done")
    mlflow_server.stop()
    time.sleep(15)
    mlflow_server.start()
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    warnings = [line for line in out.splitlines() if "unreachable" in line]
    assert len(warnings) >= 1 and "writes are queued and retried" in warnings[0], out[-3000:]
    assert "reachable again" in out
    # MLflow's client prints a "View run" link as a run ends against a server: at most the parent's, not a
    # line per trial from the writer process (which would also cost a request per trial).
    assert sum("View run" in line for line in out.splitlines()) <= 1, out[-3000:]
    _check_tracking_matches_trials(mlflow_server.uri, results)


@pytest.mark.slow
def test_tracking_server_down_past_the_limit_stops_cleanly_and_a_rerun_resumes(tmp_path, mlflow_server):
    results, cache = tmp_path / "r", tmp_path / "cache"
    args = ("--tracking-uri", mlflow_server.uri, "--tracking-outage", "8")
    proc = _start(results, cache, *args)
    _wait_for(proc, "[study] gli: 1/4 done")
    mlflow_server.stop()  # and it stays down
    out = proc.communicate(timeout=300)[0]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert proc.returncode == 3, out[-3000:]
    assert len(errors) == 1 and "unreachable for more than 8s" in errors[0] and "resume" in errors[0]
    mlflow_server.start()
    rerun = _start(results, cache, *args)
    out = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, out[-3000:]
    assert "resuming gli-digits-smoke" in out
    _check_resumed_once(mlflow_server.uri, results)


@pytest.mark.slow
def test_server_stopped_between_a_child_s_create_and_its_first_batch_loses_no_params(tmp_path, mlflow_server):
    """A real `mlflow server`, stopped right after it created a child run and before that run's first batch
    (which carries its hyper-parameters), twice: for a trial opened as it starts and for one recorded
    whole (a bundle's). Every child must end with all its params: its trial key, a digest of them, is
    recomputed from what MLflow holds."""
    from tests.fixtures import StoppingProxy
    from trainables import records

    stopped = set()

    def stop_after(method, path, body):
        if not path.endswith("/runs/create") or b"mlflow.parentRunId" not in body:
            return False
        kind = "recorded" if b'"hardware"' in body else "opened"  # a run recorded whole is created with its tags
        if kind in stopped:
            return False
        stopped.add(kind)
        return True

    proxy = StoppingProxy(mlflow_server, stop_after)
    results = tmp_path / "r"
    # trials run in bundles once a stage's first three have ended and more are left than the slots take at once:
    # searches of 10 trials (the smoke test's budget, 4, is asked for at once and leaves none to bundle)
    settings = {"baselines": ["finetune"], "replicates": 1, "base_epochs": 3, "method_epochs": 1, "eval_every": 7,
                "budget": 10, "candidates": 1}
    proc = _start(results, tmp_path / "cache", "--tracking-uri", proxy.uri, "--tracking-outage", "120",
                  "--bundle-seconds", "60", settings=settings)
    out = proc.communicate(timeout=600)[0]
    proxy.close()
    assert proc.returncode == 0, out[-3000:]
    assert stopped == {"opened", "recorded"} and len(proxy.stops) == 2 and "unreachable" in out, out[-3000:]
    _, children = _runs(mlflow_server.uri, "gli-digits-smoke")
    assert children and all(c.info.status == "FINISHED" for c in children)
    for c in children:
        tags = c.data.tags
        hparams = records.decode_params(c.data.params)
        assert records.trial_key(tags["stage"], tags["method"], int(tags["seed"]), hparams) == tags["trial_key"], (
            tags["trial_key"], c.data.params)
        assert tags["stage"] == "base" or hparams  # every unlearning trial has hyper-parameters
    assert any("#" in c.data.tags["trial_id"] for c in children)  # some trials ran in a bundle
    _check_tracking_matches_trials(mlflow_server.uri, results, budget=10)


def _writer_of(launcher: int) -> int:
    """The pid of the launcher's tracking writer process (`python -m study.writer`)."""
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == launcher and b"study.writer" in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except (OSError, ValueError, IndexError):
            continue
    raise AssertionError(f"no writer process under {launcher}")


@pytest.mark.slow
def test_the_tracking_writer_killed_mid_study_stops_it_in_one_line_and_a_rerun_resumes(tmp_path):
    results, cache = tmp_path / "r", tmp_path / "cache"
    proc = _start(results, cache)
    _wait_for(proc, "[study] gli: 1/4 done")
    os.kill(_writer_of(proc.pid), signal.SIGKILL)
    out = proc.communicate(timeout=300)[0]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert proc.returncode == 3, out[-3000:]
    assert len(errors) == 1 and "tracking writer process ended (exit code -9)" in errors[0], out[-3000:]
    assert "run the same command to resume" in errors[0]
    rerun = _start(results, cache)
    out = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, out[-3000:]
    assert "resuming gli-digits-smoke" in out
    _check_resumed_once(f"sqlite:///{results}/mlflow.db", results)


@pytest.mark.slow
def test_launcher_killed_with_tracking_writes_queued_then_resume(tmp_path, mlflow_server):
    """The tracking server is down, so finished trials' runs wait in the writer's queue; the launcher is
    then killed (SIGKILL, everything it started). The queued writes are lost with it: the rerun finds
    those trials unrecorded in MLflow and still RUNNING in Optuna's journal (it is told of a trial's end
    only once the run is written), closes them as interrupted and runs them again, each once."""
    results, cache = tmp_path / "r", tmp_path / "cache"
    args = ("--tracking-uri", mlflow_server.uri, "--tracking-outage", "600")
    proc = _start(results, cache, *args)
    _wait_for(proc, "[study] base: 4/4 done")
    mlflow_server.stop()
    # The writer says so when a write fails: from then on that trial's write is queued, retried, not written.
    _wait_for(proc, "writes are queued and retried")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    mlflow_server.start()
    rerun = _start(results, cache, *args)
    out = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, out[-3000:]
    _check_resumed_once(mlflow_server.uri, results)
