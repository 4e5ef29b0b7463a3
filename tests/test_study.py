"""The study end to end on the CPU: the smoke study, logical GPUs, reuse of finished work, launcher errors.

One Ray instance for the module (2 CPUs, 4 logical GPUs); the launcher joins it and
leaves it running.
"""

from __future__ import annotations

import os
import re

import optuna
import pandas as pd
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from study.launch import main as launch
from tests.fixtures import study_journal
from trainables.methods import REFERENCE_ROWS, available


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def _runs(uri: str, experiment: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    results = tmp_path_factory.mktemp("smoke")
    uri = f"sqlite:///{results}/store.db"
    assert launch(["--smoke-test", "--results-dir", str(results), "--tracking-uri", uri]) == 0
    return results, uri


def test_smoke_study_records_everything(smoke, capsys):
    results, uri = smoke
    client, parents, children = _runs(uri, "gli-digits-smoke")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    for tag in ("dataset", "protocol", "objective", "git_commit", "data_fingerprint"):
        assert tag in parent.data.tags
    params = parent.data.params
    assert params["dataset"] == "digits" and params["budget"] == "4"  # plain values, as the runs table shows them
    assert "null" not in params.values() and "data_dir" not in params  # unset settings are not logged
    # the headline numbers, per table row, so that studies sort in the runs table
    summary = {line.split(",")[0]: line.split(",") for line in (results / "summary.csv").read_text().splitlines()}
    header = summary["method"]
    for method in ("gli", "finetune", "retrain"):
        for metric in ("final_score", "accuracy", "forgetting_score"):
            assert parent.data.metrics[f"{method}/{metric}"] == pytest.approx(
                float(summary[method][header.index(metric)])), (method, metric)
    methods = {c.data.tags["method"] for c in children}
    assert methods == set(REFERENCE_ROWS) | set(available())
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert c.data.tags["stage"] in ("base", "baseline", "gli", "select", "confirm") and c.info.status == "FINISHED"
        assert c.data.tags["replicate"] == c.data.tags["split_seed"] == c.data.tags["seed"]
    # replicate 0 tunes (every search), 1001 selects (each method's 2 candidates, never reported) and 1 is
    # reported (confirm: one setting per method): base models for all three
    seeds = {stage: {c.data.tags["seed"] for c in children if c.data.tags["stage"] == stage}
             for stage in ("base", "baseline", "gli", "select", "confirm")}
    assert seeds == {"base": {"0", "1001", "1"}, "baseline": {"0"}, "gli": {"0"}, "select": {"1001"}, "confirm": {"1"}}
    select = [c for c in children if c.data.tags["stage"] == "select"]
    assert len(select) == 2 * len(available())  # 2 candidates of every method
    confirm = [c for c in children if c.data.tags["stage"] == "confirm"]
    assert sorted(c.data.tags["method"] for c in confirm) == sorted(available())  # one setting each
    chosen = pd.read_csv(results / "selection.csv")
    assert set(chosen["method"]) == set(available()) and chosen.groupby("method")["chosen"].sum().eq(1).all()
    for method, group in chosen.groupby("method"):  # the chosen one has the best selection score
        assert group.loc[group["chosen"], "selection_sel_final_score"].iloc[0] == group["selection_sel_final_score"].max()
    verdicts = pd.read_csv(results / "paired.csv")
    assert set(verdicts.loc[verdicts["tested"], "metric"]) == {"final_score"} and set(verdicts["schedule"]) == {1}
    prints = {c.data.tags["replicate"]: c.data.tags["split_fingerprint"] for c in children}
    assert prints["0"] != prints["1"]  # digits: each replicate draws its own split
    assert len({c.data.tags["split_fingerprint"] for c in children if c.data.tags["replicate"] == "1"}) == 1
    summary_csv = pd.read_csv(results / "summary.csv")
    assert set(summary_csv["seeds"]) == {1}  # the tuning replicate never appears in a reported row
    gli = [c for c in children if c.data.tags["stage"] == "gli"]
    assert len(gli) == 4
    assert {"step_size", "iterations", "w_start", "w_end"} <= set(gli[0].data.params)
    curve = client.get_metric_history(gli[0].info.run_id, "eval/sel_final_score")
    assert len(curve) >= 2  # a curve: one point per evaluation
    assert len(client.get_metric_history(gli[0].info.run_id, "sel_final_score")) == 1  # the chosen value, once
    assert gli[0].data.metrics["sel_final_score"] in {m.value for m in curve}  # one of the evaluations
    for key in ("accuracy", "forgetting_score", "final_score", "jsd", "sel_accuracy", "sel_forgetting_score"):
        assert key in gli[0].data.metrics
    for c in children:  # the runs table's metric columns are results; when, where and at what cost go apart
        assert not {"scheduled_at", "gpu_id", "peak_rss_mb", "trial_seconds", "started_at"} & set(c.data.metrics)
        assert "system/started_at" in c.data.metrics and "system/ended_at" in c.data.metrics
        assert c.data.tags["accel"] == '{"async_attack": false, "cuda_graphs": false, "cudnn_benchmark": false, ' \
                                       '"deterministic": false, "precision": "fp32"}'  # what ran on this CPU
    # the paper's setting is the first trial, and every Optuna trial holds both objectives
    journal, key = study_journal(results)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=f"gli-digits-smoke-gli-fair-pareto-{key}", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert all(len(t.values) == 2 for t in study.trials)
    assert study.trials[0].params == {"step_size": 0.01, "iterations": 2, "w_start": 200.0, "w_end": 1000.0}
    assert all(t.params["w_end"] >= t.params["w_start"] for t in study.trials)
    assert study.metric_names == ["sel_accuracy", "sel_forgetting_score"]  # optuna-dashboard's axis names
    # each Optuna trial leads to its MLflow run: its seed, run id and selection final score; the paper's labelled
    by_id = {c.info.run_id: c for c in gli}
    for t in study.trials:
        run = by_id[t.user_attrs["mlflow_run_id"]]
        assert t.user_attrs["seed"] == 0 and t.user_attrs["final_score"] == pytest.approx(run.data.metrics["sel_final_score"])
        assert t.values == pytest.approx([run.data.metrics["sel_accuracy"], run.data.metrics["sel_forgetting_score"]])
    assert [t.user_attrs["setting"] for t in study.trials] == ["paper", "searched", "searched", "searched"]
    assert study.user_attrs["dataset"] == "digits" and study.user_attrs["protocol"] == "fair"
    assert len(study.user_attrs["git_commit"]) in (7, 40) or study.user_attrs["git_commit"] == "unknown"
    # what a new user sees in MLflow's UI: the runs table (not the GenAI overview), the table as the description
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "child run is one trial" in experiment.tags["mlflow.note.content"]
    assert "| method | seeds |" in client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/front.csv", "summary/summary.md", "summary/gli_trials.csv", "summary/tuning.csv",
            "summary/tuning.png"} <= artifacts
    # under fair every method is searched with the same budget, and the tuning card shows it
    cards = pd.read_csv(results / "tuning.csv")
    assert set(cards["method"]) == set(available()) and set(cards["budget"]) == {4} and set(cards["finished"]) == {4}
    for _, card in cards.iterrows():
        assert parent.data.metrics[f"{card['method']}/tuning_trials"] == 4
        assert parent.data.metrics[f"{card['method']}/tuning_best"] == pytest.approx(card["best_sel_final_score"])
    assert "## Tuning" in (results / "summary.md").read_text()
    stages = [(c.data.tags["stage"], c.data.tags["method"]) for c in children]
    assert all(stages.count(("baseline", m)) == 4 for m in available() if m != "gli")  # searched, not run once
    front = (results / "front.csv").read_text()
    assert "gli_front" in front and "reference" in front and "baseline" in front
    assert (results / "config.yaml").exists()
    # Tune's pickle of the study holds no data set (the plan's stages hold the study's context)
    assert (results / "ray" / f"gli-digits-smoke-{study_journal(results)[1]}" / "tuner.pkl").stat().st_size < 100_000


