"""Two more sources: Fashion-MNIST from the four standard IDX files, and any labelled image folder.

Fashion-MNIST (Debian's `dataset-fashion-mnist` puts it in /usr/share/datasets/fashion-mnist):
`train` is a seeded subset of the 60,000 training images, `forget` a seeded subset of it,
`unseen` further training images never trained on, `test` from the 10,000 test images;
each image is its own identity. The IDX files are read with torchvision's reader.

A folder: `manifest.csv` with columns `path` and `label` (an integer, or a class name),
and optionally `identity`, `split` (train, test or unseen) and `forget` (0 or 1), naming
images inside the folder in any format PIL reads. Missing columns: the identity is the
file; splits are drawn by identity with a seed (60% train, 20% test, 20% unseen); the
forget set is a seeded tenth of the train identities.
"""

from __future__ import annotations

import gzip
import hashlib
import tempfile
from pathlib import Path

import torch

from .cache import cache_key, cached
from .sources import Record, inside, read_columns
from .splits import DataError

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
FASHION_SIZES = {"train": 1000, "forget": 200, "unseen": 1000, "test": 1000}  # chosen by experiment: docs/results-fashion-mnist.md
SPLITS = ("train", "test", "unseen")
FOLDER_FRACTIONS = {"train": 0.6, "test": 0.2, "unseen": 0.2}
FORGET_FRACTION = 0.1


def _read_idx(path: Path) -> torch.Tensor:
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: not a readable IDX file ({exc})") from None
    with tempfile.NamedTemporaryFile(suffix=".idx") as tmp:  # torchvision's reader takes a path
        tmp.write(raw)
        tmp.flush()
        try:
            return read_sn3_pascalvincent_tensor(tmp.name, strict=False)
        except Exception as exc:  # a truncated or foreign file
            raise DataError(f"{path}: not a readable IDX file ({exc})") from None


