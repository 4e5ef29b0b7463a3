"""Faults a real cluster meets (docs/reliability.md): files cut short, hostile inputs, tiny forget sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainables.records import write_atomic


def test_a_crash_mid_write_leaves_the_old_file_whole(tmp_path):
    path = write_atomic(tmp_path / "gli.yaml", "method: gli\n")

    def crash(tmp: Path) -> None:
        tmp.write_text("method: g")  # half written, then the process dies
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, writer=crash)
    assert path.read_text() == "method: gli\n"
    assert [p.name for p in tmp_path.iterdir()] == ["gli.yaml"]  # no temporary file left behind
    write_atomic(path, b"method: scrub\n")
    assert path.read_text() == "method: scrub\n"


@pytest.mark.parametrize("case", ["dot-dot", "absolute", "symlink out"])
def test_a_manifest_naming_a_file_outside_its_folder_is_refused(tmp_path, case):
    from tests.fixtures import make_folder
    from trainables.data import DataConfig, DataError, load_dataset

    root = make_folder(tmp_path / "mine", people=12)
    secret = tmp_path / "secret.png"
    secret.write_bytes((root / "img" / "p000_0.png").read_bytes())  # a readable image, outside the folder
    name = {"dot-dot": "img/../../secret.png", "absolute": str(secret), "symlink out": "img/link.png"}[case]
    if case == "symlink out":
        (root / "img" / "link.png").symlink_to(secret)
    lines = (root / "manifest.csv").read_text().splitlines()
    lines[3] = f"{name},cat"
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"manifest.csv: row 4: path .* is not a file inside .*symlinks out of the folder"):
        load_dataset(DataConfig(dataset="folder", data_dir=str(root), image_size=16, cache_dir=str(tmp_path / "c")))


def test_benchmark_layouts_refuse_paths_out_of_their_folders(tmp_path):
    from tests.fixtures import make_mucac, make_mufac
    from trainables.data import DataConfig, DataError, load_dataset

    mufac = make_mufac(tmp_path / "mufac", duplicate=False)
    (tmp_path / "outside.jpg").write_bytes(next((mufac / "train_images").iterdir()).read_bytes())
    csv = mufac / "custom_val_dataset.csv"
    lines = csv.read_text().splitlines()
    lines[2] = "../../outside.jpg,a,F0801,note"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"custom_val_dataset.csv: row 3: path '../../outside.jpg' is not a file inside"):
        load_dataset(DataConfig(dataset="mufac", data_dir=str(mufac), forget_count=8, cache_dir=str(tmp_path / "c")))
    mucac = make_mucac(tmp_path / "mucac")
    first = sorted((mucac / "CelebA-HQ-img").iterdir())[0]
    moved = tmp_path / "moved.jpg"
    first.rename(moved)
    first.symlink_to(moved)  # the same name, now a link out of the image folder
    with pytest.raises(DataError, match="symlinks out of the folder are refused"):
        load_dataset(DataConfig(dataset="mucac", data_dir=str(mucac), cache_dir=str(tmp_path / "c")))


def test_yaml_with_a_python_object_tag_is_refused_in_one_line(tmp_path, capsys):
    from study.config import ConfigError, load_yaml
    from study.reproduce import main as reproduce

    marker = tmp_path / "ran"
    payload = f"!!python/object/apply:os.system ['touch {marker}']\n"
    config = tmp_path / "study.yaml"
    config.write_text(f"seeds: {payload}")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(str(config))
    export = tmp_path / "gli.yaml"
    export.write_text(f"kind: {payload}")
    assert reproduce([str(export)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "not valid YAML" in err[0]
    assert not marker.exists()  # the tag was never executed


@pytest.fixture(scope="module")
def nine():
    """Digits with one person's nine photos as the forget set, and a quickly trained original."""
    import torch

    from trainables.base_models import TrainConfig, train_model
    from trainables.data import DataConfig, load_dataset
    from trainables.models import ModelConfig

    data = load_dataset(DataConfig(forget_count=9))
    model, _ = train_model(data, "train", ModelConfig("resnet18_small", 4), TrainConfig(epochs=2, lr=0.05, momentum=0.0),
                           seed=0, device=torch.device("cpu"), log_every=0)
    return data, model.eval()


