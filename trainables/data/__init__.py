"""Data sets of the study (SPEC section 3): digits (embedded), mufac, mucac and mucac-binary.

`load_dataset(DataConfig(...))` returns a `Dataset` whose splits are compact uint8
tensors, audited on every load. Image folders are decoded once into an on-disk cache
(`cache.py`); augmentation runs on whole batches of tensors (`augment.py`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import audit as audit_lib
from .augment import augment_batch
from .cache import default_cache_dir, load_images
from .folder import FASHION_CLASSES, FASHION_SIZES, fashion_mnist, manifest_fixes_parts, read_manifest
from .sources import MUCAC_ATTRIBUTES, Record, read_mucac, read_mufac
from .splits import SPLIT_NAMES, DataError, Dataset, Split, assemble

DATASETS = ("digits", "mufac", "mucac", "mucac-binary", "fashion-mnist", "folder")
NEEDS_FOLDER = ("mufac", "mucac", "mucac-binary", "folder")
FIXED_PARTS = ("mufac", "mucac", "mucac-binary")  # the benchmark fixes forget, retain, test and unseen
DEFAULT_FORGET_COUNT = {"digits": 200, "mufac": 1500}
# Optional data settings a study, an export and the command lines pass through (None: the default).
SIZE_SETTINGS = ("forget_count", "train_count", "unseen_count", "test_count")
OPTIONAL_SETTINGS = SIZE_SETTINGS + ("image_size", "attribute")

__all__ = [
    "DATASETS", "NEEDS_FOLDER", "OPTIONAL_SETTINGS", "SIZE_SETTINGS", "SPLIT_NAMES", "DataConfig", "DataError", "Dataset", "Split",
    "FIXED_PARTS", "augment_batch", "for_replicate", "load_dataset",
]


@dataclass
class DataConfig:
    dataset: str = "digits"
    data_dir: str | None = None  # required for mufac / mucac
    image_size: int = 128  # faces are resized to this once, at decode time; digits stay 8x8
    forget_count: int | None = None  # digits, mufac, fashion-mnist: None means the default (200 / 1,500 / 200)
    train_count: int | None = None  # fashion-mnist: training images drawn from the 60,000 (default 1,000)
    unseen_count: int | None = None  # fashion-mnist: further training images never trained on (default 1,000)
    test_count: int | None = None  # fashion-mnist: images drawn from the 10,000 test images (default 1,000)
    test_max_id: int = 190  # mucac identity thresholds (the paper's)
    retain_max_id: int = 1970
    forget_max_id: int = 4855
    attribute: str = "Young"  # mucac-binary: the attribute to predict, as two classes (the notebooks' choice)
    drop_duplicates: bool = False  # drop byte-identical copies across splits (see audit.py)
    split_seed: int = 0  # digits' random split and the honest-selection halves
    cache_dir: str | None = None  # decoded-image cache; default $GLI_CACHE_DIR or ~/.cache/gli-study

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise DataError(f"unknown data set {self.dataset!r}; known: {', '.join(DATASETS)}")
        if self.dataset in NEEDS_FOLDER and not self.data_dir:
            raise DataError(f"data set {self.dataset!r} needs a data folder (--data-dir)")
        for name in SIZE_SETTINGS:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"{name.replace('_', ' ')} must be at least 1, got {value}")
        if self.dataset == "mucac-binary" and self.attribute not in MUCAC_ATTRIBUTES:
            raise DataError(f"mucac-binary attribute must be one of {MUCAC_ATTRIBUTES}, got {self.attribute!r}")


def _digits(cfg: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    n = len(labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    n_test = n_unseen = n // 5
    forget_count = cfg.forget_count or DEFAULT_FORGET_COUNT["digits"]
    n_train = n - n_test - n_unseen
    if forget_count >= n_train:
        raise DataError(f"digits: forget count {forget_count} must be below the {n_train} training images")
    cuts = {
        "test": order[:n_test],
        "unseen": order[n_test : n_test + n_unseen],
        "forget": order[n_test + n_unseen : n_test + n_unseen + forget_count],
        "retain": order[n_test + n_unseen + forget_count :],
    }
    ids = torch.arange(n)  # no identities in digits: each image is its own
    parts = {k: Split(images[idx], labels[idx], ids[idx]) for k, idx in cuts.items()}
    h = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes())
    for part in sorted(cuts):  # which image lies in which part, so another split is another fingerprint
        h.update(part.encode() + cuts[part].sort().values.numpy().tobytes())
    fingerprint = h.hexdigest()[:16]
    ds = assemble("digits", "multiclass", [str(c) for c in range(10)], parts, fingerprint, False, cfg.split_seed)
    ds.audit = {
        "dataset": "digits",
        "sizes": ds.sizes(),
        "identity_overlap": audit_lib.identity_overlap({k: set(map(str, p.identities.tolist())) for k, p in parts.items()}),
        "duplicates": {"cross_split_pairs": 0, "within_split_pairs": 0, "examples": [], "dropped": 0,
                       "note": "digits has no files; duplicates are not checked"},
        "fingerprint": fingerprint,
    }
    return ds


def _fashion(cfg: DataConfig) -> Dataset:
    sizes = {k: getattr(cfg, f"{k}_count") or v for k, v in FASHION_SIZES.items()}
    cache_dir = Path(cfg.cache_dir).expanduser().resolve() if cfg.cache_dir else default_cache_dir()
    parts, fingerprint = fashion_mnist(cfg.data_dir, sizes, cfg.split_seed, cache_dir)
    first, splits = 0, {}
    for name, (images, labels) in parts.items():  # each image its own identity
        splits[name] = Split(images, labels, torch.arange(first, first + len(labels)))
        first += len(labels)
    ds = assemble("fashion-mnist", "multiclass", FASHION_CLASSES, splits, fingerprint, False, cfg.split_seed)
    ds.audit = {
        "dataset": "fashion-mnist", "sizes": ds.sizes(), "fingerprint": fingerprint,
        "identity_overlap": audit_lib.identity_overlap({k: set(map(str, p.identities.tolist())) for k, p in splits.items()}),
        "duplicates": {"cross_split_pairs": 0, "within_split_pairs": 0, "examples": [], "dropped": 0,
                       "note": "IDX images have no files; duplicates are not checked"},
    }
    return ds


def _records(cfg: DataConfig, data_dir: Path) -> tuple[list[Record], str, list[str]]:
    if cfg.dataset == "folder":
        records, classes = read_manifest(data_dir, cfg.split_seed)
        return records, "multiclass", classes
    if cfg.dataset == "mufac":
        records = read_mufac(data_dir, cfg.forget_count or DEFAULT_FORGET_COUNT["mufac"])
        return records, "multiclass", [f"age_{c}" for c in "abcdefgh"]
    attributes = MUCAC_ATTRIBUTES if cfg.dataset == "mucac" else (cfg.attribute,)
    records = read_mucac(data_dir, attributes, cfg.test_max_id, cfg.retain_max_id, cfg.forget_max_id)
    if cfg.dataset == "mucac-binary":  # two logits and cross-entropy, as the notebooks (not one sigmoid)
        return records, "multiclass", [f"not_{cfg.attribute}", cfg.attribute]
    return records, "multilabel", list(attributes)


def _fingerprint(records: list[Record], data_dir: Path) -> str:
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: (r.part, str(r.path))):
        h.update(f"{r.part}\0{r.path.relative_to(data_dir)}\0{r.path.stat().st_size}\0{r.label}\n".encode())
    return h.hexdigest()[:16]


def _from_folder(cfg: DataConfig) -> Dataset:
    data_dir = Path(cfg.data_dir).expanduser().resolve()
    records, task, outputs = _records(cfg, data_dir)
    cache_dir = Path(cfg.cache_dir).expanduser().resolve() if cfg.cache_dir else default_cache_dir()
    files = sorted({r.path for r in records})
    images, hashes, cache_path, hit = load_images(cfg.dataset.split("-")[0], data_dir, files, cfg.image_size, cache_dir)
    position = {f: i for i, f in enumerate(files)}
    index = [position[r.path] for r in records]
    names = [str(r.path.relative_to(data_dir)) for r in records]
    parts = [r.part for r in records]
    dups = audit_lib.find_duplicates(names, parts, [hashes[i] for i in index])
    dropped = set(dups["droppable"]) if cfg.drop_duplicates else set()
    keep = [i for i in range(len(records)) if i not in dropped]
    identity_names = sorted({r.identity for r in records})
    identity_id = {name: i for i, name in enumerate(identity_names)}
    split_parts: dict[str, Split] = {}
    for part in audit_lib.PARTS:
        rows = [i for i in keep if records[i].part == part]
        idx = torch.tensor([index[i] for i in rows], dtype=torch.long)
        if task == "multiclass":
            labels = torch.tensor([records[i].label[0] for i in rows], dtype=torch.long)
        else:
            labels = torch.tensor([records[i].label for i in rows], dtype=torch.float32).reshape(len(rows), len(outputs))
        ids = torch.tensor([identity_id[records[i].identity] for i in rows], dtype=torch.long)
        split_parts[part] = Split(images[idx], labels, ids)
    fingerprint = _fingerprint([records[i] for i in keep], data_dir)
    ds = assemble(cfg.dataset, task, outputs, split_parts, fingerprint, True, cfg.split_seed)
    overlap = audit_lib.identity_overlap(
        {p: {records[i].identity for i in keep if records[i].part == p} for p in audit_lib.PARTS}
    )
    ds.audit = {
        "dataset": cfg.dataset,
        "data_dir": str(data_dir),
        "sizes": ds.sizes(),
        "identity_overlap": overlap,
        "duplicates": {
            "cross_split_pairs": dups["cross_split_pairs"],
            "within_split_pairs": dups["within_split_pairs"],
            "examples": dups["examples"],
            "dropped": len(records) - len(keep),
        },
        "fingerprint": fingerprint,
        "cache": str(cache_path),
        "cache_hit": hit,
        "settings": asdict(cfg),
    }
    if cache_path is not None:
        cache_path.with_suffix(".audit.json").write_text(json.dumps(ds.audit, indent=2))
    return ds


def load_dataset(cfg: DataConfig, for_training: bool = True) -> Dataset:
    """Load, split and audit. With `for_training`, identity leakage between splits is refused."""
    cfg.validate()
    loaders = {"digits": _digits, "fashion-mnist": _fashion}
    ds = loaders.get(cfg.dataset, _from_folder)(cfg)
    ds.forget_fixed = cfg.dataset in FIXED_PARTS or (
        cfg.dataset == "folder" and manifest_fixes_parts(Path(cfg.data_dir).expanduser().resolve()))
    message = audit_lib.leakage_message(ds.audit["identity_overlap"], cfg.data_dir or cfg.dataset)
    if message and for_training:
        raise DataError(message)
    dup = ds.audit["duplicates"]
    if dup["cross_split_pairs"] and not cfg.drop_duplicates:
        print(
            f"[data] warning: {dup['cross_split_pairs']} byte-identical image pairs lie in different splits "
            "(drop them with drop_duplicates / --drop-duplicates)",
            file=sys.stderr,
        )
    return ds


_REPLICATES: dict[tuple, Dataset] = {}  # the last data sets loaded for other replicates, in this process


def for_replicate(data: Dataset, split_seed: int, cfg: DataConfig | None) -> Dataset:
    """`data` drawn with split seed `split_seed`: `data` itself when it is, else loaded from `cfg` (the study's
    data settings) with that seed and kept for the next trial of the same replicate (two at most)."""
    if data.split_seed == split_seed:
        return data
    if cfg is None:
        raise DataError(f"{data.name}: replicate {split_seed} needs the data settings to draw its split")
    key = (json.dumps(asdict(cfg), sort_keys=True, default=str), split_seed)
    if key not in _REPLICATES:
        while len(_REPLICATES) >= 2:
            _REPLICATES.pop(next(iter(_REPLICATES)))
        _REPLICATES[key] = load_dataset(replace(cfg, split_seed=split_seed))
    return _REPLICATES[key]
