"""What a new user sees in MLflow's UI, checked in a real browser (headless Chromium; skipped without one).

The link the launcher prints must open the runs table (MLflow 3 otherwise opens an
experiment on its GenAI overview, "Traces: 0"), with the experiment's description, and
the parent run's page must show the study's summary table.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install chromium)")


def _dom(url: str, screenshot=None) -> str:
    flags = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
             "--virtual-time-budget=20000"]
    if screenshot is not None:
        subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    return subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout


@pytest.mark.slow
def test_the_printed_link_lands_on_the_runs_with_the_table_as_description(tmp_path, mlflow_server):
    from study.tracking import Tracker, runs_link

    uri = mlflow_server.uri  # `mlflow server` serves the same UI as `mlflow ui`
    tracker = Tracker(uri, "gli-ui-check", tmp_path / "artifacts")
    parent, _ = tracker.start_parent("key", "gli-ui-check", {"dataset": "digits"}, {"dataset": "digits"})
    for i, method in enumerate(["original", "retrain", "gli"]):
        handle = tracker.open_child(f"base/{method}/seed0/{i:012d}", "base", method, 0, {"lr": 0.1}, f"t{i}")
        tracker.finish(handle, "FINISHED", {"accuracy": 0.9, "forgetting_score": 0.05})
    tracker.describe_parent("| method | seeds | acc |\n|---|---|---|\n| gli_row_marker | 3 | 0.95 |\n")
    tracker.end_parent("FINISHED")
    runs = _dom(runs_link(uri, tracker.experiment_id), tmp_path / "runs.png")  # the screenshot, to look at
    assert re.search(r"4(</strong>)? matching runs", runs) and "gli-ui-check" in runs  # the runs table, our parent
    assert "hyper-parameter study of machine-unlearning methods" in runs  # the experiment's description
    assert "No data available" not in runs  # not the GenAI overview's empty charts
    page = _dom(f"{uri}/#/experiments/{tracker.experiment_id}/runs/{parent}")
    assert "<table" in page and "gli_row_marker" in page  # the summary, rendered as a table
