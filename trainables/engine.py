"""Shared training machinery: device choice, seeding, batches, inputs, mixed precision.

Base training and every unlearning method build on these few functions, so the data
path (uint8 tensors on the device, batched augmentation, channels-last and bf16
autocast on CUDA) is written once.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator

import numpy as np
import torch

from .data import Split
from .data.augment import augment_batch, to_float


def pick_device(name: str | None = None) -> torch.device:
    """CUDA when torch sees one (inside a Ray trial: the GPU Ray assigned), else the CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch_indices(n: int, batch_size: int, gen: torch.Generator | None, shuffle: bool = True) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    return list(order.split(batch_size))


def cycle_batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled full batches (a new permutation each pass): for the forget loader that GLI cycles."""
    if n < batch_size:
        raise ValueError(f"cannot draw batches of {batch_size} from {n} examples")
    while True:
        for idx in batch_indices(n, batch_size, gen):
            if len(idx) == batch_size:
                yield idx


def inputs(
    split: Split, idx: torch.Tensor, device: torch.device, augment: bool = False, gen: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as (float images in [0, 1] on the device, labels on the device)."""
    images = split.images[idx.to(split.images.device)].to(device, non_blocking=True)
    x = augment_batch(images, gen) if augment else to_float(images)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, split.labels[idx.to(split.labels.device)].to(device, non_blocking=True)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (no loss scaler needed), nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def check_finite(loss: float, where: str) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(f"non-finite loss ({loss}) in {where}")
