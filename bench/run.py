"""The benchmark suite: the project's way of working against the reference's, side by side in one run.

    python bench/run.py [--quick]

Prints a table and, as its last line, one JSON object with data_path_speedup,
eval_overhead, gli_trial_speedup (against the reference's loop, which decodes the
evaluation JPEGs through PIL after every batch), gli_trial_speedup_cached_reference
(the same loop reading cached tensors), study_efficiency, per_trial_startup_s and
trial_peak_rss_mb. Ratios, not absolute times, are what carry over between machines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_concurrency import synthetic_mufac  # noqa: E402
from trainables import engine  # noqa: E402
from trainables.methods import create  # noqa: E402
from trainables.metrics import evaluate, predict  # noqa: E402
from trainables.models import ModelConfig, build_model  # noqa: E402
from trainables.unlearn import EvalConfig, unlearn  # noqa: E402


def timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


# --- 1. the data path -----------------------------------------------------------------------
def make_jpegs(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)  # smooth, face-like compressibility
        img = Image.fromarray(base).resize((128, 128), Image.BICUBIC)
        path = folder / f"F{i // 34:04d}_AGE_a_{i}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


class _PilDataset(torch.utils.data.Dataset):
    """The reference's way: decode the JPEG and run torchvision's PIL transforms per image, every time it is read.
    Without `size`, the training transforms (augmentation); with it, the evaluation resize."""

    def __init__(self, paths, size: int | None = None):
        from torchvision import transforms as T

        self.paths = paths
        if size is None:
            self.transform = T.Compose([T.Resize((128, 128)), T.RandomHorizontalFlip(),
                                        T.RandomAffine(0, shear=10, scale=(0.8, 1.2)),
                                        T.ColorJitter(0.2, 0.2, 0.2), T.ToTensor()])
        else:
            self.transform = T.Compose([T.Resize((size, size)), T.ToTensor()])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), 0


def data_path(n: int) -> dict:
    from trainables.data.cache import decode_files
    from trainables.data.splits import Split

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), n)
        loader = torch.utils.data.DataLoader(_PilDataset(paths), batch_size=64, shuffle=True, num_workers=2)
        reference = timed(lambda: [None for _ in loader])
        decode = timed(lambda: decode_files(paths, 128))  # once per data set, then cached on disk
        images, _ = decode_files(paths, 128)
    split = Split(images, torch.zeros(n, dtype=torch.long), torch.arange(n))
    gen, cpu = engine.generator(0), torch.device("cpu")

    def epoch():
        for idx in engine.batch_indices(n, 64, gen):
            engine.inputs(split, idx, cpu, augment=True, gen=gen)

    ours = timed(epoch, repeats=2)
    return {"images": n, "reference_epoch_s": reference, "cached_epoch_s": ours, "one_time_decode_s": decode,
            "data_path_speedup": reference / ours}


# --- 2. evaluation overhead -------------------------------------------------------------------
def eval_overhead(sizes: dict) -> dict:
    data = synthetic_mufac(sizes, 128)
    torch.manual_seed(0)
    model = build_model(ModelConfig("resnet18"), 3, 8).eval()
    cpu = torch.device("cpu")
    names = ("val", "unseen_val", "forget")
    bare = timed(lambda: [predict(model, data[n], cpu) for n in names], repeats=2)
    full = timed(lambda: evaluate(model, data, test="val", unseen="unseen_val", retain=False, device=cpu), repeats=2)
    return {"images": sum(len(data[n]) for n in names), "bare_forward_s": bare, "full_suite_s": full,
            "eval_overhead": full / bare}


# --- 3. a GLI trial against the reference's evaluate-after-every-batch loop ---------------------
def _decoded(loader) -> torch.Tensor:
    """One pass of a PIL DataLoader, as uint8 images (the form the metric code takes)."""
    return torch.cat([(x * 255).round().to(torch.uint8) for x, _ in loader])


def _reference_loop(original, data, device, limit: int, loaders: dict | None) -> float:
    """The same GLI steps; after every batch the full test, unseen and forget sets are evaluated.
    With `loaders`, those sets are first decoded from their JPEGs through PIL, as the notebooks do."""
    import copy
    from dataclasses import replace

    from trainables.data.splits import Split
    from trainables.methods import Context

    method = create("gli", "mufac")
    engine.seed_everything(0)
    ctx = Context(engine.prepare_model(copy.deepcopy(original), device), original, data, device, engine.generator(0), 0)
    start = time.perf_counter()
    for i, _ in enumerate(method.run(ctx), start=1):
        eval_data = data
        if loaders:
            splits = {n: Split(_decoded(dl).to(device), data[n].labels, data[n].identities) for n, dl in loaders.items()}
            eval_data = replace(data, splits={**data.splits, **splits})
        evaluate(ctx.model, eval_data, test="test", unseen="unseen", retain=False, device=device)
        if i >= limit:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def gli_trial(sizes: dict, image_size: int, model: ModelConfig, reference_steps: int | None,
              device: torch.device = torch.device("cpu")) -> dict:
    from trainables.unlearn import _on_device

    data = synthetic_mufac(sizes, image_size)
    torch.manual_seed(0)
    original = engine.prepare_model(build_model(model, 3, 8), device).eval()
    method = create("gli", "mufac")
    start = time.perf_counter()
    result = unlearn(method, original, data, 0, device, EvalConfig())  # as the study runs it
    if device.type == "cuda":
        torch.cuda.synchronize()
    ours = time.perf_counter() - start
    data = _on_device(data, device)  # the reference loops get the same device-resident training data
    steps = result["steps"]
    limit = reference_steps or steps
    step_s = result["metrics"]["seconds"]  # the training steps alone, evaluations excluded
    out = {"steps": steps, "evaluations": result["metrics"]["evaluations"], "trial_s": ours,
           "trial_steps_only_s": step_s, "reference_steps_measured": limit}
    # Each reference step costs the same (one GLI step, one full evaluation): time `limit` of them
    # and scale to the whole epoch.
    cached = _reference_loop(original, data, device, limit, None) * steps / limit
    out.update(reference_cached_s=cached, gli_trial_speedup_cached_reference=cached / ours,
               speedup_bound_cached_reference=cached / step_s)  # no evaluation at all could not beat this
    with tempfile.TemporaryDirectory() as tmp:
        loaders = {}
        for name in ("test", "unseen", "forget"):
            folder = Path(tmp) / name
            folder.mkdir()
            paths = make_jpegs(folder, len(data[name]))  # 128 px JPEGs, as MUFAC's files
            loaders[name] = torch.utils.data.DataLoader(_PilDataset(paths, image_size), batch_size=256,
                                                        num_workers=2)
        reference = _reference_loop(original, data, device, limit, loaders) * steps / limit
    out.update(reference_s=reference, gli_trial_speedup=reference / ours)
    return out


# --- 4. the study ---------------------------------------------------------------------------------
def study(smoke: bool) -> dict:
    from mlflow.tracking import MlflowClient

    from trainables.records import SYSTEM_PREFIX

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "study.launch", "--results-dir", tmp, "--experiment-name", "bench"]
        if smoke:
            cmd.append("--smoke-test")
        env = {**os.environ, "GLI_CACHE_DIR": f"{tmp}/cache", "RAY_USAGE_STATS_ENABLED": "0"}
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       cwd=Path(__file__).resolve().parents[1])
        wall = time.perf_counter() - start
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        exp = client.get_experiment_by_name("bench")
        runs = [r for r in client.search_runs([exp.experiment_id], max_results=10000)
                if "mlflow.parentRunId" in r.data.tags]
    m = [{k[len(SYSTEM_PREFIX):]: v for k, v in r.data.metrics.items() if k.startswith(SYSTEM_PREFIX)} for r in runs]
    slots = os.cpu_count() or 1
    busy = sum(x.get("trial_seconds", 0.0) for x in m)
    startups = [x["started_at"] - x["scheduled_at"] + x.get("startup_seconds", 0.0)
                for x in m if "started_at" in x and "scheduled_at" in x]
    rss = [x["peak_rss_mb"] for x in m if "peak_rss_mb" in x]
    return {"trials": len(runs), "wall_s": wall, "slots": slots, "trial_compute_s": busy,
            "study_efficiency": busy / (wall * slots),
            "per_trial_startup_s": statistics.median(startups) if startups else float("nan"),
            "trial_peak_rss_mb": statistics.median(rss) if rss else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and the smoke study (a few minutes)")
    parser.add_argument("--gpu-gli", action="store_true",
                        help="only the GLI comparison, on CUDA at full MUFAC size (128 px, ResNet-18)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    mufac = {"forget": 1500, "retain": 8525, "test": 1539, "unseen": 1504}
    small = {"forget": 300, "retain": 1700, "test": 300, "unseen": 300}
    if args.gpu_gli:
        sections = {"GLI trial (MUFAC-shaped, 128 px, ResNet-18, CUDA)":
                    gli_trial(mufac, 128, ModelConfig("resnet18"), 40, torch.device("cuda"))}
    else:
        sections = {
            "data path (one epoch, 128 px JPEGs)": data_path(2000),
            "evaluation (ResNet-18, 128 px)": eval_overhead(small if args.quick else mufac),
            "GLI trial (MUFAC-shaped, 32 px, narrow ResNet-18)":
                gli_trial(mufac, 32, ModelConfig("resnet18_small", 8), 12 if args.quick else 40),
            "study (smoke)" if args.quick else "study (default)": study(smoke=args.quick),
        }
    keys = ["data_path_speedup", "eval_overhead", "gli_trial_speedup", "gli_trial_speedup_cached_reference",
            "study_efficiency", "per_trial_startup_s", "trial_peak_rss_mb"]
    summary = {}
    for title, values in sections.items():
        print(f"\n{title}")
        for k, v in values.items():
            print(f"  {k:<28} {v:.3f}" if isinstance(v, float) else f"  {k:<28} {v}")
            if k in keys:
                summary[k] = round(v, 3)
    summary.update(quick=args.quick, cpus=os.cpu_count(), torch=torch.__version__,
                   device=torch.cuda.get_device_name(0) if args.gpu_gli else "cpu")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
