"""`python -m trainables.run`: one method, every method, and clear errors."""

import json

from trainables.methods import available
from trainables.run import main


def test_one_method_json(capsys):
    assert main(["--method", "gli", "--set", "step_size=0.02", "--set", "iterations=3", "--json"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("method", "accuracy", "forgetting_score", "final_score", "jsd", "seconds"):
        assert key in last
    assert last["method"] == "gli" and last["hparams"]["step_size"] == 0.02 and last["hparams"]["iterations"] == 3
    assert last["protocol"] == "fair"


def test_a_row_is_the_study_s_own_trial(capsys, monkeypatch):
    """`trainables.run` runs a method through `run_trial`, the function every trial of the study (and
    `study.reproduce`) runs: the row is that trial's report, under the same settings."""
    import torch

    from trainables import trial

    reports = []
    real = trial.run_trial

    def spy(spec, settings, data, *hooks):
        reports.append((spec, settings, real(spec, settings, data, *hooks)))
        return reports[-1][2]

    monkeypatch.setattr("trainables.run.run_trial", spy)
    assert main(["--method", "finetune", "--seed", "1", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (spec, settings, report), = reports
    assert (spec.method, spec.seed, spec.hparams) == ("finetune", 1, {})
    assert settings.threads == torch.get_num_threads() and settings.evaluation.protocol == "fair"
    assert {k: row[k] for k in ("accuracy", "forgetting_score", "final_score", "sel_final_score")} == \
        {k: report[k] for k in ("accuracy", "forgetting_score", "final_score", "sel_final_score")}


def test_all_methods_table(capsys):
    assert main(["--method", "all", "--eval-every", "7"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines()[2:]]
    assert rows == ["original", "retrain"] + available()
    assert "protocol=fair" in out


def test_errors_are_one_line(capsys):
    assert main(["--method", "nope"]) == 2
    assert "unknown method 'nope'; known: advanced_neggrad" in capsys.readouterr().err
    assert main(["--method", "gli", "--set", "step_size=0"]) == 2
    assert capsys.readouterr().err.strip() == "error: gli: step_size (alpha) must be positive, got 0"
    assert main(["--method", "gli", "--set", "alpha"]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main(["--method", "finetune", "--set", "k=2"]) == 2
    assert "unknown hyper-parameter(s) k" in capsys.readouterr().err
    assert main(["--method", "gli", "--set", "step_size=abc"]) == 2  # text where a number belongs: one line
    assert capsys.readouterr().err.strip() == "error: gli: step_size (alpha) must be positive, got 'abc'"


def test_a_diverging_row_is_one_line_and_exit_1(capsys):
    """`1e8` is a number (YAML alone reads it as text); the run diverges: one line, the others unaffected."""
    assert main(["--method", "neggrad", "--set", "lr=1e8", "--eval-every", "7"]) == 1
    assert "[run] neggrad: failed (neggrad: non-finite" in capsys.readouterr().err


def test_fashion_mnist_and_a_manifest_folder_run_end_to_end(tmp_path, capsys):
    """The two user-data paths, each through the command line: sizes from the flags, a GLI run, metrics."""
    from tests.fixtures import make_fashion, make_folder

    fashion = make_fashion(tmp_path / "fm", train=200, test=60)
    args = ["--method", "gli", "--dataset", "fashion-mnist", "--data-dir", str(fashion), "--train-count", "120",
            "--forget-count", "30", "--unseen-count", "60", "--test-count", "60", "--base-epochs", "1",
            "--set", "iterations=2", "--json"]
    assert main(args) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["method"] == "gli" and 0 <= last["accuracy"] <= 1 and last["forgetting_score"] >= 0
    folder = make_folder(tmp_path / "pngs", people=200, per_person=1)  # two columns: path, label
    assert main(["--method", "finetune", "--dataset", "folder", "--data-dir", str(folder), "--image-size", "16",
                 "--base-epochs", "1", "--json"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["method"] == "finetune" and 0 <= last["accuracy"] <= 1
    assert main(["--method", "gli", "--dataset", "fashion-mnist", "--data-dir", str(fashion),
                 "--train-count", "190", "--unseen-count", "60"]) == 2
    assert "must fit in the 200 training images" in capsys.readouterr().err
