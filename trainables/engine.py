"""Shared training machinery: device choice, seeding, batches, inputs, mixed precision, CUDA graphs.

Base training and every unlearning method build on these few functions, so the data
path (uint8 tensors on the device, batched augmentation, channels-last and bf16
autocast on CUDA) is written once. On CUDA an update made of many small kernels (a GLI
step is a few hundred launches at batch 64) is captured once as a CUDA graph and
replayed (`StepGraph`); the graphs and the model they act on are kept per process
(`working_copy`, `cached_graph`), so a worker that runs many trials captures once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import os
import platform
import random
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import Split
from .data.augment import augment_batch, to_float


@functools.lru_cache(maxsize=1)
def hardware() -> dict[str, str]:
    """What the numbers were computed on: float results differ between CPU models and between GPUs,
    driver and library versions, so a reproduction compares exactly only where these agree."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
           "cuda_device": "none", "cuda": torch.version.cuda or "none", "driver": "none"}
    if torch.cuda.is_available():
        out["cuda_device"] = torch.cuda.get_device_name(0)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            out["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else "unknown"
        except (OSError, subprocess.SubprocessError):
            out["driver"] = "unknown"
    return out


# The parts of `hardware()` that change float results (the versions of Python and NumPy do not here).
NUMERIC_HARDWARE = ("cpu", "cuda_device", "torch", "cuda", "driver")


def pick_device(name: str | None = None) -> torch.device:
    """CUDA when torch sees one (inside a Ray trial: the GPU Ray assigned), else the CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_deterministic() -> None:
    """PyTorch's deterministic kernels (an error where an operation has none), cuBLAS's fixed workspace and
    cuDNN without autotuning: slower on a GPU; a CPU run is deterministic without this."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch_indices(n: int, batch_size: int, gen: torch.Generator | None, shuffle: bool = True) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    return list(order.split(batch_size))


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on `device` without stalling it: a copy from ordinary (pageable) host memory
    waits for the device to finish its queued work, a copy from pinned memory does not."""
    if device.type != "cuda" or t.device.type == "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def inputs(
    split: Split, idx: torch.Tensor, device: torch.device, augment: bool = False, gen: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as (float images in [0, 1] on the device, labels on the device)."""
    idx = to_device(idx, split.images.device)
    images = split.images[idx].to(device, non_blocking=True)
    x = augment_batch(images, gen) if augment else to_float(images)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, split.labels[idx.to(split.labels.device)].to(device, non_blocking=True)


@dataclass(frozen=True)
class Accel:
    """How the GPU runs a trial: bf16 autocast (or fp32), CUDA graphs for the updates that allow them, and
    evaluations whose CPU part overlaps the next updates (nothing here changes a CPU run)."""

    precision: str = "bf16"
    cuda_graphs: bool = True
    async_attack: bool | None = None  # the evaluations' attack on a worker thread; None: on CUDA only
    cudnn_benchmark: bool = False  # let cuDNN time its convolution algorithms for each shape (CUDA)
    deterministic: bool = False  # deterministic CUDA kernels (see `make_deterministic`); the study's --deterministic

    @classmethod
    def exact(cls) -> "Accel":
        """The settings under which a GPU run repeats bit for bit on the same GPU, driver and libraries."""
        return cls(precision="fp32", cuda_graphs=False, async_attack=False, cudnn_benchmark=False, deterministic=True)

    def in_effect(self, device: torch.device) -> dict:
        """The settings as they act on `device`: on a CPU every lever is off (fp32, no graphs, the attack
        inline), whatever was asked; what an export records, so that it says what ran."""
        if device.type == "cuda":
            return {**dataclasses.asdict(self), "async_attack": self.async_attack is not False}
        return {"precision": "fp32", "cuda_graphs": False, "async_attack": False, "cudnn_benchmark": False,
                "deterministic": self.deterministic}

    def validate(self) -> None:
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be bf16 or fp32, got {self.precision!r}")


def autocast(device: torch.device, accel: Accel | None = None, capture: bool = False):
    """bf16 autocast on CUDA (no loss scaler needed) unless `accel` asks for fp32; nothing on the CPU.

    Inside a graph capture the cast cache must be off (the casts are part of the graph)."""
    if device.type == "cuda" and (accel is None or accel.precision == "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not capture)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


_WORKSPACE: dict[tuple, torch.nn.Module] = {}  # per process: one working model per architecture, on CUDA


def working_copy(original: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A trainable copy of `original` on `device`, in train mode with every parameter trainable.

    On CUDA the same module object is reused by every trial of this process (its tensors
    overwritten in place), so CUDA graphs captured on it stay valid across trials."""
    if device.type != "cuda":
        return prepare_model(copy.deepcopy(original), device)
    state = original.state_dict()
    key = (str(device), type(original).__name__, tuple((k, tuple(v.shape), v.dtype) for k, v in state.items()))
    model = _WORKSPACE.get(key)
    if model is None:
        model = _WORKSPACE[key] = prepare_model(copy.deepcopy(original), device)
    else:
        with torch.no_grad():
            for name, value in model.state_dict().items():
                value.copy_(state[name])
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    return model.train()


class StepGraph:
    """One captured update: `fn(*inputs)` recorded as a CUDA graph on static input buffers.

    Capturing needs a few real runs first (warm-up, on a side stream); they change the
    model, so every parameter and buffer is put back afterwards. `fn` must be free of host
    syncs and keep its shapes; its outputs are the graph's static outputs.
    """

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]], inputs: list[torch.Tensor],
                 model: torch.nn.Module, warmup: int = 2):
        start = time.perf_counter()
        self.inputs = [t.clone() for t in inputs]
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)
        with torch.no_grad():
            for name, value in model.state_dict().items():
                value.copy_(saved[name])
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - start

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for buffer, value in zip(self.inputs, inputs):
            buffer.copy_(value, non_blocking=True)
        self.graph.replay()
        return self.outputs


_GRAPHS: OrderedDict = OrderedDict()
GRAPH_LIMIT = 4  # captured updates kept per process (each holds its activations' memory)
capture_seconds = 0.0  # spent capturing in this process, reported separately from trial time


def cached_graph(key: tuple, build: Callable[[], StepGraph]) -> StepGraph:
    """The graph for `key`, captured by `build` on first use; least recently used ones are dropped."""
    global capture_seconds
    if key in _GRAPHS:
        _GRAPHS.move_to_end(key)
        return _GRAPHS[key]
    graph = build()
    capture_seconds += graph.capture_seconds
    _GRAPHS[key] = graph
    while len(_GRAPHS) > GRAPH_LIMIT:
        _GRAPHS.popitem(last=False)
    return graph


def check_finite(loss: float, where: str) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(f"non-finite loss ({loss}) in {where}")
