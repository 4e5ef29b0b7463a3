"""Data sets: sizes, labels, identity-disjoint splits, forget rows, duplicates, cache, audit and bad input."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures import MUCAC_THRESHOLDS, make_mucac, make_mufac
from trainables.data import DataConfig, DataError, augment_batch, load_dataset
from trainables.data.__main__ import main as data_cli


def _ids(split) -> set[int]:
    return set(split.identities.tolist())


def _check_structure(ds):
    s = ds.splits
    assert len(s["train"]) == len(s["forget"]) + len(s["retain"])
    assert torch.equal(s["train"].images[: len(s["forget"])], s["forget"].images)
    for a, b in [("train", "test"), ("train", "unseen"), ("test", "unseen"), ("val", "test_report"),
                 ("unseen_val", "unseen_report")]:
        assert not _ids(s[a]) & _ids(s[b]), f"{a} and {b} share identities"
    assert len(s["val"]) + len(s["test_report"]) == len(s["test"])
    assert len(s["unseen_val"]) + len(s["unseen_report"]) == len(s["unseen"])
    assert all(len(split) > 0 for split in s.values())
    assert s["train"].images.dtype == torch.uint8


def test_digits_splits():
    ds = load_dataset(DataConfig())
    _check_structure(ds)
    assert ds.sizes()["forget"] == 200 and ds.sizes()["test"] == 359 and ds.sizes()["unseen"] == 359
    assert sum(ds.sizes()[k] for k in ("train", "test", "unseen")) == 1797
    assert ds.in_channels == 1 and ds.image_size == 8 and ds.num_outputs == 10
    again = load_dataset(DataConfig())
    assert torch.equal(again["forget"].images, ds["forget"].images) and again.fingerprint == ds.fingerprint
    other = load_dataset(DataConfig(split_seed=1))
    assert not torch.equal(other["forget"].labels, ds["forget"].labels)


def test_mufac_layout(tmp_path):
    root = make_mufac(tmp_path / "mufac")
    ds = load_dataset(DataConfig("mufac", str(root), image_size=16, forget_count=8, cache_dir=str(tmp_path / "c")))
    _check_structure(ds)
    assert ds.sizes()["train"] == 48 and ds.sizes()["forget"] == 8 and ds.sizes()["retain"] == 40
    assert ds.sizes()["test"] == 16 and ds.sizes()["unseen"] == 16
    assert ds.task == "multiclass" and ds.num_outputs == 8 and ds.image_size == 16
    # forget = the first 8 CSV rows, in file order: families F0001 and F0002, labels from the age letters
    rows = (root / "custom_train_dataset.csv").read_text().splitlines()[1:9]
    expected = torch.tensor(["abcdefgh".index(r.split(",")[1]) for r in rows])
    assert torch.equal(ds["forget"].labels, expected)
    assert len(_ids(ds["forget"])) == 2
    assert ds.audit["identity_overlap"] == {"train/test": 0, "train/unseen": 0, "test/unseen": 0}
    assert ds.audit["duplicates"]["cross_split_pairs"] == 1
    example = ds.audit["duplicates"]["examples"][0]
    assert {example["a_split"], example["b_split"]} & {"test"}
    saved = json.loads((tmp_path / "c" / os.path.basename(ds.audit["cache"])).with_suffix(".audit.json").read_text())
    assert saved["sizes"] == ds.sizes()


def test_mufac_drop_duplicates(tmp_path):
    root = make_mufac(tmp_path / "mufac")
    cfg = DataConfig("mufac", str(root), image_size=16, forget_count=8, drop_duplicates=True, cache_dir=str(tmp_path / "c"))
    ds = load_dataset(cfg)
    assert ds.audit["duplicates"]["dropped"] == 1
    assert ds.sizes()["train"] == 48 and ds.sizes()["test"] == 15  # the test copy goes, the train copy stays


def test_decode_cache_reuse_and_invalidation(tmp_path):
    root = make_mufac(tmp_path / "mufac", duplicate=False)
    cfg = DataConfig("mufac", str(root), image_size=16, forget_count=8, cache_dir=str(tmp_path / "c"))
    first = load_dataset(cfg)
    assert first.audit["cache_hit"] is False
    second = load_dataset(DataConfig("mufac", str(root), image_size=16, forget_count=12, cache_dir=str(tmp_path / "c")))
    assert second.audit["cache_hit"] is True and second.sizes()["forget"] == 12  # split settings need no re-decode
    assert torch.equal(second["train"].images, first["train"].images)
    assert load_dataset(DataConfig("mufac", str(root), image_size=12, forget_count=8, cache_dir=str(tmp_path / "c"))).audit["cache_hit"] is False
    # an edited image changes the key and the decoded pixels
    image = sorted((root / "train_images").iterdir())[0]
    time.sleep(0.01)
    from PIL import Image
    Image.new("RGB", (24, 24), (255, 255, 255)).save(image, format="JPEG")
    third = load_dataset(cfg)
    assert third.audit["cache_hit"] is False
    assert not torch.equal(third["train"].images, first["train"].images)


def test_mucac_layout(tmp_path):
    root = make_mucac(tmp_path / "celeba")
    ds = load_dataset(DataConfig("mucac", str(root), image_size=16, cache_dir=str(tmp_path / "c"), **MUCAC_THRESHOLDS))
    _check_structure(ds)
    assert ds.task == "multilabel" and ds.output_names == ["Male", "Smiling", "Young"]
    assert ds.sizes()["test"] == 30 and ds.sizes()["retain"] == 30 and ds.sizes()["forget"] == 30
    # labels come from the named columns (1-based 21, 32, 40) with -1 -> 0
    lines = (root / "CelebA-HQ-attribute.txt").read_text().splitlines()[2:]
    ident = dict(line.split() for line in (root / "CelebA-HQ-identity.txt").read_text().splitlines())
    forget_rows = [l.split() for l in lines if 20 <= int(ident[l.split()[0]]) < 30]
    expected = torch.tensor([[(int(r[c]) + 1) // 2 for c in (21, 32, 40)] for r in forget_rows], dtype=torch.float32)
    assert torch.equal(ds["forget"].labels, expected)
    binary = load_dataset(DataConfig("mucac-binary", str(root), image_size=16, attribute="Smiling",
                                     cache_dir=str(tmp_path / "c"), **MUCAC_THRESHOLDS))
    # two classes with cross-entropy, as the notebooks: the label is the attribute's value as a class index
    assert binary.task == "multiclass" and binary.num_outputs == 2 and binary.output_names == ["not_Smiling", "Smiling"]
    assert torch.equal(binary["forget"].labels, expected[:, 1].long())
    assert binary.audit["cache_hit"] is True  # mucac and mucac-binary share one decode
    young = load_dataset(DataConfig("mucac-binary", str(root), image_size=16, cache_dir=str(tmp_path / "c"),
                                    **MUCAC_THRESHOLDS))
    assert young.output_names == ["not_Young", "Young"] and torch.equal(young["forget"].labels, expected[:, 2].long())


def test_identity_leakage_refused(tmp_path, capsys):
    root = make_mufac(tmp_path / "leaky", families={"train": range(1, 9), "val": range(8, 12), "test": range(851, 855)})
    cfg = DataConfig("mufac", str(root), image_size=16, forget_count=4, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match="identity leakage"):
        load_dataset(cfg)
    assert load_dataset(cfg, for_training=False).audit["identity_overlap"]["train/test"] == 1
    assert data_cli(["audit", "--dataset", "mufac", "--data-dir", str(root), "--forget-count", "4",
                     "--image-size", "16", "--cache-dir", str(tmp_path / "c")]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["identity_overlap"]["train/test"] == 1 and "identity leakage" in out.err


def test_audit_command_both_layouts(tmp_path, capsys):
    mufac = make_mufac(tmp_path / "mufac")
    assert data_cli(["audit", "--dataset", "mufac", "--data-dir", str(mufac), "--forget-count", "8",
                     "--image-size", "16", "--cache-dir", str(tmp_path / "c")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"train", "retain", "forget", "test", "unseen"} <= set(report["sizes"])
    assert report["duplicates"]["cross_split_pairs"] == 1
    celeba = make_mucac(tmp_path / "celeba")
    assert data_cli(["audit", "--dataset", "mucac", "--data-dir", str(celeba), "--image-size", "16",
                     "--test-max-id", "10", "--retain-max-id", "20", "--forget-max-id", "30",
                     "--cache-dir", str(tmp_path / "c")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sizes"]["test"] == 30 and report["sizes"]["train"] == 60
    assert report["identity_overlap"] == {"train/test": 0, "train/unseen": 0, "test/unseen": 0}


def _break(kind: str, root_mufac, root_mucac):
    """Apply one kind of bad input; returns (dataset, folder, text the error must contain)."""
    if kind == "missing folder":
        return "mufac", root_mufac / "nope", "missing MUFAC data folder"
    if kind == "missing csv":
        (root_mufac / "custom_test_dataset.csv").unlink()
        return "mufac", root_mufac, "custom_test_dataset.csv: missing"
    if kind == "missing column":
        p = root_mufac / "custom_val_dataset.csv"
        p.write_text(p.read_text().replace("age_class", "age"))
        return "mufac", root_mufac, "missing column 'age_class'"
    if kind == "unknown age":
        p = root_mufac / "custom_train_dataset.csv"
        lines = p.read_text().splitlines()
        fields = lines[3].split(",")
        lines[3] = ",".join([fields[0], "z"] + fields[2:])
        p.write_text("\n".join(lines) + "\n")
        return "mufac", root_mufac, "row 4: unknown age class 'z'"
    if kind == "corrupt image":
        victim = sorted((root_mufac / "test_images").iterdir())[2]
        victim.write_bytes(b"not a jpeg at all")
        return "mufac", root_mufac, f"{victim.name}: corrupt"
    if kind == "empty split":
        p = root_mufac / "custom_test_dataset.csv"
        p.write_text(p.read_text().splitlines()[0] + "\n")
        return "mufac", root_mufac, "no rows"
    if kind == "no identity line":
        p = root_mucac / "CelebA-HQ-identity.txt"
        p.write_text("\n".join(l for l in p.read_text().splitlines() if not l.startswith("7.jpg ")) + "\n")
        return "mucac", root_mucac, "7.jpg: no identity line"
    if kind == "attribute columns":
        p = root_mucac / "CelebA-HQ-attribute.txt"
        lines = p.read_text().splitlines()
        lines[5] = lines[5].rsplit(" ", 1)[0]
        p.write_text("\n".join(lines) + "\n")
        return "mucac", root_mucac, "line 6: expected a file name and 40 values, got 39"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing folder", "missing csv", "missing column", "unknown age",
                                  "corrupt image", "empty split", "no identity line", "attribute columns"])
def test_bad_input_one_clear_line(tmp_path, capsys, kind):
    mufac, mucac = make_mufac(tmp_path / "mufac"), make_mucac(tmp_path / "celeba")
    dataset, folder, expected = _break(kind, mufac, mucac)
    code = data_cli(["audit", "--dataset", dataset, "--data-dir", str(folder), "--image-size", "16",
                     "--forget-count", "8",
                     "--test-max-id", "10", "--retain-max-id", "20", "--forget-max-id", "30", "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if not line.startswith("[data] ")]  # progress lines aside
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert expected in errors[0]


def test_empty_split_from_thresholds(tmp_path):
    root = make_mucac(tmp_path / "celeba")
    with pytest.raises(DataError, match="the unseen split is empty"):
        load_dataset(DataConfig("mucac", str(root), image_size=16, cache_dir=str(tmp_path / "c"),
                                test_max_id=10, retain_max_id=20, forget_max_id=100))


def test_augment_batch_per_sample_and_seeded():
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    same = torch.stack([images[0]] * 6)
    a = augment_batch(same, torch.Generator().manual_seed(0))
    b = augment_batch(same, torch.Generator().manual_seed(0))
    assert a.shape == same.shape and a.dtype == torch.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, b)  # same seed, same batch
    assert not torch.allclose(a[0], a[1])  # per-sample parameters: identical inputs come out different
    plain = augment_batch(images, torch.Generator().manual_seed(0), shear_deg=0, scale=(1, 1), jitter=0, flip=False)
    assert torch.allclose(plain, images.float() / 255, atol=1e-5)  # the identity transform is exact


def test_fashion_mnist_from_idx_files(tmp_path):
    from tests.fixtures import make_fashion

    root = make_fashion(tmp_path / "fm")
    cfg = dict(dataset="fashion-mnist", data_dir=str(root), train_count=120, forget_count=20, unseen_count=60,
               test_count=50)
    ds = load_dataset(DataConfig(**cfg))
    _check_structure(ds)
    assert ds.sizes()["forget"] == 20 and ds.sizes()["retain"] == 100 and ds.sizes()["unseen"] == 60
    assert ds.sizes()["test"] == 50 and ds.num_outputs == 10 and ds.in_channels == 1 and ds.image_size == 28
    again = load_dataset(DataConfig(**cfg))
    assert torch.equal(ds["forget"].images, again["forget"].images) and ds.fingerprint == again.fingerprint
    other = load_dataset(DataConfig(**cfg, split_seed=1))
    assert not torch.equal(ds["forget"].images, other["forget"].images)  # seeded
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="must fit in the 300 training images"):
        load_dataset(DataConfig(**{**cfg, "train_count": 280}))


def test_fashion_mnist_idx_decoded_once_and_rebuilt_when_torn_or_changed(tmp_path, capsys):
    from tests.fixtures import make_fashion, write_idx

    root, cache = make_fashion(tmp_path / "fm"), tmp_path / "cache"
    cfg = dict(dataset="fashion-mnist", data_dir=str(root), train_count=120, forget_count=20, unseen_count=60,
               test_count=50, cache_dir=str(cache))
    first = load_dataset(DataConfig(**cfg))
    assert capsys.readouterr().err.count("decoding the IDX files") == 1
    [stored] = list(cache.glob("fashion-mnist-*.pt"))
    again = load_dataset(DataConfig(**cfg))
    assert "decoding" not in capsys.readouterr().err and again.fingerprint == first.fingerprint
    stored.write_bytes(stored.read_bytes()[:100])  # a crash mid-write: rebuilt, never a traceback
    torn = load_dataset(DataConfig(**cfg))
    assert "unreadable" in capsys.readouterr().err and torn.fingerprint == first.fingerprint
    write_idx(root / "t10k-labels-idx1-ubyte.gz", (np.arange(100) + 1) % 10)  # new files: a new key
    changed = load_dataset(DataConfig(**cfg))
    assert capsys.readouterr().err.count("decoding the IDX files") == 1 and changed.fingerprint != first.fingerprint
    assert not list(cache.glob("*.tmp"))


def test_the_debian_fashion_mnist_files():
    from trainables.data.folder import FASHION_DIR, FASHION_FILES, _read_idx

    folder = Path(FASHION_DIR)
    if not (folder / FASHION_FILES["train"][1]).is_file():
        pytest.skip(f"{FASHION_DIR} not installed (apt-get install dataset-fashion-mnist)")
    for part, count in (("train", 60000), ("test", 10000)):
        labels = _read_idx(folder / FASHION_FILES[part][1])
        assert len(labels) == count and torch.bincount(labels.long()).tolist() == [count // 10] * 10
        assert tuple(_read_idx(folder / FASHION_FILES[part][0]).shape) == (count, 28, 28)


def test_image_folder_with_a_two_column_manifest(tmp_path):
    from tests.fixtures import make_folder

    root = make_folder(tmp_path / "mine", people=30)
    ds = load_dataset(DataConfig(dataset="folder", data_dir=str(root), image_size=16, cache_dir=str(tmp_path / "c")))
    _check_structure(ds)
    assert ds.output_names == ["bird", "cat", "dog"] and ds.image_size == 16
    sizes = ds.sizes()
    assert sizes["forget"] + sizes["retain"] == 36 and sizes["test"] == 12 and sizes["unseen"] == 12  # 60/20/20 of files
    assert sizes["forget"] == 4  # a tenth of the train identities (each file its own identity here)
    full = make_folder(tmp_path / "full", people=30, columns="path,label,identity")
    grouped = load_dataset(DataConfig(dataset="folder", data_dir=str(full), image_size=16, cache_dir=str(tmp_path / "c")))
    assert grouped.sizes()["forget"] == 4 and grouped.audit["identity_overlap"] == {"train/test": 0, "train/unseen": 0,
                                                                                   "test/unseen": 0}


@pytest.mark.parametrize("case,message", [
    ("no label column", "missing column 'label'"),
    ("empty label", "empty label"),
    ("outside path", "is not a file inside"),
    ("corrupt image", "corrupt or unsupported image"),
    ("empty split", "the test split is empty"),
    ("bad split", "split 'validation' is not one of"),
])
def test_image_folder_bad_input_one_line(tmp_path, case, message):
    from tests.fixtures import make_folder

    root = make_folder(tmp_path / "mine", people=12)
    manifest = root / "manifest.csv"
    lines = manifest.read_text().splitlines()
    if case == "no label column":
        manifest.write_text("\n".join(["path"] + [line.split(",")[0] for line in lines[1:]]) + "\n")
    elif case == "empty label":
        lines[3] = lines[3].split(",")[0] + ","
        manifest.write_text("\n".join(lines) + "\n")
    elif case == "outside path":
        lines[2] = "../elsewhere.png,cat"
        (tmp_path / "elsewhere.png").write_bytes(b"x")
        manifest.write_text("\n".join(lines) + "\n")
    elif case == "corrupt image":
        (root / lines[1].split(",")[0]).write_bytes(b"not an image")
    elif case in ("empty split", "bad split"):
        value = "train" if case == "empty split" else "validation"
        manifest.write_text("\n".join(["path,label,split"] + [f"{line},{value}" for line in lines[1:]]) + "\n")
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(dataset="folder", data_dir=str(root), image_size=16, cache_dir=str(tmp_path / "c")))


def _members(ds, name):
    return set(ds[name].identities.tolist())


def test_replicates_redraw_a_random_split_and_nothing_else():
    """Digits draws its forget, unseen and test sets: each replicate (split seed) draws them anew, and the same
    seed draws the same split."""
    one, two, again = (load_dataset(DataConfig(dataset="digits", split_seed=s)) for s in (1, 2, 1))
    assert one.split_fingerprint != two.split_fingerprint and one.split_fingerprint == again.split_fingerprint
    assert _members(one, "forget") != _members(two, "forget") and _members(one, "forget") == _members(again, "forget")
    assert _members(one, "test_report") != _members(two, "test_report")  # the halves too
    assert one.sizes() == two.sizes() and not one.forget_fixed
    assert one.fingerprint != two.fingerprint  # so each replicate's base models have their own checkpoints


def test_replicates_of_a_benchmark_with_fixed_parts_redraw_only_the_halves(tmp_path):
    from tests.fixtures import make_folder

    root = make_folder(tmp_path / "fixed", people=30, columns="path,label,identity,split,forget", fixed=True)
    one, two = (load_dataset(DataConfig(dataset="folder", data_dir=str(root), image_size=16, split_seed=s,
                                        cache_dir=str(tmp_path / "c"))) for s in (1, 2))
    assert one.forget_fixed and two.forget_fixed
    assert one.split_fingerprint == two.split_fingerprint  # forget, retain, test and unseen as the manifest says
    for part in ("forget", "retain", "test", "unseen"):
        assert _members(one, part) == _members(two, part)
    assert _members(one, "val") != _members(two, "val")  # what the benchmark leaves random is redrawn
    drawn = make_folder(tmp_path / "drawn", people=30, columns="path,label,identity")  # parts drawn by the loader
    assert not load_dataset(DataConfig(dataset="folder", data_dir=str(drawn), image_size=16,
                                       cache_dir=str(tmp_path / "c"))).forget_fixed


def test_a_trial_of_another_replicate_gets_that_replicate_s_split():
    from trainables.data import for_replicate

    cfg = DataConfig(dataset="digits")
    zero = load_dataset(cfg)
    assert for_replicate(zero, 0, cfg) is zero  # its own split: no reload
    three = for_replicate(zero, 3, cfg)
    assert three.split_seed == 3 and three.split_fingerprint == load_dataset(DataConfig(split_seed=3)).split_fingerprint
    assert for_replicate(zero, 3, cfg) is three  # kept for the next trial of that replicate
    with pytest.raises(DataError, match="needs the data settings"):
        for_replicate(zero, 4, None)
