"""Base training: memorisation is measurable on digits, checkpoints are cached by their settings."""

from dataclasses import replace

import torch

from trainables import engine
from trainables.base_models import base_model, checkpoint_path, default_configs, main
from trainables.data import DataConfig, load_dataset
from trainables.metrics import evaluate
from trainables.models import ModelConfig


def test_original_memorises_more_than_retrained(tmp_path):
    data = load_dataset(DataConfig())
    model_cfg, train_cfg = default_configs("digits")
    device = engine.pick_device("cpu")
    original, seconds, cached = base_model(data, "original", model_cfg, train_cfg, 0, device, tmp_path)
    assert not cached and seconds > 0
    retrained, _, _ = base_model(data, "retrain", model_cfg, train_cfg, 0, device, tmp_path)
    o = evaluate(original, data, test="test_report", unseen="unseen_report")
    r = evaluate(retrained, data, test="test_report", unseen="unseen_report")
    assert o["accuracy"] > 0.85 and r["accuracy"] > 0.85
    assert o["forget_accuracy"] > r["forget_accuracy"]  # the retrained model never saw the forget set
    assert o["forgetting_score"] > r["forgetting_score"] + 0.02
    again, seconds_again, cached = base_model(data, "original", model_cfg, train_cfg, 0, device, tmp_path)
    assert cached and seconds_again == seconds
    for a, b in zip(original.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_key_follows_settings(tmp_path):
    data = load_dataset(DataConfig())
    model_cfg, recipe = default_configs("digits")
    train_cfg = recipe["original"]
    base = checkpoint_path(data, "original", model_cfg, train_cfg, 0, tmp_path)
    assert checkpoint_path(data, "original", model_cfg, train_cfg, 1, tmp_path) != base
    longer = replace(train_cfg, epochs=train_cfg.epochs + 1)
    assert checkpoint_path(data, "original", model_cfg, longer, 0, tmp_path) != base
    other = load_dataset(DataConfig(split_seed=3))
    assert checkpoint_path(other, "original", model_cfg, train_cfg, 0, tmp_path) != base


def test_each_data_set_trains_as_its_notebook():
    """reference-loops.md section 3: the recipes differ by data set and by base model."""
    _, mufac = default_configs("mufac")
    assert mufac.original == mufac.retrain and (mufac.original.epochs, mufac.original.momentum) == (30, 0.9)
    _, ml = default_configs("mucac")
    assert (ml.original.epochs, ml.original.momentum, ml.retrain.epochs) == (8, 0.0, 7)  # the 8-epoch checkpoint
    _, binary = default_configs("mucac-binary")
    assert (binary.original.gamma, binary.original.momentum, binary.retrain.momentum) == (0.2, 0.9, 0.0)
    model, small = default_configs("mufac", width=8, base_epochs=1)
    assert model == ModelConfig("resnet18_small", 8) and small.original.epochs == small.retrain.epochs == 1


def test_same_seed_same_model(tmp_path):
    data = load_dataset(DataConfig())
    model_cfg, train_cfg = default_configs("digits", base_epochs=2)
    device = engine.pick_device("cpu")
    a, _, _ = base_model(data, "retrain", model_cfg, train_cfg, 5, device, tmp_path / "a")
    b, _, _ = base_model(data, "retrain", model_cfg, train_cfg, 5, device, tmp_path / "b")
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_command_prints_both_models(tmp_path, capsys):
    assert main(["--epochs", "2", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "original" in out and "retrain" in out
    assert main(["--dataset", "mufac", "--data-dir", str(tmp_path / "missing")]) == 2


def test_cut_short_or_altered_checkpoint_is_retrained_not_loaded(tmp_path, capsys):
    data = load_dataset(DataConfig())
    model_cfg, recipe = default_configs("digits", base_epochs=1)
    device = engine.pick_device("cpu")
    first, _, _ = base_model(data, "original", model_cfg, recipe, 0, device, tmp_path)
    path = checkpoint_path(data, "original", model_cfg, recipe["original"], 0, tmp_path)
    assert not list(path.parent.glob("*.tmp"))  # written under a temporary name, then renamed
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # a crash mid-copy: the zip's directory is gone
    capsys.readouterr()
    again, _, cached = base_model(data, "original", model_cfg, recipe, 0, device, tmp_path)
    err = capsys.readouterr().err
    assert not cached and "unreadable" in err and "retraining" in err
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)  # retrained to the same weights (same seed, same machine)
    assert path.read_bytes() != whole[: len(whole) // 2]
    state = torch.load(path, weights_only=True)  # altered weights under an intact zip and the old digest
    state["state_dict"]["fc.weight"] += 1.0
    torch.save(state, path)
    _, _, cached = base_model(data, "original", model_cfg, recipe, 0, device, tmp_path)
    assert not cached and "do not match the checkpoint's digest" in capsys.readouterr().err
    _, _, cached = base_model(data, "original", model_cfg, recipe, 0, device, tmp_path)
    assert cached  # the rewritten checkpoint verifies
