"""Study configuration: defaults, YAML then flags, and one clear error per bad setting."""

import re

import pytest

from study.config import ConfigError, load_yaml, resolve


def test_defaults_resolve_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve({}, {})
    assert cfg.experiment_name == "gli-digits"
    assert cfg.results_dir == str(tmp_path / "results" / "gli-digits")
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/results/gli-digits/mlflow.db"  # absolute, always
    assert cfg.storage_path == str(tmp_path / "results" / "gli-digits" / "ray")
    assert cfg.gpus_per_trial == 0 and cfg.objective == "pareto" and cfg.protocol == "fair"


def test_file_then_flags(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("budget: 7\nreplicates: 2\nselection: test\ngli-space:\n  step_size: [0.002, 0.05]\n"
                    "  iterations: [1, 4]\n  guidance: [100, 5000]\n")
    cfg = resolve(load_yaml(str(path)), {"replicates": 5, "budget": None})
    assert cfg.budget == 7  # from the file
    assert cfg.replicates == 5  # the flag wins
    assert cfg.protocol == "paper" and cfg.selection is None  # the deprecated alias, mapped
    assert cfg.gli_space["iterations"] == [1, 4]


@pytest.mark.parametrize("given,protocol,paper_baselines", [
    ({}, "fair", False),  # fair: every baseline searched with GLI's budget
    ({}, "paper", True),  # paper: the notebooks' settings
    ({"paper_baselines": True}, "fair", True),
    ({"paper_baselines": False}, "paper", False),
    ({"tune_baselines": True}, "paper", False),  # the deprecated flag, mapped
    ({"tune_baselines": False}, "fair", True),
])
def test_baselines_are_searched_with_the_same_budget_unless_asked_for_paper_settings(given, protocol, paper_baselines,
                                                                                      capsys):
    cfg = resolve({}, {**given, "protocol": protocol})
    assert cfg.paper_baselines is paper_baselines and cfg.tune_baselines is None
    assert ("deprecated" in capsys.readouterr().err) == ("tune_baselines" in given)


def test_seeds_is_the_old_name_of_replicates(capsys):
    cfg = resolve({"seeds": 4}, {})
    assert cfg.replicates == 4 and cfg.seeds is None
    assert "--seeds is deprecated: use --replicates 4" in capsys.readouterr().err


def test_the_old_name_of_the_budget_still_works(capsys):
    cfg = resolve({"gli_trials": 9}, {})
    assert cfg.budget == 9 and cfg.gli_trials is None
    assert "gli_trials is deprecated: use budget" in capsys.readouterr().err


def test_smoke_test_shrinks_the_study():
    cfg = resolve({}, {"smoke_test": True})
    assert cfg.budget <= 4 and cfg.replicates == 1 and cfg.method_epochs == 1 and cfg.experiment_name.endswith("-smoke")


@pytest.mark.parametrize("text,message", [
    ("budget: [1, 2\n", "not valid YAML at line"),
    ("num_trials: 5\n", "unknown setting(s) num_trials"),
    ("- just a list\n", "expected a mapping"),
])
def test_bad_yaml(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_yaml(str(path))


@pytest.mark.parametrize("values,message", [
    ({"dataset": "cifar"}, "unknown data set 'cifar'"),
    ({"dataset": "mufac"}, "needs --data-dir"),
    ({"gli_space": {"step_size": [0.1, 0.01], "iterations": [1, 10], "guidance": [100, 20000]}}, "low 0.1 is above high 0.01"),
    ({"gli_space": {"step_size": [0, 0.1], "iterations": [1, 10], "guidance": [100, 20000]}}, "step_size (alpha) must be positive"),
    ({"gli_space": {"step_size": [0.001, 0.1], "iterations": [0, 10], "guidance": [100, 20000]}}, "iterations (K) must be a whole number >= 1"),
    ({"budget": 0}, "--budget must be a whole number >= 1"),
    ({"gli_trials": 0}, "--budget must be a whole number >= 1"),  # the deprecated name, mapped before the check
    ({"baselines": ["finetune", "magic"]}, "unknown baseline method(s) magic"),
    ({"num_gpus": 2, "gpus_per_trial": 0}, "--gpus-per-trial must be in"),
    ({"eval_every": -1}, "--eval-every must be a whole number >= 1, got -1"),
    ({"eval_every": 0, "smoke_test": True}, "--eval-every must be a whole number >= 1, got 0"),  # 0 is not unset
    ({"patience": 0}, "--patience must be a whole number >= 1"),
    ({"base_epochs": 0, "smoke_test": True}, "--base-epochs must be a whole number >= 1, got 0"),
    ({"forget_count": 2.5}, "--forget-count must be a whole number >= 1, got 2.5"),
    ({"sampler_seed": "zero"}, "--sampler-seed must be a whole number >= 0, got 'zero'"),
    ({"bundle_seconds": "1s"}, "--bundle-seconds must be a number, got '1s'"),
    ({"audit": True}, "--audit needs at least 2 models"),
    ({"attack": "lira"}, "--attack must be ulira, got 'lira'"),
    ({"audit_ceiling": "cheap"}, "--audit-ceiling must be retrained or simulated"),
    ({"attack": "ulira", "shadows": 3}, "--shadows must be an even whole number >= 2"),
    ({"attack": "ulira", "targets": 0}, "--targets must be an even whole number >= 2"),
])
def test_bad_values(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(values, {})


def test_fashion_mnist_sizes_reach_the_data(tmp_path):
    from study.config import data_config
    from study.cli import build_parser

    args = build_parser().parse_args(["--dataset", "fashion-mnist", "--train-count", "500", "--unseen-count", "300",
                                      "--test-count", "200", "--forget-count", "50",
                                      "--results-dir", str(tmp_path)])
    from study.config import FIELDS

    cfg = resolve({}, {k: v for k, v in vars(args).items() if k in FIELDS})
    data = data_config(cfg)
    assert (data.train_count, data.unseen_count, data.test_count, data.forget_count) == (500, 300, 200, 50)
    assert cfg.experiment_name == "gli-fashion-mnist"
    assert data_config(resolve({}, {"dataset": "fashion-mnist", "results_dir": str(tmp_path)})).train_count is None


def test_deterministic_trials_run_fp32_with_deterministic_kernels(tmp_path):
    from study.context import StudyContext
    from trainables import engine
    from trainables.data import DataConfig, load_dataset

    data = load_dataset(DataConfig())
    exact = StudyContext(resolve({}, {"deterministic": True, "results_dir": str(tmp_path)}), data, None, 1).settings
    assert exact.accel == engine.Accel.exact() and exact.accel.precision == "fp32" and not exact.accel.cuda_graphs
    assert exact.as_dict()["accel"]["deterministic"]  # exported with the settings, and so reproduced that way
    default = StudyContext(resolve({}, {"results_dir": str(tmp_path)}), data, None, 1).settings
    assert default.accel == engine.Accel()


def test_help_states_each_default_once_in_groups_with_examples(capsys):
    from study.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "default: None" not in text and "(default 24) (default" not in text
    flat = " ".join(text.split())
    assert "--budget BUDGET Optuna trials per searched method: GLI, and under --protocol fair every baseline (default: 24)" in flat
    assert "--gli-trials" not in text and "--tune-baselines" not in text  # deprecated: accepted, not shown
    for group in ("data:", "protocol and evaluation:", "search:", "cluster:", "tracking and results:", "advanced:"):
        assert f"\n{group}\n" in text
    assert "--selection " not in text and "--selection\n" not in text  # deprecated: accepted, not shown
    assert text.rstrip().endswith("docs/guide.md says what every setting does.") and "examples:" in text
    # one default per flag: no help text says "default" twice
    for block in re.split(r"\n  (?=--)", text.split("examples:")[0]):
        assert block.count("default") <= 1, block


def test_the_objectives_the_launcher_offers_are_the_searches_own():
    from study.stages import OBJECTIVES
    from trainables.records import OBJECTIVES as NAMES

    assert tuple(OBJECTIVES) == NAMES and resolve({}, {}).objective == NAMES[0]
