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
