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
