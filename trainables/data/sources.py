"""Readers for the on-disk layouts of MUFAC and MUCAC (SPEC section 3).

Each reader validates its folder and returns one `Record` per image, already
assigned to one of the four disjoint parts forget, retain, test and unseen. Every
problem becomes a `DataError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .splits import DataError

AGE_LETTERS = "abcdefgh"  # MUFAC age groups a-h -> classes 0-7
MUCAC_ATTRIBUTES = ("Male", "Smiling", "Young")
MUFAC_FILES = {
    # part -> (csv, image folder); the MUFAC "val" CSV is our test set, its "test" CSV our unseen set
    "train": ("custom_train_dataset.csv", "train_images"),
    "test": ("custom_val_dataset.csv", "val_images"),
    "unseen": ("custom_test_dataset.csv", "test_images"),
}


@dataclass(frozen=True)
class Record:
    path: Path
    label: tuple[int, ...]  # one class index (multiclass) or one 0/1 value per attribute
    identity: str
    part: str  # forget, retain, test or unseen


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{path}: missing {what}")
    if not path.is_dir():
        raise DataError(f"{path}: expected a folder ({what})")


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: missing {what}")


def inside(root: Path, name: str, where: str) -> Path:
    """The file `name` names under `root`, resolved. A name that leaves `root` (`..`, an absolute
    path, a symlink pointing out of it) is refused: a data folder from elsewhere must not make
    the study read files the user did not give it."""
    name = name.strip()
    path = (root / name).resolve()
    if not name or root.resolve() not in path.parents:
        raise DataError(f"{where}: path {name!r} is not a file inside {root} "
                        "(.., absolute paths and symlinks out of the folder are refused)")
    return path


def read_columns(path: Path, required: tuple[str, ...], optional: tuple[str, ...], what: str
                 ) -> dict[str, list[str]]:
    """The named columns of a CSV as lists of strings, read row by row (other columns are never held):
    a manifest of millions of rows costs its wanted columns once, not a table and a copy."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = csv.reader(f)
            header = [h.strip() for h in next(rows, [])]
            for column in required:
                if column not in header:
                    raise DataError(f"{path}: missing column {column!r} (columns are {header})")
            wanted = {c: header.index(c) for c in (*required, *optional) if c in header}
            columns: dict[str, list[str]] = {c: [] for c in wanted}
            for row in rows:
                if not row:
                    continue
                for c, i in wanted.items():
                    columns[c].append(row[i] if i < len(row) else "")  # trailing empty fields may be left out
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if not columns[required[0]]:
        raise DataError(f"{path}: no rows; {what} would be empty")
    return columns


def read_mufac(data_dir: Path, forget_count: int) -> list[Record]:
    """MUFAC: three CSVs with image folders; forget = the first `forget_count` train rows."""
    _require_dir(data_dir, "MUFAC data folder")
    for part, (csv_name, folder_name) in MUFAC_FILES.items():  # every file first: one error, before any reading
        _require_file(data_dir / csv_name, f"MUFAC {part} CSV")
        _require_dir(data_dir / folder_name, f"MUFAC image folder for {csv_name}")
    records: list[Record] = []
    for part, (csv_name, folder_name) in MUFAC_FILES.items():
        csv_path, folder = data_dir / csv_name, data_dir / folder_name
        table = read_columns(csv_path, ("image_path", "age_class"), (), f"the {part} split")
        rows = len(table["image_path"])
        if part == "train" and not 0 < forget_count < rows:
            raise DataError(f"{csv_path}: forget count {forget_count} must be between 1 and {rows - 1}")
        for row_number, (name, age) in enumerate(zip(table["image_path"], table["age_class"])):
            age = age.strip().lower()
            if len(age) != 1 or age not in AGE_LETTERS:
                raise DataError(f"{csv_path}: row {row_number + 2}: unknown age class {age!r} (expected one of a-h)")
            image = inside(folder, name, f"{csv_path}: row {row_number + 2}")
            if not image.is_file():
                raise DataError(f"{image}: missing image listed in {csv_path.name} row {row_number + 2}")
            if part == "train":
                assigned = "forget" if row_number < forget_count else "retain"
            else:
                assigned = part
            family = image.name.split("_", 1)[0]
            records.append(Record(image, (AGE_LETTERS.index(age),), family, assigned))
    return records


def _read_identities(path: Path) -> dict[str, str]:
    identities: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{path}: line {number}: expected '<file> <identity>', got {line.strip()!r}")
        identities[fields[0]] = fields[1]
    return identities


def _read_attributes(path: Path, wanted: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise DataError(f"{path}: expected an image count line and an attribute-name line")
    names = lines[1].split()
    missing = [a for a in wanted if a not in names]
    if missing:
        raise DataError(f"{path}: line 2: attribute(s) {missing} not among the {len(names)} names")
    columns = [names.index(a) for a in wanted]
    attributes: dict[str, tuple[int, ...]] = {}
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            raise DataError(
                f"{path}: line {number}: expected a file name and {len(names)} values, got {len(fields) - 1} values"
            )
        try:
            values = [int(fields[1 + c]) for c in columns]
        except ValueError:
            raise DataError(f"{path}: line {number}: attribute values must be -1 or 1") from None
        if any(v not in (-1, 1) for v in values):
            raise DataError(f"{path}: line {number}: attribute values must be -1 or 1")
        attributes[fields[0]] = tuple(1 if v == 1 else 0 for v in values)
    return attributes


def read_mucac(
    data_dir: Path,
    attributes: tuple[str, ...],
    test_max_id: int,
    retain_max_id: int,
    forget_max_id: int,
) -> list[Record]:
    """CelebA-HQ with identity and attribute files, split by identity id thresholds."""
    _require_dir(data_dir, "MUCAC (CelebA-HQ) data folder")
    if not test_max_id <= retain_max_id <= forget_max_id:
        raise DataError(f"{data_dir}: identity thresholds must rise: {test_max_id} <= {retain_max_id} <= {forget_max_id}")
    image_dir = data_dir / "CelebA-HQ-img"
    identity_file = data_dir / "CelebA-HQ-identity.txt"
    attribute_file = data_dir / "CelebA-HQ-attribute.txt"
    _require_dir(image_dir, "CelebA-HQ image folder")
    _require_file(identity_file, "CelebA-HQ identity file")
    _require_file(attribute_file, "CelebA-HQ attribute file")
    identities = _read_identities(identity_file)
    labels = _read_attributes(attribute_file, attributes)
    images = sorted(
        (p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")),
        key=lambda p: (len(p.stem), p.stem),  # 0.jpg, 1.jpg, ..., 10.jpg: numeric order
    )
    if not images:
        raise DataError(f"{image_dir}: no images")
    records: list[Record] = []
    for image in images:
        inside(image_dir, image.name, str(image))  # a symlink out of the image folder is refused
        if image.name not in identities:
            raise DataError(f"{image}: no identity line in {identity_file.name}")
        if image.name not in labels:
            raise DataError(f"{image}: no attribute line in {attribute_file.name}")
        try:
            identity = int(identities[image.name])
        except ValueError:
            raise DataError(f"{identity_file}: identity {identities[image.name]!r} of {image.name} is not an integer") from None
        if identity < test_max_id:
            part = "test"
        elif identity < retain_max_id:
            part = "retain"
        elif identity < forget_max_id:
            part = "forget"
        else:
            part = "unseen"
        records.append(Record(image, labels[image.name], str(identity), part))
    return records
