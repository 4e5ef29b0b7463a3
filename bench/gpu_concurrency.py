"""GLI trials sharing one GPU: wall time, images per second, GPU memory, aggregate throughput.

A GLI trial as the study runs it (paper settings: alpha 0.01, K 2, w 200 to 1000, one
epoch, batch 64, augmentation on the device, about 10 evaluations) on MUFAC-shaped
synthetic data: 10,025 train images at 128 px (1,500 forget, 8,525 retain), 1,539
test and 1,504 unseen, 8 classes, ResNet-18. N trials run at once, one process each,
released together by a barrier after their set-up; timings cover the trial itself
(the runner's steps, evaluations and final report).

    python bench/gpu_concurrency.py --concurrency 1 2 4 8 --out results.json
    python bench/gpu_concurrency.py --small --concurrency 1 2     # a quick CPU check of the script
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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
    data = assemble("mufac", "multiclass", [f"age_{c}" for c in "abcdefgh"], parts, "synthetic", True, 0)
    return data


def worker(index: int, args: dict, barrier, queue) -> None:
    import torch

    from trainables import engine
    from trainables.methods import create
    from trainables.models import ModelConfig, build_model
    from trainables.unlearn import EvalConfig, unlearn

    torch.set_num_threads(max(1, args["threads"]))
    device = engine.pick_device()
    data = synthetic_mufac(args["sizes"], args["image_size"], seed=index)
    torch.manual_seed(index)
    original = engine.prepare_model(build_model(ModelConfig("resnet18"), 3, 8), device).eval()
    method = create("gli", "mufac")
    steps = -(-len(data["retain"]) // method.hp.batch_size)
    runner = EvalConfig(eval_every=max(1, steps // 10))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    barrier.wait()
    start = time.perf_counter()
    result = unlearn(method, original, data, seed=index, device=device, cfg=runner)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    queue.put({
        "index": index, "wall_s": wall, "method_s": result["metrics"]["seconds"],
        "evaluations": result["metrics"]["evaluations"], "steps": result["steps"],
        "images_per_s": len(data["retain"]) / wall,
        "gpu_peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0,
        "final_score": result["metrics"]["final_score"],
    })


def run(concurrency: int, args: dict) -> dict:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(concurrency), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(i, args, barrier, queue)) for i in range(concurrency)]
    for p in procs:
        p.start()
    rows = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    walls = [r["wall_s"] for r in rows]
    retain = args["sizes"]["retain"]
    return {
        "concurrency": concurrency,
        "wall_s_per_trial_mean": sum(walls) / len(walls),
        "wall_s_per_trial_max": max(walls),
        "images_per_s_per_trial": sum(r["images_per_s"] for r in rows) / len(rows),
        "aggregate_images_per_s": concurrency * retain / max(walls),
        "gpu_peak_mem_gib_per_trial": max(r["gpu_peak_mem_gib"] for r in rows),
        "evaluations": rows[0]["evaluations"], "steps": rows[0]["steps"],
        "trials": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8], help="trials at once on the GPU")
    parser.add_argument("--small", action="store_true", help="tiny sizes, for checking the script on a CPU")
    parser.add_argument("--out", help="write the JSON results here too")
    args = parser.parse_args()
    sizes = {"forget": 1500, "retain": 8525, "test": 1539, "unseen": 1504}
    image_size = 128
    if args.small:
        sizes, image_size = {"forget": 128, "retain": 256, "test": 96, "unseen": 96}, 32
    threads = max(1, (os.cpu_count() or 2) // max(args.concurrency))
    conf = {"sizes": sizes, "image_size": image_size, "threads": threads}
    import torch

    info = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "sizes": sizes, "image_size": image_size, "results": []}
    print(f"{'trials':>6} {'wall/trial s':>13} {'img/s/trial':>12} {'aggregate img/s':>16} {'GPU GiB/trial':>14}")
    for n in args.concurrency:
        r = run(n, conf)
        info["results"].append(r)
        print(f"{n:>6} {r['wall_s_per_trial_mean']:>13.2f} {r['images_per_s_per_trial']:>12.0f} "
              f"{r['aggregate_images_per_s']:>16.0f} {r['gpu_peak_mem_gib_per_trial']:>14.2f}", flush=True)
    base = info["results"][0]["aggregate_images_per_s"]
    info["throughput_vs_1"] = {r["concurrency"]: r["aggregate_images_per_s"] / base for r in info["results"]}
    if args.out:
        Path(args.out).write_text(json.dumps(info, indent=2))
    print(json.dumps({k: v for k, v in info.items() if k != "results"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
