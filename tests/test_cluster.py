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


def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        config = tmp_path / "study.yaml"
        config.write_text("baselines: [finetune, neggrad, cf_k, scrub]\ngli_trials: 4\n")
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