def test_the_database_file_alone_holds_the_whole_study(smoke, tmp_path):
    """The write-ahead log is folded in when the study ends: a copy of the .db file alone is the study."""
    import subprocess

    results, uri = smoke
    # copied by another process, as a user would: a file of the database opened and closed in this process
    # would drop the locks this process's own SQLite connections hold on it (POSIX locks are per process)
    subprocess.run(["cp", str(results / "store.db"), str(tmp_path / "alone.db")], check=True)
    assert not (tmp_path / "alone.db-wal").exists()
    _, parents, children = _runs(uri, "gli-digits-smoke")
    _, parents_alone, children_alone = _runs(f"sqlite:///{tmp_path}/alone.db", "gli-digits-smoke")
    assert len(children_alone) == len(children) and len(parents_alone) == 1
    assert {r.info.status for r in parents_alone + children_alone} == {"FINISHED"}


def test_second_run_reuses_finished_work(smoke, capsys):
    results, uri = smoke
    checkpoints = sorted((results / "ray" / "models").iterdir())
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    _, _, before = _runs(uri, "gli-digits-smoke")
    assert launch(["--smoke-test", "--results-dir", str(results), "--tracking-uri", uri]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1" in captured.out  # local only
    assert re.search(r"then open http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?workflowType=machine_learning",
                     captured.out)  # the runs table, not the GenAI overview
    assert f"optuna-dashboard {study_journal(results)[0]}" in captured.out
    assert "stage base: 6 of 6 trial(s) already finished" in err  # replicates 0, 1001 and 1
    assert "all 4 trials already in the Optuna study" in err
    assert [p.stat().st_mtime_ns for p in sorted((results / "ray" / "models").iterdir())] == stamps  # nothing retrained
    _, parents, after = _runs(uri, "gli-digits-smoke")
    assert len(parents) == 1 and len(after) == len(before)  # the same parent, no second child per trial


def test_logical_gpus_run_trials_concurrently(tmp_path, monkeypatch):
    """With logical GPUs and two CPUs, the study's first two trials run at once: each waits, inside its
    trial, until the other has started (tests.faults.meeting), and both see it happen."""
    from tests.faults import meeting

    seats = tmp_path / "seats"
    seats.mkdir()
    monkeypatch.setattr("study.trainable.study_trial", meeting(str(seats), 2))
    config = tmp_path / "study.yaml"
    config.write_text("baselines: [finetune, neggrad]\nbudget: 3\ncandidates: 1\n")
    uri = f"sqlite:///{tmp_path}/store.db"
    code = launch(["--smoke-test", "--config", str(config), "--results-dir", str(tmp_path / "r"), "--tracking-uri", uri,
                   "--num-gpus", "4", "--allow-cpu", "--gpus-per-trial", "0.5"])
    assert code == 0
    assert sorted(p.name for p in seats.glob("met-*")) == ["met-0", "met-1"]  # both ran while the other did
    _, _, children = _runs(uri, "gli-digits-smoke")
    assert all(c.data.metrics["system/gpu_id"] >= 0 for c in children)  # every trial was given a (logical) GPU
    assert all(c.info.status == "FINISHED" for c in children)


def test_short_trials_run_in_bundles_each_recorded_once(tmp_path):
    """With --bundle-seconds far above the trials' length the plan bundles them (study/plan.py); every
    trial of a bundle is still one MLflow child and one Optuna trial, nothing twice."""
    import json

    config = tmp_path / "study.yaml"
    config.write_text("baselines: [finetune, neggrad]\nreplicates: 1\nbase_epochs: 3\nmethod_epochs: 1\neval_every: 7\n"
                      "candidates: 1\n")
    uri = f"sqlite:///{tmp_path}/store.db"
    results = tmp_path / "r"
    assert launch(["--config", str(config), "--results-dir", str(results), "--tracking-uri", uri, "--budget", "10",
                   "--experiment-name", "bundles", "--bundle-seconds", "60"]) == 0  # the smoke test's sizes
    bundles = []
    for path in (results / "ray" / f"bundles-{study_journal(results)[1]}").glob("study_trial_*/params.json"):
        params = json.loads(path.read_text())
        if params["stage"] == "bundle":
            bundles.append([item["config"]["stage"] for item in params["items"]])
    assert any(len(items) >= 2 for items in bundles), bundles
    _, parents, children = _runs(uri, "bundles")
    assert [p.info.status for p in parents] == ["FINISHED"]
    keys = [c.data.tags["trial_key"] for c in children]
    assert len(keys) == len(set(keys)) and all(c.info.status == "FINISHED" for c in children)
    assert len([c for c in children if c.data.tags["stage"] == "gli"]) == 10
    bundled = [c for c in children if "#" in c.data.tags["trial_id"]]  # an item's id is its bundle's, numbered
    assert sum(len(items) for items in bundles) == len(bundled)
    for c in bundled:  # recorded whole: the run spans the trial's own start and end
        assert c.info.start_time == int(c.data.metrics["system/started_at"] * 1000)
        assert c.info.end_time == int(c.data.metrics["system/ended_at"] * 1000)
        assert {"accuracy", "forgetting_score", "sel_final_score"} <= set(c.data.metrics)
    journal, key = study_journal(results)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=f"bundles-gli-fair-pareto-{key}", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 10


def test_tuned_baselines_scalar_objective_paper_protocol(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text("baselines: [finetune]\nbudget: 2\n")
    uri = f"sqlite:///{tmp_path}/store.db"
    assert launch(["--smoke-test", "--config", str(config), "--results-dir", str(tmp_path / "r"), "--tracking-uri", uri,
                   "--no-paper-baselines", "--objective", "final_score", "--protocol", "paper"]) == 0
    out = capsys.readouterr().out
    assert "protocol=paper" in out
    client, parents, children = _runs(uri, "gli-digits-paper-smoke")  # a paper study is its own experiment
    assert parents[0].data.tags["protocol"] == "paper" and parents[0].data.tags["objective"] == "final_score"
    stages = [(c.data.tags["stage"], c.data.tags["method"]) for c in children]
    assert stages.count(("baseline", "finetune")) == 2  # an Optuna search with GLI's budget
    assert stages.count(("confirm", "finetune")) == 1 and stages.count(("confirm", "gli")) == 1  # the best of each
    journal, key = study_journal(tmp_path / "r")
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=f"gli-digits-paper-smoke-finetune-paper-final_score-{key}", storage=storage)
    assert len(study.trials) == 2 and study.trials[0].params == {"lr": 0.001}  # the paper's setting first
    assert "| finetune | 1 |" in (tmp_path / "r" / "summary.md").read_text()


@pytest.mark.parametrize("argv,message", [
    (["--num-gpus", "2"], "torch sees no CUDA device"),
    (["--num-gpus", "8", "--allow-cpu"], "the Ray cluster has 4 GPU(s)"),
    (["--dataset", "mufac"], "needs --data-dir"),
    (["--dataset", "mufac", "--data-dir", "/nonexistent/mufac"], "missing MUFAC data folder"),
    (["--tracking-uri", "sqlite:////proc/no/such/dir/mlflow.db"], "cannot write the database"),
])
def test_launcher_errors_are_one_line(tmp_path, capsys, argv, message):
    code = launch(argv + ["--smoke-test", "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and message in err[-1]


def test_export_then_reproduce_agrees(smoke, tmp_path, capsys):
    from analysis.export import main as export_main
    from study.reproduce import main as reproduce_main

    results, uri = smoke
    models = ["--models-dir", str(results / "ray" / "models")]  # the export names them relative to the results
    out = tmp_path / "export"
    assert export_main(["--experiment", "gli-digits-smoke", "--tracking-uri", uri, "--out", str(out)]) == 0
    for name in list(REFERENCE_ROWS) + available() + ["gli-pareto"]:
        assert (out / f"{name}.yaml").exists(), name
    for name in ("summary.md", "summary.tex", "summary.csv", "front.png", "front.pdf", "losses.png", "front.csv"):
        assert (out / name).exists(), name
    import yaml

    text = (out / "gli.yaml").read_text()
    spec = yaml.safe_load(text)
    assert spec["data"]["fingerprint"] and spec["git_commit"] and spec["seeds"] == [1]  # the reported replicate
    key = study_journal(results)[1]  # the study's key, as its config.yaml records it
    assert spec["study_key"] == key and yaml.safe_load((out / "gli-pareto.yaml").read_text())["study_key"] == key
    # what ran: on this CPU no GPU lever was in effect; and no path of this machine
    assert spec["accel"]["precision"] == "fp32" and spec["accel"]["cuda_graphs"] is False
    assert spec["models"] == {"under": "results", "path": "ray/models"} and str(results) not in text
    assert set(spec["hparams"]) >= {"step_size", "iterations", "w_start", "w_end"}
    # the bank entries behind the reported replicate: its original and retrained checkpoints, which exist
    assert len(spec["bank_keys"]) == 2 and all("-s1-" in k for k in spec["bank_keys"])
    assert all((results / "ray" / "models" / "models" / k).is_file() for k in spec["bank_keys"])
    from study.bank import main as bank_main

    capsys.readouterr()
    assert bank_main(["list", "--storage-path", str(results / "ray")]) == 0
    listed = capsys.readouterr().out
    assert all(k in listed for k in spec["bank_keys"]) and " broken" not in listed
    pareto = yaml.safe_load((out / "gli-pareto.yaml").read_text())
    assert len(pareto["settings"]) >= 1 and sum("confirmed" in s for s in pareto["settings"]) <= 1  # the chosen one
    capsys.readouterr()
    assert reproduce_main([str(out / "gli.yaml"), "--check", *models]) == 0
    printed = capsys.readouterr().out
    assert "same hardware and libraries as the study" in printed
    assert "reproduced numbers agree with the export" in printed
    from trainables import engine

    assert spec["hardware"] == engine.hardware()  # the trials' own record of what they ran on
    # Another machine: the numbers are compared within their exported standard errors, not for equality.
    other = {**spec, "hardware": {**spec["hardware"], "cpu": "Some Other CPU @ 2.0GHz"}}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    assert reproduce_main([str(tmp_path / "other.yaml"), "--check", *models]) == 0
    printed = capsys.readouterr().out
    assert "other hardware than the study's (cpu: " in printed and "Some Other CPU" in printed
    assert "agree within their uncertainty" in printed
    far = yaml.safe_load((tmp_path / "other.yaml").read_text())
    far["metrics"]["per_seed"][1]["forgetting_score"] += 10 * far["metrics"]["per_seed"][1]["fs_se"]  # replicate 1
    (tmp_path / "far.yaml").write_text(yaml.safe_dump(far))
    assert reproduce_main([str(tmp_path / "far.yaml"), "--check", *models]) == 1
    assert "differ beyond 3 standard errors (seed 1 forgetting_score)" in capsys.readouterr().out
    assert reproduce_main([str(out / "finetune.yaml"), "--check", *models]) == 0
    # the study's data fingerprint is recorded everywhere, and another one is warned about
    assert yaml.safe_load((results / "config.yaml").read_text())["data_fingerprint"] == spec["data"]["fingerprint"]
    spec["data"]["fingerprint"] = "0000000000000000"
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    assert reproduce_main([str(tmp_path / "moved.yaml"), "--seeds", "1", *models]) == 0
    assert "warning: the data set's fingerprint is" in capsys.readouterr().err


def test_audit_of_a_finished_study_then_resumed(smoke, capsys):
    """`study.audit` adds the audit stage; a second audit reruns nothing and trains no retrained model."""
    from study.audit import main as audit_main

    results, uri = smoke
    assert audit_main(["--experiment", "gli-digits-smoke", "--tracking-uri", uri, "--models", "4"]) == 0
    out = capsys.readouterr().out
    assert "Privacy audit" in out and "| original |" in out
    client, _, children = _runs(uri, "gli-digits-smoke")
    audit = [c for c in children if c.data.tags["stage"] == "audit"]
    methods = [c.data.tags["method"] for c in audit]
    # 2K retrained models: K the reference, K more for F's ceiling (F between two sets of retrained models)
    assert methods.count("retrain") == 8 and methods.count("original") == 1 and methods.count("scrub") == 4
    assert {c.data.tags["replicate"] for c in audit} == {"1"}  # every model on one reported replicate's split
    assert {"scores.npz"} <= {a.path for a in client.list_artifacts(audit[0].info.run_id)}
    table = pd.read_csv(results / "audit.csv")
    assert {"forget_quality", "forget_quality_lo", "forget_quality_hi", "challenge_score"} <= set(table.columns)
    assert (table["forget_quality_lo"] <= table["forget_quality"]).all()
    assert (table["forget_quality"] <= table["forget_quality_hi"]).all()
    assert set(table["null_kind"]) == {"retrained"} and table["forget_quality_null"].nunique() == 1
    ceiling = table.iloc[0]
    print(f"ceiling at K = 4: retrained {ceiling['forget_quality_null']:.4f} "
          f"[{ceiling['forget_quality_null_lo']:.4f}, {ceiling['forget_quality_null_hi']:.4f}], "
          f"simulated {ceiling['forget_quality_null_sim']:.4f}")
    # the two ceilings agree: retraining's own F against the simulated value at the same K and size
    assert ceiling["forget_quality_null_lo"] <= ceiling["forget_quality_null_sim"] <= ceiling["forget_quality_null_hi"]
    # U-LiRA on the same study: its retrained models are the audit's (from the bank), its shadow originals new
    models = results / "ray" / "models" / "models"  # the bank: `<models_dir>/models/*.pt`
    before = set(p.name for p in models.iterdir())
    ulira = ["--attack", "ulira", "--shadows", "2", "--targets", "2"]
    assert audit_main(["--experiment", "gli-digits-smoke", "--tracking-uri", uri, *ulira]) == 0
    out = capsys.readouterr().out
    assert "U-LiRA, the per-example membership attack" in out and "Told apart from retraining:" in out
    _, _, children = _runs(uri, "gli-digits-smoke")
    attacked = [c for c in children if c.data.tags["stage"] == "ulira"]
    seeds = {c.data.tags["seed"] for c in attacked}
    assert seeds == {"0", "1", "10000", "10001"}  # two shadows, two targets
    added = set(p.name for p in models.iterdir()) - before
    assert sorted(n.split("-")[1] for n in added) == ["original"] * 4 + ["retrain"] * 2  # retrained 0, 1: the audit's
    table = pd.read_csv(results / "ulira.csv")
    assert set(table["method"]) == {"original", "retrain", *available()}
    assert (table["shadows"] == 2).all() and (table["targets"] == 2).all()
    for key in ("auc", "tpr_at_0.01", "tpr_at_0.05", "balanced_accuracy"):
        assert ((0 <= table[f"{key}_lo"]) & (table[f"{key}_lo"] <= table[key]) & (table[key] <= table[f"{key}_hi"])
                & (table[f"{key}_hi"] <= 1)).all()
    floor = table[table["method"] == "retrain"].iloc[0]
    assert floor["auc_lo"] <= 0.5 <= floor["auc_hi"]  # retraining never saw a candidate
    assert (table["retrain_auc"] == floor["auc"]).all()
    # every model of a second run of both audits comes from the bank and no trial runs again
    stamps = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    assert audit_main(["--experiment", "gli-digits-smoke", "--tracking-uri", uri, "--models", "4", *ulira]) == 0
    assert "stage audit: " in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in models.iterdir()} == stamps
    _, _, again = _runs(uri, "gli-digits-smoke")
    assert len(again) == len(children)  # nothing ran twice


def test_export_and_reproduce_errors(smoke, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from analysis.export import main as export_main
    from study.reproduce import main as reproduce_main

    _, uri = smoke
    cases = [
        (["--experiment", "nope", "--tracking-uri", uri], "unknown experiment 'nope'"),
        (["--experiment", "x", "--tracking-uri", f"sqlite:///{tmp_path}/missing.db"], "does not exist"),
        (["--experiment", "gli-digits-smoke", "--tracking-uri", uri, "--study", "nope"], "holds no study nope"),
    ]
    empty_uri = f"sqlite:///{tmp_path}/empty.db"
    MlflowClient(tracking_uri=empty_uri).create_experiment("empty")
    cases.append((["--experiment", "empty", "--tracking-uri", empty_uri], "holds no study"))
    for argv, message in cases:
        assert export_main(argv + ["--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1], err
    not_export = tmp_path / "config.yaml"
    not_export.write_text("dataset: digits\n")
    assert reproduce_main([str(not_export)]) == 2
    assert "not a method export of analysis.export" in capsys.readouterr().err


def test_until_settled_adds_rounds_of_replicates_and_reports_verdicts(tmp_path, capsys):
    """--until-settled: after the first replicates, rounds of one replicate each (the default schedule) until every
    comparison is settled or --max-replicates; the report opens with the verdicts and verdicts.csv holds them. A
    resume after a lost run on another slot count replays the same verdicts; a changed setting is a new study."""
    config = tmp_path / "study.yaml"
    config.write_text("baselines: [finetune, eu_k]\nbase_epochs: 3\nmethod_epochs: 1\neval_every: 7\nbudget: 2\n"
                      "replicates: 2\ncandidates: 1\n")
    uri = f"sqlite:///{tmp_path}/store.db"
    results = tmp_path / "r"
    assert launch(["--config", str(config), "--results-dir", str(results), "--tracking-uri", uri,
                   "--experiment-name", "settle", "--until-settled", "--max-replicates", "3"]) == 0
    err = capsys.readouterr().err
    assert "stage base-round1: 2 trial(s)" in err or "every comparison settled after 2 replicates" in err
    verdicts = pd.read_csv(results / "verdicts.csv")
    assert list(verdicts.columns[:9]) == ["baseline", "metric", "tested", "median_diff", "lo", "hi", "mean_diff",
                                          "replicates", "verdict"]
    assert set(verdicts["baseline"]) == {"finetune", "eu_k"} and set(verdicts["looks"]) == {2}
    tested = verdicts[verdicts["tested"]]
    assert set(tested["metric"]) == {"final_score"} and set(verdicts["primary"]) == {"final_score"}
    assert set(tested["verdict"]) <= {"better", "worse", "equivalent", "undecided"}
    assert set(verdicts.loc[~verdicts["tested"], "verdict"]) == {"not tested"}
    undecided = tested["verdict"] == "undecided"
    assert (tested.loc[undecided, "replicates"] == 3).all()  # what is undecided was looked at with every replicate
    text = (results / "summary.md").read_text()
    assert text.index("verdicts on the primary metric") < text.index("| method | seeds |")  # the verdicts come first
    _, _, children = _runs(uri, "settle")
    confirm_seeds = {c.data.tags["seed"] for c in children if c.data.tags["stage"] == "confirm"}
    assert confirm_seeds == ({"1", "2", "3"} if "stage base-round1" in err else {"1", "2"})
    cfg = yaml.safe_load((results / "config.yaml").read_text())
    assert cfg["looks"] == [2, 3] and cfg["until_settled"] is True  # the schedule: the study's, recorded
    client, parents, children = _runs(uri, "settle")
    assert parents[0].data.params["looks"] == "[2, 3]"

    # Killed mid-round (the last replicate's eu_k run lost) and resumed on another slot count (1 slot, not 2):
    # the same study, the same looks, the same verdicts.
    last = max(int(c.data.tags["seed"]) for c in children if c.data.tags["stage"] == "confirm")
    lost = [c for c in children if c.data.tags["stage"] == "confirm" and c.data.tags["method"] == "eu_k"
            and int(c.data.tags["seed"]) == last]
    client.delete_run(lost[0].info.run_id)
    assert launch(["--config", str(config), "--results-dir", str(results), "--tracking-uri", uri, "--experiment-name",
                   "settle", "--until-settled", "--max-replicates", "3", "--cpus-per-trial", "2"]) == 0
    err = capsys.readouterr().err
    assert "resuming settle" in err and "a new study" not in err
    assert pd.read_csv(results / "verdicts.csv").equals(verdicts)
    first_key = cfg["study_key"]

    # The same experiment name with a changed forget set: a new study, which says so, searches anew and sets the
    # first one's report aside.
    assert launch(["--config", str(config), "--results-dir", str(results), "--tracking-uri", uri, "--experiment-name",
                   "settle", "--until-settled", "--max-replicates", "3", "--forget-count", "30"]) == 0
    err = capsys.readouterr().err
    assert re.search(rf"a new study in experiment settle: its settings differ from study {first_key} "
                     r"\(forget_count None -> 30; data_fingerprint \w+ -> \w+\)", err), err
    assert "already in the Optuna study" not in err and "gli: 2/2 done" in err
    assert (results / "superseded" / first_key / "verdicts.csv").is_file()
    second = yaml.safe_load((results / "config.yaml").read_text())
    assert second["study_key"] != first_key and second["forget_count"] == 30
    journal = JournalStorage(JournalFileBackend(str(results / f"optuna-{second['study_key']}.journal")))
    assert {s.study_name for s in optuna.get_all_study_summaries(journal)} == {
        f"settle-{m}-fair-pareto-{second['study_key']}" for m in ("gli", "finetune", "eu_k")}
    assert len(optuna.load_study(study_name=f"settle-gli-fair-pareto-{second['study_key']}", storage=journal).trials) == 2
