"""`trainables.audit.forget_quality` against the NeurIPS 2023 unlearning challenge's published code, on the CPU.

The published `metric.py` (google-deepmind/unlearning_evaluation) is read from the path
given and run as it is, except that its `.cuda()` calls are dropped (this runs on the
CPU) and its `assert thr_eps` (which raises on any array longer than one) checks the
length instead. Both compute the forgetting quality of the same random scores; the
published one on a subset of the examples (its time scales with the number of
examples), scaled to the whole.

    python bench/audit_metric.py --published /path/to/unlearning_evaluation/metric.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.audit import forget_quality  # noqa: E402


def load_published(path: str) -> types.ModuleType:
    source = Path(path).read_text()
    source = source.replace(".cuda()", "").replace("assert thr_eps,", "assert len(thr_eps),")
    module = types.ModuleType("published_metric")
    exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102  (the challenge's code, read as given)
    return module


def scores(models: int, examples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logit-scaled-confidence-like scores: per example a retrained mean, the unlearned shifted by varying amounts."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(2.0, 2.0, examples)
    retrained = centre + rng.normal(0, 1.0, (models, examples))
    unlearned = centre + rng.normal(rng.uniform(-1, 1, examples), rng.uniform(0.5, 1.5, examples), (models, examples))
    return unlearned, retrained


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--published", required=True, help="the challenge's metric.py")
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--examples", type=int, default=1500)
    parser.add_argument("--subset", type=int, default=40, help="examples the published code is timed on")
    args = parser.parse_args()
    published = load_published(args.published)
    unlearned, retrained = scores(args.models, args.examples, seed=0)
    start = time.perf_counter()
    ours = forget_quality(unlearned, retrained)
    ours_s = time.perf_counter() - start
    sub_u, sub_r = unlearned[:, : args.subset], retrained[:, : args.subset]
    start = time.perf_counter()
    theirs = published.compute_forget_score_from_confs(sub_u, sub_r)
    theirs_s = (time.perf_counter() - start) * args.examples / args.subset
    ours_sub = forget_quality(sub_u, sub_r)["forget_quality"]
    eps_theirs = published._get_epsilons(*_split(sub_u, sub_r), delta=published.DELTA)
    out = {
        "models": args.models, "examples": args.examples, "subset": args.subset,
        "forget_quality": ours["forget_quality"], "subset_forget_quality": ours_sub,
        "subset_forget_quality_published": theirs, "difference": abs(ours_sub - theirs),
        "max_epsilon_difference": float(np.max(np.abs(forget_quality(sub_u, sub_r)["epsilons"] - eps_theirs))),
        "ours_s": ours_s, "published_s_scaled": theirs_s, "speedup": theirs_s / ours_s,
    }
    print(json.dumps(out))
    return 0


def _split(unlearned: np.ndarray, retrained: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The published code's positive / negative assignment (the larger median is positive)."""
    positive = np.median(retrained, axis=0) > np.median(unlearned, axis=0)
    return np.where(positive, retrained, unlearned), np.where(positive, unlearned, retrained)


if __name__ == "__main__":
    sys.exit(main())
