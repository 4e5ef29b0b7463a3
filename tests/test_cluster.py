"""A two-node Ray cluster on this machine, and the safety of the Ray instance the launcher starts."""

from __future__ import annotations

import os
import socket

import pytest
import ray
from mlflow.tracking import MlflowClient

from study.cluster import connect
from study.config import ConfigError, resolve
from study.launch import main as launch
from tests.fixtures import study_journal


@pytest.mark.slow
def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        config = tmp_path / "study.yaml"
        config.write_text("baselines: [finetune, neggrad, cf_k, scrub]\nbudget: 4\ncandidates: 1\n")
        uri = f"sqlite:///{tmp_path}/store.db"
        shared = tmp_path / "shared"  # both nodes see this folder: the shared storage path
        assert launch(["--smoke-test", "--config", str(config), "--address", cluster.address,
                       "--storage-path", str(shared), "--results-dir", str(tmp_path / "r"), "--tracking-uri", uri]) == 0
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("gli-digits-smoke")
        children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
        nodes = {c.data.tags.get("node_id") for c in children}
        assert len(nodes - {None}) == 2, nodes  # trials ran on both nodes
        assert all(c.info.status == "FINISHED" for c in children)
        assert any((shared / "models").iterdir())  # base checkpoints on the shared storage
    finally:
        ray.shutdown()
        cluster.shutdown()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_local_instance_has_no_dashboard_and_keeps_token_auth(monkeypatch):
    from ray._raylet import AuthenticationMode, get_authentication_mode

    cfg = resolve({}, {"num_cpus": 1})
    _, started = connect(cfg)
    try:
        assert started
        node = ray._private.worker.global_worker.node
        assert not node.address_info.get("webui_url")  # no dashboard, so no job server either
        assert not _listening(8265)
        assert get_authentication_mode() == AuthenticationMode.TOKEN
    finally:
        ray.shutdown()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ConfigError, match="without token authentication"):
        connect(cfg)