@pytest.mark.parametrize("name", ["advanced_neggrad", "bad_teaching", "gli", "neggrad", "scrub", "unsir"])
def test_every_paired_method_runs_on_a_forget_set_smaller_than_a_batch(nine, name, capsys):
    """fair: batches of the forget set's size, the forget set whole in each; every metric finite."""
    import math

    import torch

    from trainables.methods import create
    from trainables.unlearn import EvalConfig, unlearn

    data, original = nine
    steps = []
    result = unlearn(create(name, "digits", epochs=1), original, data, seed=0, device=torch.device("cpu"),
                     cfg=EvalConfig(protocol="fair", eval_every=20), on_step=lambda n, step: steps.append(step))
    assert steps and {s.forget for s in steps} <= {0, 9} and any(s.forget == 9 for s in steps)
    assert all(s.retain <= 9 for s in steps if s.forget)  # paired with retain batches of the same size
    assert all(math.isfinite(v) for k, v in result["metrics"].items() if isinstance(v, float))
    assert "smaller than a batch of 64: paired batches of 9" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["l1_sparse", "random_labels", "salun", "ssd"])
def test_the_authors_loops_run_on_a_forget_set_smaller_than_a_batch(nine, name):
    """Their loops read the forget set in batches of their own (256, SSD 128): nine images are one short batch."""
    import math

    import torch

    from trainables.methods import create
    from trainables.unlearn import EvalConfig, unlearn

    data, original = nine
    steps = []
    result = unlearn(create(name, "digits", epochs=1), original, data, seed=0, device=torch.device("cpu"),
                     cfg=EvalConfig(protocol="fair", eval_every=20), on_step=lambda n, step: steps.append(step))
    assert steps and {s.forget for s in steps} <= {0, 9}
    assert any(s.forget == 9 for s in steps) == (name != "l1_sparse")  # l1-sparse reads the retain set only
    assert all(math.isfinite(v) for k, v in result["metrics"].items() if isinstance(v, float))


def test_under_paper_the_notebook_loops_run_as_they_are_and_say_so(nine, capsys):
    import torch

    from trainables.methods import create
    from trainables.unlearn import EvalConfig, unlearn

    data, original = nine
    result = unlearn(create("neggrad", "digits", epochs=1), original, data, seed=0, device=torch.device("cpu"),
                     cfg=EvalConfig(protocol="paper"))
    assert result["steps"] == 0  # RD skips every pair of mismatched sizes, as the notebook's loop does
    assert "no update was made (every batch was skipped" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["fair", "paper"])
def test_splits_too_small_for_the_attack_are_refused_before_training(tmp_path, capsys, protocol):
    from study.launch import main as launch
    from trainables.metrics import ATTACK_MIN
    from trainables.run import main as run

    args = ["--forget-count", str(ATTACK_MIN - 1), "--protocol", protocol]
    assert run(["--method", "gli", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"needs at least {ATTACK_MIN} examples" in err[0] and "forget has 5" in err[0]
    assert "[base]" not in "".join(err)  # nothing trained
    assert launch([*args, "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and f"needs at least {ATTACK_MIN} examples" in err[0]
    assert not (tmp_path / "r" / "mlflow.db").exists()


def test_a_manifest_is_read_row_by_row_keeping_only_its_columns(tmp_path):
    from tests.fixtures import make_folder
    from trainables.data.sources import read_columns

    root = make_folder(tmp_path / "mine", people=12)
    lines = (root / "manifest.csv").read_text().splitlines()
    rows = ["path,label,note,identity"] + [f'{line},"free text, with a comma",p{i % 4}' for i, line in enumerate(lines[1:])]
    rows[2] = lines[2] + ","  # trailing fields left out: empty
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    table = read_columns(root / "manifest.csv", ("path", "label"), ("identity", "split"), "the data set")
    assert set(table) == {"path", "label", "identity"}  # the note column is never held; split is absent
    assert len(table["path"]) == 24 and table["identity"][1] == "" and table["identity"][2] == "p2"
