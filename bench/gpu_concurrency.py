"""GLI trials on one GPU: a trial's time, what each lever gained, the paper protocol, trials sharing the GPU.

A GLI trial as the study runs it (`trainables.unlearn.unlearn`, paper settings: alpha
0.01, K 2, w 200 to 1000, one epoch, batch 64, SGD lr 0.001, the batch augmentation on
the GPU) on MUFAC-shaped synthetic data: 10,025 train images at 128 px (1,500 forget,
8,525 retain), 1,539 test, 1,504 unseen, 8 classes, torchvision ResNet-18. `fair` runs
the notebook's loop (128 updates), evaluates 10 times on the selection halves and makes
the final report; `paper` evaluates after every update on the full sets.

One process runs the single-trial variants in turn (eager fp32, eager bf16, bf16 with
CUDA graphs: the first trial, which captures, then warm trials, then the paper
protocol); then N processes share the GPU, each after a warm-up trial of its own, and
the aggregate retain images per second is measured. The last line is JSON.

    python bench/gpu_concurrency.py --check --concurrency 1 2 4 8 --out gpu.json
    python bench/gpu_concurrency.py --small --concurrency 1 2     # a quick CPU check of the script
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_mufac(sizes: dict[str, int], image_size: int, seed: int = 0):
    import torch

    from trainables.data.splits import Split, assemble

    g = torch.Generator().manual_seed(seed)
    parts, first_id = {}, 0
    for name, n in sizes.items():
        labels = torch.randint(0, 8, (n,), generator=g)
        images = torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8, generator=g)
        images[torch.arange(n), labels % 3, : image_size // 4] = (labels * 30).to(torch.uint8)[:, None, None]  # signal
        families = max(2, n // 34)  # about 34 photos per family, as in MUFAC
        parts[name] = Split(images, labels, first_id + torch.arange(n) % families)
        first_id += families
    return assemble("mufac", "multiclass", [f"age_{c}" for c in "abcdefgh"], parts, "synthetic", True, 0)


class Runner:
    """Trials in this process: one data set and one original model, the CUDA workspace kept across trials."""

    def __init__(self, conf: dict, seed: int = 0):
        import torch

        from trainables import engine
        from trainables.models import ModelConfig, build_model

        torch.set_num_threads(max(1, conf["threads"]))
        self.bootstrap = conf["bootstrap"]  # resamples behind fs_se at the chosen checkpoint
        self.torch, self.engine = torch, engine
        self.device = engine.pick_device()
        self.data = synthetic_mufac(conf["sizes"], conf["image_size"], seed=seed)
        torch.manual_seed(seed)
        self.original = engine.prepare_model(build_model(ModelConfig("resnet18"), 3, 8), self.device).eval()

    def trial(self, seed: int, protocol: str = "fair", precision: str = "bf16", graphs: bool = True,
              patience: int | None = None, attack_inline: bool = False, benchmark: bool = False) -> dict:
        from trainables.methods import create
        from trainables.unlearn import EvalConfig, unlearn

        torch, engine, cuda = self.torch, self.engine, self.device.type == "cuda"
        captured = engine.capture_seconds
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = unlearn(create("gli", "mufac"), self.original, self.data, seed, self.device,
                         EvalConfig(protocol=protocol, patience=patience, bootstrap=self.bootstrap),
                         accel=engine.Accel(precision, graphs, False if attack_inline else None, benchmark))
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        m = result["metrics"]
        return {"wall_s": wall, "capture_s": engine.capture_seconds - captured, "method_s": m["seconds"],
                "steps": result["steps"], "evaluations": m["evaluations"], "final_score": m["final_score"],
                "retain_images_per_s": len(self.data["retain"]) / wall,
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0}


VARIANTS = [  # name, protocol, precision, graphs, patience, seed, attack inline, cudnn benchmark
    ("eager fp32, attack inline", "fair", "fp32", False, None, 0, True, False),
    ("eager bf16, attack inline", "fair", "bf16", False, None, 0, True, False),
    ("graphs bf16, attack inline", "fair", "bf16", True, None, 0, True, False),
    ("graphs bf16", "fair", "bf16", True, None, 1, False, False),
    ("graphs bf16, again", "fair", "bf16", True, None, 2, False, False),
    ("+ cudnn benchmark, first (captures)", "fair", "bf16", True, None, 0, False, True),
    ("+ cudnn benchmark", "fair", "bf16", True, None, 1, False, True),
    ("+ cudnn benchmark, again", "fair", "bf16", True, None, 2, False, True),
    ("paper, patience 3 (as the notebooks)", "paper", "bf16", True, None, 1, False, True),
    ("paper, every update evaluated", "paper", "bf16", True, 10**6, 1, False, True),
]


def profile(runner: Runner) -> dict:
    """Where a trial's time goes: one graphed update, one evaluation's forward passes, its attack."""
    import statistics

    import torch

    from trainables.metrics import SELECTION_SPLITS, metrics_from, outputs
    from trainables.unlearn import _on_device

    data = _on_device(runner.data, runner.device)
    model = runner.engine.working_copy(runner.original, runner.device)
    out = {}
    for protocol in ("fair", "paper"):
        test, unseen = SELECTION_SPLITS[protocol]
        forward, attack = [], []
        for _ in range(5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            cache = outputs(model, data, [test, unseen, "forget"])
            t1 = time.perf_counter()
            metrics_from(cache, data, test, unseen, False, 42, protocol)
            forward.append(t1 - t0)
            attack.append(time.perf_counter() - t1)
        out[f"{protocol}_eval_forward_ms"] = 1000 * statistics.median(forward)
        out[f"{protocol}_eval_attack_ms"] = 1000 * statistics.median(attack)
    return out


def single(conf: dict, queue) -> None:
    runner = Runner(conf)
    for name, protocol, precision, graphs, patience, seed, inline, benchmark in VARIANTS:
        if conf["variants"] and not any(v in name for v in conf["variants"]):
            continue
        if benchmark and "first" in name:
            runner.engine._GRAPHS.clear()  # recapture with the kernels cuDNN picks by timing
        try:
            row = runner.trial(seed, protocol, precision, graphs, patience, inline, benchmark)
        except Exception as exc:  # one failing lever must not cost the others their numbers
            traceback.print_exc()
            row = {"error": f"{type(exc).__name__}: {exc}"}
        queue.put({"variant": name, **row})
    if runner.device.type == "cuda":
        try:
            queue.put({"profile": profile(runner)})
        except Exception as exc:
            traceback.print_exc()
            queue.put({"profile": {"error": str(exc)}})
    queue.put(None)


def shared(index: int, conf: dict, barrier, queue) -> None:
    try:
        runner = Runner(conf, seed=index)
        runner.trial(100 + index, benchmark=conf["benchmark"])  # warm-up: captures this process's graph
        barrier.wait()
        queue.put({"index": index, **runner.trial(index, benchmark=conf["benchmark"])})
    except Exception as exc:
        traceback.print_exc()
        barrier.abort()
        queue.put({"index": index, "error": f"{type(exc).__name__}: {exc}"})


def concurrency(n: int, conf: dict) -> dict:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=shared, args=(i, {**conf, "threads": max(1, conf["cpus"] // n)}, barrier, queue))
             for i in range(n)]
    for p in procs:
        p.start()
    rows = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    if any("error" in r for r in rows):
        return {"concurrency": n, "error": [r["error"] for r in rows if "error" in r][0]}
    walls = [r["wall_s"] for r in rows]
    return {"concurrency": n, "wall_s_per_trial_mean": sum(walls) / n, "wall_s_per_trial_max": max(walls),
            "aggregate_images_per_s": n * conf["sizes"]["retain"] / max(walls),
            "peak_gib_per_trial": max(r["peak_gib"] for r in rows)}


def check() -> str:
    """The CUDA tests (graphed update against eager bf16 and eager fp32)."""
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "tests/test_gpu.py"], cwd=ROOT,
                         capture_output=True, text=True)
    print(out.stdout[-3000:], out.stderr[-2000:], flush=True)
    return "passed" if out.returncode == 0 else f"failed (exit {out.returncode})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 2, 4, 8], help="trials at once on the GPU")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples behind fs_se at the chosen checkpoint")
    parser.add_argument("--variants", nargs="*", default=[], help="run only the single-trial variants naming these")
    parser.add_argument("--small", action="store_true", help="tiny sizes, for checking the script on a CPU")
    parser.add_argument("--check", action="store_true", help="run the CUDA tests first")
    parser.add_argument("--out", help="write the JSON results here too")
    parser.add_argument("--benchmark", action="store_true", help="cuDNN's algorithm timing in the shared runs")
    args = parser.parse_args()
    sizes = {"forget": 1500, "retain": 8525, "test": 1539, "unseen": 1504}
    image_size = 128
    if args.small:
        sizes, image_size = {"forget": 128, "retain": 256, "test": 96, "unseen": 96}, 32
    cpus = os.cpu_count() or 2
    conf = {"sizes": sizes, "image_size": image_size, "threads": cpus, "cpus": cpus, "bootstrap": args.bootstrap,
            "variants": args.variants}
    import torch

    info: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                  "torch": torch.__version__, "cpus": cpus, "sizes": sizes, "image_size": image_size}
    if args.check:
        info["cuda_tests"] = check()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=single, args=({**conf, "threads": min(cpus, 4)}, queue))
    proc.start()
    info["variants"] = []
    print(f"{'variant':<40} {'wall s':>7} {'capture s':>9} {'steps':>6} {'evals':>6} {'img/s':>7} {'GiB':>5} "
          f"{'final':>6}", flush=True)
    while (row := queue.get()) is not None:
        if "profile" in row:
            info["profile"] = row["profile"]
            print("profile: " + json.dumps(row["profile"]), flush=True)
            continue
        info["variants"].append(row)
        if "error" in row:
            print(f"{row['variant']:<40} error: {row['error']}", flush=True)
            continue
        print(f"{row['variant']:<40} {row['wall_s']:>7.2f} {row['capture_s']:>9.2f} {row['steps']:>6} "
              f"{row['evaluations']:>6} {row['retain_images_per_s']:>7.0f} {row['peak_gib']:>5.2f} "
              f"{row['final_score']:>6.3f}", flush=True)
    proc.join()
    info["shared"] = []
    conf["benchmark"] = args.benchmark
    print(f"{'trials':>6} {'wall/trial s':>13} {'aggregate retain img/s':>23} {'GiB/trial':>10}", flush=True)
    for n in args.concurrency:
        r = concurrency(n, conf)
        info["shared"].append(r)
        if "error" in r:
            print(f"{n:>6} error: {r['error']}", flush=True)
            continue
        print(f"{n:>6} {r['wall_s_per_trial_mean']:>13.2f} {r['aggregate_images_per_s']:>23.0f} "
              f"{r['peak_gib_per_trial']:>10.2f}", flush=True)
    by_name = {r["variant"]: r for r in info["variants"] if "error" not in r}
    warm = [by_name[k]["wall_s"] for k in ("graphs bf16", "graphs bf16, again", "+ cudnn benchmark",
                                           "+ cudnn benchmark, again") if k in by_name]
    best = max((r for r in info["shared"] if "error" not in r), key=lambda r: r["aggregate_images_per_s"], default=None)
    fair = min(warm) if warm else None
    paper = by_name.get("paper, every update evaluated", {}).get("wall_s")
    info["summary"] = {
        "fair_trial_s": fair, "capture_s": by_name.get("graphs bf16, attack inline", {}).get("capture_s"),
        "paper_trial_s": by_name.get("paper, patience 3 (as the notebooks)", {}).get("wall_s"),
        "paper_every_update_s": paper, "paper_over_fair": paper / fair if paper and fair else None,
        "best_concurrency": best and best["concurrency"],
        "aggregate_images_per_s": best and best["aggregate_images_per_s"],
        "peak_gib_per_trial": max((r.get("peak_gib", 0) for r in info["variants"]), default=0.0),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(info, indent=2))
    print(json.dumps({"device": info["device"], "cuda_tests": info.get("cuda_tests"), **info["summary"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
