"""The bank of reference models: content keys, `python -m study.bank list | du | prune`, and exports naming
the entries they used."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import torch

from study.bank import main as bank
from trainables.base_models import BaseRecipe, TrainConfig, base_model, checkpoint_path, writer_host
from trainables.data import DataConfig, load_dataset
from trainables.models import ModelConfig

CPU = torch.device("cpu")
TINY = BaseRecipe(TrainConfig(epochs=1, lr=0.05, momentum=0.0), TrainConfig(epochs=1, lr=0.05, momentum=0.0))


def test_the_key_follows_the_split_and_the_bank_lists_sizes_and_prunes(tmp_path, capsys):
    model_cfg = ModelConfig("resnet18_small", 2)
    first, second = load_dataset(DataConfig(split_seed=1)), load_dataset(DataConfig(split_seed=2))
    # the same seed on another split is another model: never the first split's retrained model again
    assert checkpoint_path(first, "retrain", model_cfg, TINY["retrain"], 1) != \
        checkpoint_path(second, "retrain", model_cfg, TINY["retrain"], 1)
    for kind in ("original", "retrain"):
        _, _, cached = base_model(first, kind, model_cfg, TINY, 1, CPU, tmp_path)
        assert not cached
    assert base_model(first, "retrain", model_cfg, TINY, 1, CPU, tmp_path)[2]  # the second ask reads the bank
    folder = tmp_path / "models"
    names = sorted(p.name for p in folder.glob("*.pt"))
    assert len(names) == 2

    assert bank(["list", "--models-dir", str(tmp_path)]) == 0  # a study's models_dir: its files one level down
    out = capsys.readouterr().out
    assert all(n in out for n in names) and out.count(" ok") == 2 and first.split_fingerprint in out

    torn = folder / names[0]
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])  # a file cut short
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    (folder / f"{names[1]}.{writer_host()}.{gone}.tmp").write_bytes(b"half")  # a write whose writer died
    assert bank(["du", "--models-dir", str(folder)]) == 0
    du = capsys.readouterr().out.splitlines()
    assert du[-1].split()[1] == "2" and du[-1].split()[-1] == "1"  # two entries, one broken

    assert bank(["prune", "--models-dir", str(folder)]) == 2  # no filter: refused
    assert "needs a filter" in capsys.readouterr().err
    assert bank(["prune", "--broken", "--models-dir", str(folder)]) == 0  # a dry run
    assert "would remove " + names[0] in capsys.readouterr().out and torn.exists()
    assert bank(["prune", "--broken", "--yes", "--models-dir", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [names[1]]  # the torn file and the leftover gone

    old = time.time() - 3 * 86400
    os.utime(folder / names[1], (old, old))
    assert bank(["prune", "--older-than", "2", "--kind", "retrain", "--yes", "--models-dir", str(folder)]) == 0
    assert not list(folder.iterdir())
    assert bank(["list", "--models-dir", str(tmp_path / "none")]) == 2
    assert "no bank at" in capsys.readouterr().err