@pytest.mark.slow
def test_a_worker_node_lost_mid_search_loses_no_trial_and_counts_none_twice(tmp_path):
    """Case 1 of docs/reliability.md: a spot node taken back while GLI trials run on it."""
    import threading
    import time

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    removed = threading.Event()

    def take_the_node_back():  # once the search has finished a trial, both slots are busy with GLI trials
        deadline = time.time() + 300
        while time.time() < deadline and not removed.is_set():
            if any('"state":1' in j.read_text().replace(" ", "") for j in (tmp_path / "r").glob("optuna-*.journal")):
                time.sleep(0.5)
                cluster.remove_node(worker, allow_graceful=False)
                removed.set()
                return
            time.sleep(0.2)

    killer = threading.Thread(target=take_the_node_back, daemon=True)
    killer.start()
    try:
        uri = f"sqlite:///{tmp_path}/store.db"
        config = tmp_path / "study.yaml"
        config.write_text("baselines: [finetune]\ncandidates: 1\n")
        code = launch(["--smoke-test", "--config", str(config), "--address", cluster.address,
                       "--storage-path", str(tmp_path / "shared"), "--results-dir", str(tmp_path / "r"),
                       "--tracking-uri", uri, "--max-failures", "2"])
        assert removed.is_set(), "the node was never removed: the test did not test anything"
        assert code == 0
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("gli-digits-smoke")
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert not [c for c in children if c.info.status == "RUNNING"]
        keys = [c.data.tags["trial_key"] for c in children]
        assert len(keys) == len(set(keys))  # no trial counted twice
        hit = [c for c in children if int(c.data.tags.get("attempts", "1")) > 1 or c.info.status == "FAILED"]
        assert hit, "no trial was running on the lost node"
        journal, key = study_journal(tmp_path / "r")
        study = optuna.load_study(study_name=f"gli-digits-smoke-gli-fair-pareto-{key}",
                                  storage=JournalStorage(JournalFileBackend(str(journal))))
        complete = {t.number for t in study.trials if t.state.name == "COMPLETE"}
        gli = [c for c in children if c.data.tags["stage"] == "gli" and c.info.status == "FINISHED"]
        assert len(gli) == len(complete) == 4  # Optuna and MLflow agree one to one, the budget met
    finally:
        removed.set()
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_two_studies_at_once_on_one_tracking_server_and_cluster_keep_to_their_own(tmp_path, mlflow_server):
    """Case 6: two launchers, one MLflow server, one Ray cluster, one shared storage path."""
    import subprocess
    import sys
    from pathlib import Path

    from ray.cluster_utils import Cluster

    from trainables.base_models import read_checkpoint

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    server = mlflow_server
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    shared = tmp_path / "shared"
    config = tmp_path / "study.yaml"  # two baselines: both studies still train the same base models at once
    config.write_text("baselines: [finetune, ssd]\ncandidates: 1\n")
    try:
        procs = {}
        for name in ("study-a", "study-b"):
            cmd = [sys.executable, "-m", "study.launch", "--smoke-test", "--config", str(config), "--experiment-name", name,
                   "--results-dir", str(tmp_path / name), "--tracking-uri", server.uri,
                   "--address", cluster.address, "--storage-path", str(shared)]
            procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                           cwd=Path(__file__).resolve().parents[1],
                                           env={**os.environ, "GLI_CACHE_DIR": str(tmp_path / "cache")})
        outs = {name: proc.communicate(timeout=900)[0] for name, proc in procs.items()}
        for name, proc in procs.items():
            assert proc.returncode == 0, outs[name][-3000:]
        client = MlflowClient(tracking_uri=server.uri)
        parents = {}
        for name in procs:
            exp = client.get_experiment_by_name(name)
            runs = client.search_runs([exp.experiment_id], max_results=1000)
            own = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
            assert len(own) == 1 and own[0].info.status == "FINISHED"
            parents[name] = own[0].info.run_id
            children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
            assert children and all(c.data.tags["mlflow.parentRunId"] == parents[name] for c in children)
            keys = [c.data.tags["trial_key"] for c in children]
            assert len(keys) == len(set(keys)) and all(c.info.status == "FINISHED" for c in children)
            journal = study_journal(tmp_path / name)[0].read_text()
            other = "study-b" if name == "study-a" else "study-a"
            assert f"{name}-gli" in journal and other not in journal  # no shared Optuna study
        assert parents["study-a"] != parents["study-b"]
        checkpoints = list((shared / "models").rglob("*.pt"))
        assert checkpoints and not list((shared / "models").rglob("*.tmp"))
        for path in checkpoints:  # both studies trained the same base models: each file whole and verified
            read_checkpoint(path)
        tune_folders = {p.name.rsplit("-", 1)[0] for p in shared.iterdir() if p.is_dir()}  # <experiment>-<study key>
        assert tune_folders >= {"study-a", "study-b"}  # one Tune folder per study
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_a_cluster_started_by_hand_with_ray_start_and_a_token(tmp_path):
    """docs/cluster.md's by-hand commands, for real: `ray start --head`, `ray start --address` for a second
    node (two nodes on this machine, their own ports), the smoke study joined with --address; the
    launcher says in one line when the token is missing; exactly the processes started are stopped."""
    import secrets
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    ray_cli = str(Path(sys.executable).with_name("ray"))  # the one installed beside this Python, on PATH or not
    nodes = [subprocess.Popen([ray_cli, "start", "--head", "--port", str(port), "--include-dashboard=false",
                               "--temp-dir", temp, "--dashboard-agent-listen-port", str(free_port()), *common],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.time() + 60
        while not _listening(port) and time.time() < deadline:
            time.sleep(0.5)
        nodes.append(subprocess.Popen([ray_cli, "start", "--address", address,
                                       "--dashboard-agent-listen-port", str(free_port()), *common],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        root = Path(__file__).resolve().parents[1]
        config = tmp_path / "study.yaml"
        config.write_text("baselines: [finetune, ssd]\ncandidates: 1\n")
        launch_cmd = [sys.executable, "-m", "study.launch", "--smoke-test", "--config", str(config), "--address", address,
                      "--results-dir", str(tmp_path / "r"), "--storage-path", str(tmp_path / "shared")]
        refused = subprocess.run(launch_cmd, env={**base, "GLI_CACHE_DIR": str(tmp_path / "cache")}, cwd=root,
                                 capture_output=True, text=True, timeout=120)
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert refused.returncode == 2 and len(errors) == 1, refused.stderr[-2000:]
        assert "wants an authentication token" in errors[0] and "export RAY_AUTH_MODE=token" in errors[0]
        deadline = time.time() + 60  # the second node registered
        while time.time() < deadline:
            status = subprocess.run(["ray", "status", "--address", address], env=env, capture_output=True, text=True)
            if status.stdout.count("node_") >= 2:
                break
            time.sleep(1)
        run = subprocess.run(launch_cmd, env={**env, "GLI_CACHE_DIR": str(tmp_path / "cache")}, cwd=root,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}")
        exp = client.get_experiment_by_name("gli-digits-smoke")
        children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
        assert len({c.data.tags.get("node_id") for c in children} - {None}) == 2  # trials ran on both nodes
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
        for node in nodes:
            node.wait(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and subprocess.run(["pgrep", "-f", temp], capture_output=True).stdout:
        time.sleep(0.5)
    # Every process it started is gone; only its own process groups were signalled (never `ray stop`,
    # which stops every Ray process on the machine).
    assert not subprocess.run(["pgrep", "-f", temp], capture_output=True).stdout