def fashion_mnist(data_dir: str | None, sizes: dict[str, int], seed: int, cache_dir: Path | None = None
                  ) -> tuple[dict, str]:
    """{part: (uint8 images N x 1 x 28 x 28, labels)} for forget, retain, test and unseen, and a fingerprint."""
    folder = Path(data_dir or FASHION_DIR)
    missing = [name for pair in FASHION_FILES.values() for name in pair if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: Fashion-MNIST files missing ({', '.join(missing)}); on Debian or Ubuntu: "
                        "apt-get install dataset-fashion-mnist")
    def decode() -> dict:
        return {part: (_read_idx(folder / images).unsqueeze(1).to(torch.uint8), _read_idx(folder / labels).long())
                for part, (images, labels) in FASHION_FILES.items()}

    if cache_dir is None:
        pools = decode()
    else:  # the IDX files decoded once: a trial start reads one tensor file instead of gunzipping 30 MB
        files = sorted(folder / name for pair in FASHION_FILES.values() for name in pair)
        path = cache_dir / f"fashion-mnist-{cache_key('fashion-mnist', folder, 28, files)}.pt"
        pools = {part: tuple(pair) for part, pair in cached(path, decode, f"the IDX files in {folder}")[0].items()}
    n_train_pool, n_test_pool = len(pools["train"][1]), len(pools["test"][1])
    if sizes["train"] + sizes["unseen"] > n_train_pool or sizes["test"] > n_test_pool:
        raise DataError(f"{folder}: train {sizes['train']} + unseen {sizes['unseen']} must fit in the "
                        f"{n_train_pool} training images and test {sizes['test']} in the {n_test_pool} test images")
    if not 0 < sizes["forget"] < sizes["train"]:
        raise DataError(f"fashion-mnist: forget count {sizes['forget']} must be between 1 and {sizes['train'] - 1}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_train_pool, generator=gen)
    train, unseen = order[: sizes["train"]], order[sizes["train"] : sizes["train"] + sizes["unseen"]]
    test = torch.randperm(n_test_pool, generator=gen)[: sizes["test"]]
    picks = {"forget": ("train", train[: sizes["forget"]]), "retain": ("train", train[sizes["forget"]:]),
             "unseen": ("train", unseen), "test": ("test", test)}
    parts = {part: (pools[pool][0][idx], pools[pool][1][idx]) for part, (pool, idx) in picks.items()}
    h = hashlib.sha256(repr(sorted(sizes.items())).encode() + str(seed).encode())
    for part in sorted(parts):
        h.update(part.encode() + parts[part][0].numpy().tobytes() + parts[part][1].numpy().tobytes())
    return parts, h.hexdigest()[:16]


def read_manifest(data_dir: Path, seed: int) -> tuple[list[Record], list[str]]:
    """The folder's images as records assigned to forget, retain, test and unseen, and the class names."""
    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{data_dir}: missing manifest.csv (columns path and label; optional identity, split, forget)")
    table = read_columns(manifest, ("path", "label"), ("identity", "split", "forget"), "the data set")
    root = data_dir.resolve()
    paths = []
    for number, name in enumerate(table["path"], start=2):
        path = inside(root, name, f"{manifest}: row {number}")
        if not path.is_file():
            raise DataError(f"{path}: missing image listed in {manifest.name} row {number}")
        paths.append(path)
    labels, classes = _labels(table["label"], manifest)
    identities = [v.strip() or str(p) for v, p in zip(table["identity"], paths)] if "identity" in table else [
        str(p.relative_to(root)) for p in paths]
    parts = _parts(table, identities, manifest, seed)
    return [Record(p, (label,), ident, part) for p, label, ident, part in zip(paths, labels, identities, parts)], classes


def manifest_fixes_parts(data_dir: Path) -> bool:
    """Whether the folder's manifest gives every row's split and the forget flags (a blank flag is 0): then nothing
    but the selection/report halves is drawn from the seed."""
    table = read_columns(data_dir / "manifest.csv", ("path",), ("split", "forget"), "the data set")
    return "forget" in table and "split" in table and all(v.strip() for v in table["split"])


def _labels(column: list[str], manifest: Path) -> tuple[list[int], list[str]]:
    values = [v.strip() for v in column]
    for number, value in enumerate(values, start=2):
        if not value:
            raise DataError(f"{manifest}: row {number}: empty label (an integer or a class name)")
    if all(v.lstrip("-").isdigit() for v in values):
        numbers = [int(v) for v in values]
        if min(numbers) < 0:
            row = numbers.index(min(numbers)) + 2
            raise DataError(f"{manifest}: row {row}: label {min(numbers)} is negative (integer labels count from 0)")
        return numbers, [str(c) for c in range(max(numbers) + 1)]
    classes = sorted(set(values))
    return [classes.index(v) for v in values], classes


def _parts(table: dict[str, list[str]], identities: list[str], manifest: Path, seed: int) -> list[str]:
    """forget, retain, test or unseen per row: given by the split and forget columns, else drawn by identity."""
    people = sorted(set(identities))
    gen = torch.Generator().manual_seed(seed)
    shuffled = [people[i] for i in torch.randperm(len(people), generator=gen).tolist()]
    n_train, n_test = round(FOLDER_FRACTIONS["train"] * len(people)), round(FOLDER_FRACTIONS["test"] * len(people))
    drawn = {p: ("train" if i < n_train else "test" if i < n_train + n_test else "unseen")
             for i, p in enumerate(shuffled)}
    splits = []
    for number, (value, person) in enumerate(zip(table["split"] if "split" in table else [""] * len(identities),
                                                 identities), start=2):
        value = value.strip().lower() or drawn[person]
        if value not in SPLITS:
            raise DataError(f"{manifest}: row {number}: split {value!r} is not one of {', '.join(SPLITS)}")
        splits.append(value)
    in_train = {person for split, person in zip(splits, identities) if split == "train"}
    train_people = [p for p in shuffled if p in in_train]
    drawn_forget = set(train_people[: max(1, round(FORGET_FRACTION * len(train_people)))])
    parts = []
    for number, (split, person) in enumerate(zip(splits, identities), start=2):
        flag = table["forget"][number - 2].strip() if "forget" in table else ""
        if flag not in ("", "0", "1"):
            raise DataError(f"{manifest}: row {number}: forget must be 0 or 1, got {flag!r}")
        if flag == "1" and split != "train":
            raise DataError(f"{manifest}: row {number}: only train images can be forgotten (split is {split})")
        forget = flag == "1" if "forget" in table else person in drawn_forget
        parts.append(split if split != "train" else ("forget" if forget else "retain"))
    return parts
