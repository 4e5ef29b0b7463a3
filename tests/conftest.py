"""Test-wide settings: a private cache folder, no Ray usage stats, small thread counts."""

import os

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Every test run decodes and trains into its own cache, never the user's ~/.cache."""
    os.environ["GLI_CACHE_DIR"] = str(tmp_path_factory.mktemp("gli-cache"))
    yield


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend), started for the test and stopped after it."""
    from tests.fixtures import MlflowServer

    server = MlflowServer(tmp_path / "server").start()
    yield server
    server.stop()
