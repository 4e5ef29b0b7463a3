"""Tensor splits of an unlearning data set and the identity-disjoint helpers that make them.

A `Split` is a compact uint8 image tensor with its labels and identity ids; a
`Dataset` holds the named splits of SPEC section 3 (train, retain, forget, test,
unseen and the honest-selection halves val / test_report and unseen_val /
unseen_report) plus the task description every later stage needs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

SPLIT_NAMES = (
    "train", "retain", "forget", "test", "unseen",
    "val", "test_report", "unseen_val", "unseen_report",
)


class DataError(Exception):
    """A problem with the user's data: the message names the file and the problem."""


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64 N (multiclass) or float32 N x A (multilabel)
    identities: torch.Tensor  # int64 N

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index], self.identities[index])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.images.to(device), self.labels.to(device), self.identities.to(device))


@dataclass
class Dataset:
    name: str
    task: str  # "multiclass" or "multilabel"
    num_outputs: int
    output_names: list[str]
    splits: dict[str, Split]
    fingerprint: str
    augment: bool  # whether base training and fine-tuning use the SPEC section 4 augmentation
    audit: dict = field(default_factory=dict)
    split_seed: int = 0  # the replicate's split: what the data set leaves random is drawn with it
    forget_fixed: bool = False  # the benchmark fixes the forget set (and the other parts): a replicate redraws
    # only the selection/report halves

    @property
    def split_fingerprint(self) -> str:
        """A digest of the split's membership: which examples (by identity) lie in forget, retain, test and unseen.
        Equal for two replicates exactly when they split alike there; where the benchmark fixes those parts, the
        replicates differ only in their selection/report halves (the `split_seed` tag)."""
        if "split_fingerprint" not in self.__dict__:
            h = hashlib.sha256(self.fingerprint.encode())
            for name in ("forget", "retain", "test", "unseen"):
                ids = self.splits[name].identities.sort().values.to(torch.int64).cpu().numpy()
                h.update(name.encode() + b"\0" + ids.tobytes())
            self.__dict__["split_fingerprint"] = h.hexdigest()[:16]
        return self.__dict__["split_fingerprint"]

    @property
    def in_channels(self) -> int:
        return int(self.splits["train"].images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.splits["train"].images.shape[-1])

    def __getitem__(self, name: str) -> Split:
        if name not in self.splits:
            raise KeyError(f"no split {name!r}; splits are {sorted(self.splits)}")
        return self.splits[name]

    def sizes(self) -> dict[str, int]:
        return {name: len(self.splits[name]) for name in SPLIT_NAMES if name in self.splits}


def concat(parts: list[Split]) -> Split:
    return Split(
        torch.cat([p.images for p in parts]),
        torch.cat([p.labels for p in parts]),
        torch.cat([p.identities for p in parts]),
    )


def halve_by_identity(split: Split, seed: int) -> tuple[Split, Split]:
    """Split into (selection half, report half) with no identity in both, seeded.

    Identities are shuffled with their own generator so the halves do not move when
    anything else about the run changes.
    """
    ids = torch.unique(split.identities)
    if len(ids) < 2:
        raise DataError(f"cannot halve a split with {len(ids)} identity into selection and report halves")
    gen = torch.Generator().manual_seed(seed)
    order = ids[torch.randperm(len(ids), generator=gen)]
    selection_ids = order[: len(ids) // 2]
    in_selection = torch.isin(split.identities, selection_ids)
    return split.subset(in_selection.nonzero().squeeze(1)), split.subset((~in_selection).nonzero().squeeze(1))


def assemble(
    name: str,
    task: str,
    output_names: list[str],
    parts: dict[str, Split],
    fingerprint: str,
    augment: bool,
    split_seed: int,
) -> Dataset:
    """Build every named split from the four disjoint parts forget, retain, test, unseen."""
    for part in ("forget", "retain", "test", "unseen"):
        if part not in parts or len(parts[part]) == 0:
            raise DataError(f"{name}: the {part} split is empty; check the data folder and the split settings")
    splits = dict(parts)
    splits["train"] = concat([parts["forget"], parts["retain"]])
    splits["val"], splits["test_report"] = halve_by_identity(parts["test"], split_seed)
    splits["unseen_val"], splits["unseen_report"] = halve_by_identity(parts["unseen"], split_seed + 1)
    return Dataset(
        name=name,
        task=task,
        num_outputs=len(output_names),
        output_names=output_names,
        splits={k: splits[k] for k in SPLIT_NAMES},
        fingerprint=fingerprint,
        augment=augment,
        split_seed=split_seed,
    )
