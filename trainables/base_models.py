"""Base models (SPEC section 4): the original model on train and the retrained model on retain.

Each data set trains them as its own notebook does (reference-loops.md section 3, the
same under both protocols): `default_configs` gives the model and a `BaseRecipe`, one
`TrainConfig` per kind. `base_model` returns a trained model from the checkpoint cache,
training it on first use; the cache key (`bank_key`) covers the data, the split's membership,
the model and training settings and the seed, so a changed setting never reuses a stale model
(`python -m study.bank` lists, sizes and prunes the checkpoints). `python -m trainables.base_models`
trains both on a data set and prints their metrics.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from . import engine
from .data import DataConfig, DataError, Dataset, load_dataset
from .data.cache import default_cache_dir
from .metrics import BOOTSTRAP, REPORT_SPLITS, evaluate, task_loss
from .models import ModelConfig, build_model
from .methods.interface import PROTOCOLS
from .records import REFERENCE_ROWS

BASE_KINDS = dict(zip(REFERENCE_ROWS, ("train", "retain")))  # original, retrain -> the split each trains on


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64
    milestones: list[int] = field(default_factory=lambda: [10, 20])  # lr * gamma at each
    weight_decay: float = 0.0
    gamma: float = 0.1


@dataclass(frozen=True)
class BaseRecipe:
    """How each base model is trained."""

    original: TrainConfig = field(default_factory=TrainConfig)
    retrain: TrainConfig = field(default_factory=TrainConfig)

    def __getitem__(self, kind: str) -> TrainConfig:
        if kind not in BASE_KINDS:
            raise ValueError(f"unknown base model {kind!r}; known: {', '.join(BASE_KINDS)}")
        return getattr(self, kind)

    def with_epochs(self, epochs: int | None) -> "BaseRecipe":
        if not epochs:
            return self
        return BaseRecipe(replace(self.original, epochs=epochs), replace(self.retrain, epochs=epochs))

    @classmethod
    def of(cls, values: dict) -> "BaseRecipe":
        return cls(**{kind: TrainConfig(**values[kind]) for kind in BASE_KINDS})


def default_configs(dataset: str, width: int | None = None, base_epochs: int | None = None
                    ) -> tuple[ModelConfig, BaseRecipe]:
    """Each data set's notebook recipe (reference-loops.md section 3); a small, quick, memorising setup
    for digits and other small data. `width` asks for the width-reduced ResNet-18 (small CPU runs)."""
    if dataset == "mucac":
        # The notebook trains 20 epochs (lr / 10 at 10) but every method loads its 8-epoch checkpoint.
        recipe = BaseRecipe(TrainConfig(epochs=8, momentum=0.0, milestones=[10]),
                            TrainConfig(epochs=7, momentum=0.0, milestones=[10]))
    elif dataset == "mucac-binary":
        recipe = BaseRecipe(TrainConfig(gamma=0.2), TrainConfig(momentum=0.0, gamma=0.2))  # lr / 5 at 10 and 20
    elif dataset == "mufac":
        recipe = BaseRecipe()  # 30 epochs, momentum 0.9, lr / 10 at 10 and 20, for both
    elif dataset == "fashion-mnist":
        # The small recipe trained to memorisation on 1,000 images: original FS 0.235-0.250 vs retrained
        # 0.008-0.045 over seeds 0-2, 7.8-9.6 of the original's fs_se (docs/results-fashion-mnist.md).
        long = TrainConfig(epochs=30, lr=0.05, momentum=0.0, milestones=[20])
        return ModelConfig("resnet18_small", width=width or 8), BaseRecipe(long, long).with_epochs(base_epochs)
    else:
        # Narrow and without momentum, so unseen losses stay large enough for the loss-only attack to
        # see memorisation: original FS 0.06-0.09 vs retrained 0.00-0.03 over seeds 0-2 (report halves).
        small = TrainConfig(epochs=15, lr=0.05, momentum=0.0, milestones=[10])
        return ModelConfig("resnet18_small", width=width or 8), BaseRecipe(small, small).with_epochs(base_epochs)
    model = ModelConfig("resnet18_small", width=width) if width else ModelConfig("resnet18")
    return model, recipe.with_epochs(base_epochs)


def train_model(
    data: Dataset, split_name: str, model_cfg: ModelConfig, cfg: TrainConfig, seed: int, device: torch.device,
    log_every: int = 5,
) -> tuple[torch.nn.Module, float]:
    """Train from scratch on one split; returns (model, seconds)."""
    engine.seed_everything(seed)
    model = engine.prepare_model(build_model(model_cfg, data.in_channels, data.num_outputs), device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestones, gamma=cfg.gamma)
    split = data[split_name].to(device)
    gen = engine.generator(seed)
    start = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        total = torch.zeros((), device=device)
        batches = engine.batch_indices(len(split), cfg.batch_size, gen)
        for idx in batches:
            x, y = engine.inputs(split, idx, device, augment=data.augment, gen=gen)
            with engine.autocast(device):
                loss = task_loss(model(x).float(), y, data.task)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        sched.step()
        mean = float(total) / len(batches)
        engine.check_finite(mean, f"base training on {split_name}, epoch {epoch + 1}")
        if log_every and ((epoch + 1) % log_every == 0 or epoch + 1 == cfg.epochs):
            print(f"[base] {split_name}: epoch {epoch + 1}/{cfg.epochs} loss {mean:.4f} "
                  f"({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)
    return model, time.perf_counter() - start


def bank_key(data: Dataset, kind: str, model_cfg: ModelConfig, cfg: TrainConfig, seed: int) -> dict:
    """What a base model is a function of, its content key in the bank of reference models: the data set and
    its split's membership (`split_fingerprint`: which images lie in forget, retain, test and unseen, so the
    forgotten subset too), the kind (original or retrain), the architecture, the training recipe and the seed."""
    return {"dataset": data.name, "data": data.fingerprint, "split": data.split_fingerprint, "kind": kind,
            "model": asdict(model_cfg), "recipe": asdict(cfg), "seed": seed}


def checkpoint_path(
    data: Dataset, kind: str, model_cfg: ModelConfig, cfg: TrainConfig, seed: int, cache_dir: Path | None = None
) -> Path:
    key = json.dumps(bank_key(data, kind, model_cfg, cfg, seed), sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return (cache_dir or default_cache_dir()) / "models" / f"{data.name}-{kind}-s{seed}-{digest}.pt"


def base_model(
    data: Dataset, kind: str, model_cfg: ModelConfig, recipe: BaseRecipe, seed: int, device: torch.device,
    cache_dir: Path | None = None,
) -> tuple[torch.nn.Module, float, bool]:
    """The `original` or `retrain` model; returns (model, training seconds, loaded from cache)."""
    cfg = recipe[kind]
    path = checkpoint_path(data, kind, model_cfg, cfg, seed, cache_dir)
    model = engine.prepare_model(build_model(model_cfg, data.in_channels, data.num_outputs), device)
    if path.exists():
        try:
            state = read_checkpoint(path)
            model.load_state_dict(state["state_dict"])
            return model, float(state["seconds"]), True
        except (CheckpointError, RuntimeError) as exc:  # cut short or altered: retrain, never train on it
            print(f"[base] {path.name}: {exc}; retraining", file=sys.stderr, flush=True)
    model, seconds = train_model(data, BASE_KINDS[kind], model_cfg, cfg, seed, device)
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_checkpoint(path, {"state_dict": state_dict, "seconds": seconds, "digest": state_digest(state_dict),
                            "key": json.dumps(bank_key(data, kind, model_cfg, cfg, seed), sort_keys=True)})
    return model, seconds, False


def writer_host() -> str:
    """This host's name as a temporary file's name carries it."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def write_checkpoint(path: Path, state: dict) -> None:
    """`torch.save(state)` to `path` by way of a temporary file beside it, renamed when whole: never a half-written
    checkpoint under the final name after a crash. The temporary file is named for this host and process (two
    writers never share one) and locked (`fcntl.flock`, exclusive) from its creation until the rename, so that
    `python -m study.bank prune` tells a write in progress, however slow, from one that died: a lock goes
    with its process. A prune that found the file before the lock was taken may remove it: then the file at the
    name is not the one locked, and the write starts again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{writer_host()}.{os.getpid()}.tmp")
    while True:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: the name alone (host and process) tells prune
            break
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, tmp):
            break
        os.close(fd)
    with os.fdopen(fd, "wb") as f:  # closed, and so unlocked, after the rename
        try:
            f.truncate(0)  # a file left by a dead process of the same number
            torch.save(state, f)
            f.flush()
            os.replace(tmp, path)
        except BaseException:
            if _same_file(f.fileno(), tmp):
                tmp.unlink()
            raise


class CheckpointError(RuntimeError):
    """A base-model checkpoint that cannot be trusted: unreadable, or its weights not those written."""


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, shape, dtype and bytes (CPU tensors)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().contiguous()
        h.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_checkpoint(path: Path) -> dict:
    """A base-model checkpoint, checked: it must load and its weights must match the digest written with them."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated zip: PytorchStreamReader, EOF, unpickling errors
        raise CheckpointError(f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or "state_dict" not in state or "seconds" not in state:
        raise CheckpointError("not a base-model checkpoint")
    if "digest" not in state:
        raise CheckpointError("no digest (written by an older version)")
    if state_digest(state["state_dict"]) != state["digest"]:
        raise CheckpointError("weights do not match the checkpoint's digest")
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainables.base_models",
        description="Train the original and retrained models and print their metrics; with several seeds, "
                    "whether memorisation is measurable (the original's forgetting score above the retrained "
                    "model's, in units of its bootstrap standard error).")
    parser.add_argument("--dataset", default="digits", help="digits, mufac, mucac, mucac-binary, fashion-mnist or folder")
    parser.add_argument("--data-dir", help="the data folder (mufac / mucac / fashion-mnist / folder)")
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="training seed(s)")
    parser.add_argument("--epochs", type=int, help="override the number of training epochs")
    for split in ("train", "forget", "unseen", "test"):
        parser.add_argument(f"--{split}-count", type=int, help=f"fashion-mnist: {split} images (forget: also digits, mufac)")
    parser.add_argument("--cache-dir", help="cache for decoded images and checkpoints (default ~/.cache/gli-study)")
    parser.add_argument("--protocol", default="fair", choices=PROTOCOLS,
                        help="fair: report halves; paper: the full test and unseen sets, the notebooks' attack balancing")
    parser.add_argument("--width", type=int, help="the width-reduced ResNet-18 at this width (small CPU runs)")
    parser.add_argument("--image-size", type=int, default=128, help="decode size for face images")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help="resamples behind fs_se")
    parser.add_argument("--json", action="store_true", help="print one JSON object per model")
    args = parser.parse_args(argv)
    try:
        data = load_dataset(DataConfig(dataset=args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir,
                                       image_size=args.image_size, train_count=args.train_count,
                                       forget_count=args.forget_count, unseen_count=args.unseen_count,
                                       test_count=args.test_count))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model_cfg, recipe = default_configs(args.dataset, args.width, args.epochs)
    device = engine.pick_device()
    cache_dir = Path(args.cache_dir).resolve() if args.cache_dir else None
    test, unseen = REPORT_SPLITS[args.protocol]
    if not args.json:
        print(f"{data.name} {data.sizes()}, {model_cfg}, {recipe.original}")
        print(f"{'model':<10} {'seed':>4} {'accuracy':>9} {'forget_acc':>10} {'mia':>6} {'FS':>6} {'fs_se':>6} "
              f"{'final':>6} {'seconds':>8}")
    gaps = []
    for seed in args.seed:
        row = {}
        for kind in BASE_KINDS:
            model, seconds, cached = base_model(data, kind, model_cfg, recipe, seed, device, cache_dir)
            m = evaluate(model, data, test=test, unseen=unseen, protocol=args.protocol, bootstrap=args.bootstrap)
            m.update(model=kind, seed=seed, seconds=seconds, cached=cached)
            row[kind] = m
            if args.json:
                print(json.dumps(m))
            else:
                print(f"{kind:<10} {seed:>4} {m['accuracy']:>9.4f} {m['forget_accuracy']:>10.4f} {m['mia']:>6.3f} "
                      f"{m['forgetting_score']:>6.3f} {m.get('fs_se', float('nan')):>6.3f} {m['final_score']:>6.3f} "
                      f"{seconds:>8.1f}" + ("  (cached)" if cached else ""))
        se = row["original"].get("fs_se", float("nan"))
        gaps.append((row["original"]["forgetting_score"] - row["retrain"]["forgetting_score"]) / se)
    if not args.json and args.bootstrap:
        verdict = "measurable" if min(gaps) >= 3 else "NOT measurable"
        print(f"memorisation: original FS - retrained FS = {', '.join(f'{g:.1f}' for g in gaps)} of the original's "
              f"fs_se over seed(s) {args.seed}: {verdict} (needs >= 3 on every seed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
