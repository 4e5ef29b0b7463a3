"""One study, one identity: the key holds every setting that changes a number and nothing about where the study
runs; what a study persists is named by it; every reader takes a search's choice from one place, in one order."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from analysis.choice import ranked_settings, search_front
from study.cli import changed_settings
from study.config import resolve
from analysis.results import supersede
from study.pipeline import keyed_settings, search_capacity, study_key
from trainables.records import SEL_ACCURACY, SEL_FINAL, SEL_FORGETTING, TRIAL_KEY_COL, journal_path, optuna_study_name


def _cfg(**given):
    return resolve({}, given)


def test_the_key_holds_what_changes_numbers_and_nothing_about_placement(tmp_path):
    base = study_key(_cfg(), "fp")
    for placement in ({"num_cpus": 64}, {"num_gpus": 8, "allow_cpu": True}, {"results_dir": str(tmp_path)},
                      {"tracking_uri": "http://127.0.0.1:5000"}, {"bundle_seconds": 0.0}, {"max_failures": 5},
                      {"cpus_per_trial": 2}, {"data_dir": str(tmp_path)}, {"max_replicates": 10}, {"round_size": 5},
                      {"looks": [3, 5]}):  # the last three: no --until-settled, no looks
        assert study_key(_cfg(**placement), "fp") == base, placement
    for result in ({"forget_count": 30}, {"width": 8}, {"budget": 12}, {"search_batch": 8},
                   {"gli_space": {"step_size": [0.002, 0.05], "iterations": [1, 4], "guidance": [100, 5000]}},
                   {"until_settled": True}, {"until_settled": True, "looks": [3, 10]}, {"sampler_seed": 1},
                   {"trial_threads": 2}):
        assert study_key(_cfg(**result), "fp") != base, result
    assert study_key(_cfg(), "another data fingerprint") != base
    assert "budget" in keyed_settings(_cfg()) and "num_gpus" not in keyed_settings(_cfg())


def test_the_look_schedule_comes_from_the_study_s_settings_never_from_the_slots():
    cfg = _cfg(until_settled=True, replicates=3, max_replicates=12)
    assert cfg.looks == [3, 6, 9, 12]  # four looks, equally spaced
    assert _cfg(until_settled=True).looks == [5, 10, 15, 20]
    assert _cfg(until_settled=True, replicates=3, max_replicates=12, round_size=4).looks == [3, 7, 11, 12]
    assert _cfg(until_settled=True, looks=[5, 10, 15, 20]).looks == [5, 10, 15, 20]
    assert _cfg(until_settled=True, num_cpus=1).looks == _cfg(until_settled=True, num_cpus=64, num_gpus=64,
                                                               allow_cpu=True).looks
    assert _cfg().looks is None  # a fixed-size study makes its one look at --replicates
    from study.config import ConfigError

    with pytest.raises(ConfigError, match="--looks must be increasing"):
        _cfg(until_settled=True, looks=[10, 5])
    with pytest.raises(ConfigError, match="past --max-replicates"):
        _cfg(until_settled=True, looks=[5, 30])


def test_a_study_s_searches_and_journal_are_named_by_its_key(tmp_path):
    a, b = study_key(_cfg(), "fp"), study_key(_cfg(forget_count=30), "fp")
    assert optuna_study_name("e", "gli", "fair", "pareto", a) != optuna_study_name("e", "gli", "fair", "pareto", b)
    assert journal_path(tmp_path, a) != journal_path(tmp_path, b)
    assert journal_path(tmp_path) == tmp_path / "optuna.journal"  # a study recorded before keys


def test_a_new_study_in_a_results_folder_sets_the_old_report_aside(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"study_key": "old", "forget_count": None}))
    for name in ("summary.md", "verdicts.csv", "ulira.csv", "front.png", "optuna_history.png", "mlflow.db",
                 "mlflow.db-wal", "optuna-old.journal"):
        (tmp_path / name).write_text(name)
    (tmp_path / "artifacts").mkdir()
    assert supersede(tmp_path, "old") is None and (tmp_path / "summary.md").exists()  # the same study: kept
    assert supersede(tmp_path, "new") == "old"
    aside = tmp_path / "superseded" / "old"
    assert sorted(p.name for p in aside.iterdir()) == ["config.yaml", "front.png", "optuna_history.png", "summary.md",
                                                        "ulira.csv", "verdicts.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "mlflow.db", "mlflow.db-wal",
                                                           "optuna-old.journal", "superseded"]
    from study.audit import study_config

    assert study_config(str(tmp_path), "old") == aside / "config.yaml"  # the audit still finds that study's settings
    assert study_config(str(tmp_path), "unknown") is None


def test_the_changed_settings_are_named_as_recorded():
    before = {"forget_count": None, "budget": 24, "gli_space": {"iterations": [1, 10]}, "dataset": "digits"}
    now = {"forget_count": 30, "budget": "24", "gli_space": {"iterations": [1, 10]}, "dataset": "digits"}
    assert changed_settings(before, now, ["forget_count", "budget", "gli_space", "dataset"]) == ["forget_count None -> 30"]


def test_the_launcher_says_when_the_searches_cannot_fill_the_slots():
    cfg = _cfg()  # 13 searches, 4 settings at a time each
    assert search_capacity(cfg, 48) is None and search_capacity(cfg, 52) is None
    line = search_capacity(cfg, 128)
    assert "13 search(es) run at most 52 trials at once (--search-batch 4) on 128 slots" in line
    assert "raise --search-batch" in line and "a new study" in line
    assert search_capacity(_cfg(search_batch=0), 1000) is None  # as slots free: no cap
    assert "at most 2 trials" in search_capacity(_cfg(baselines=["finetune"], budget=1), 8)  # the budget caps too


def _trials(rows):
    return pd.DataFrame([{TRIAL_KEY_COL: f"gli/gli/seed0/{key}", SEL_ACCURACY: acc, SEL_FORGETTING: fs,
                          SEL_FINAL: (acc + 1 - 2 * fs) / 2} for key, acc, fs in rows])


def test_a_search_s_choice_is_one_order_whatever_order_its_trials_are_read_in():
    """Two front points with the same final score are ordered by trial key, and a setting tried twice is chosen
    once, whichever order MLflow returns the runs in."""
    rows = [("aaa", 0.9, 0.1), ("zzz", 0.8, 0.05), ("ccc", 0.7, 0.2), ("zzz", 0.8, 0.05), ("ddd", 0.95, 0.3)]
    orders = (rows, rows[::-1], rows[2:] + rows[:2])
    fronts = {tuple(search_front(_trials(order), "pareto", 5)[TRIAL_KEY_COL]) for order in orders}
    assert fronts == {("gli/gli/seed0/aaa", "gli/gli/seed0/zzz", "gli/gli/seed0/ddd")}  # 0.85 = 0.85 > 0.675
    for order in orders:  # a scalar search: its one best trial, the same one
        assert list(search_front(_trials(order), "final_score", 5)[TRIAL_KEY_COL]) == ["gli/gli/seed0/aaa"]
        assert search_front(_trials(order), "pareto", 1)[TRIAL_KEY_COL].tolist() == ["gli/gli/seed0/aaa"]


def test_confirmed_settings_rank_by_mean_with_a_stable_tie_break():
    rows = pd.DataFrame({"setting": ["b", "a", "b", "a", "c", "d"], SEL_FINAL: [0.8, 0.7, 0.6, 0.7, 0.5, float("nan")]})
    assert ranked_settings(rows) == ["a", "b", "c", "d"]  # a and b tie at 0.7: by digest; no score last
    assert ranked_settings(rows.iloc[::-1]) == ["a", "b", "c", "d"]
