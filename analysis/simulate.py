"""The verdicts' error rate by simulation: many studies with known true differences run through the study's own
decision (`analysis.sequential.decide`), counting the studies with any false claim.

    python -m analysis.simulate [--studies 2000] [--shape normal|skewed|outliers] [--select reported]

The verdicts test the median difference (`analysis.sequential`). A false claim: `better` or `worse` where the
true median difference is 0 or of the other sign, `equivalent` where it is at least the margin. Shapes of the
paired differences (spread `sd`, median 0 about the truth): `normal` and `outliers` (a normal where 10% of the
replicates have ten times the spread), each made of GLI's run (shared by every comparison of a replicate) less
the baseline's; `skewed`, each difference itself an exponential centred on its median (skewness 2). GLI picks
its setting among `candidates` of equal true quality: on `selection` replicates of its own (the study's design),
or, to show what the design protects against, on the reported replicates themselves at every look
(`select="reported"`).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from .sequential import decide_rows


def draws(rng: np.random.Generator, shape: str, size, sd: float) -> np.ndarray:
    """Noise of mean 0 and standard deviation `sd` in the given shape."""
    if shape == "normal":
        return rng.normal(0.0, sd, size)
    if shape == "skewed":  # an exponential less its median: skewed, median 0
        return (rng.exponential(1.0, size) - math.log(2)) * sd
    if shape == "outliers":
        wild = rng.random(size) < 0.1
        return rng.normal(0.0, 1.0, size) * np.where(wild, 10.0, 1.0) * sd / math.sqrt(0.9 + 0.1 * 100)
    raise ValueError(f"unknown shape {shape!r}")


def false_claims(truth: np.ndarray, verdicts, favour: int = 1, margin: float = 0.0) -> bool:
    """Whether any verdict contradicts the true difference it is about."""
    for delta, said in zip(truth, verdicts):
        gli_better = delta * favour > 0
        if said == "better" and not gli_better or said == "worse" and (delta * favour >= 0):
            return True
        if said == "equivalent" and abs(delta) >= margin:
            return True
    return False


def study_error(studies: int, truth, sizes=(5, 10, 15, 20), shape: str = "normal", sd: float = 0.03,
                margin: float = 0.01, candidates: int = 1, select: str = "selection", selection_replicates: int = 2,
                spend: bool = True, seed: int = 0, alpha: float = 0.05) -> float:
    """The share of `studies` simulated studies with any false claim. `truth`: each comparison's true median
    difference (GLI minus baseline, positive favours GLI). GLI's value on a replicate is shared by every comparison (one GLI
    run against every baseline), each of its `candidates` with its own noise. `spend=False` takes the full
    `alpha` at every look (what the design forbids)."""
    rng = np.random.default_rng(seed)
    truth = np.asarray(truth, dtype=float)
    m, most = len(truth), max(sizes)
    wrong = 0
    for _ in range(studies):
        if shape == "skewed":  # each difference skewed itself (GLI's share of it would make it symmetric)
            gli, base = np.zeros((candidates, most)), -draws(rng, shape, (m, most), sd)
        else:
            gli = draws(rng, shape, (candidates, most), sd / math.sqrt(2))
            base = draws(rng, shape, (m, most), sd / math.sqrt(2))
        if select == "selection":  # chosen on replicates of its own, never reported: the reported ones are untouched
            picked = int(np.argmax(draws(rng, shape, (candidates, selection_replicates), sd).mean(axis=1)))
        looks = []
        for size in sizes:
            if select == "reported":  # chosen on the very replicates it is reported on, again at each look
                picked = int(np.argmax(gli[:, :size].mean(axis=1)))
            looks.append([{"baseline": f"b{i}", "metric": "final_score", "favour": 1, "gli_setting": "",
                           "baseline_setting": "", "diff": truth[i] + gli[picked, :size] - base[i, :size]}
                          for i in range(m)])
        if spend:
            said = [r["verdict"] for r in decide_rows(looks, list(sizes), margin, alpha, reach=False)]
        else:  # every look at the full rate, as if it were the only one
            said = ["undecided"] * m
            for k, size in enumerate(sizes):
                at = decide_rows([looks[k]], [size], margin, alpha, reach=False)
                said = [s if s != "undecided" else r["verdict"] for s, r in zip(said, at)]
                if "undecided" not in said:
                    break
        wrong += false_claims(truth, said, 1, margin)
    return wrong / studies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--comparisons", type=int, default=12)
    parser.add_argument("--shape", choices=["normal", "skewed", "outliers"], default="normal")
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--select", choices=["selection", "reported"], default="selection")
    parser.add_argument("--margin", type=float, default=0.01)
    parser.add_argument("--sd", type=float, default=0.03)
    args = parser.parse_args()
    rate = study_error(args.studies, [0.0] * args.comparisons, shape=args.shape, sd=args.sd, margin=args.margin,
                       candidates=args.candidates, select=args.select)
    se = math.sqrt(rate * (1 - rate) / args.studies)
    print(f"{args.shape}, {args.comparisons} null comparisons, {args.candidates} candidate(s) chosen on "
          f"{args.select} replicates: a false claim in {rate:.4f} (+-{se:.4f}) of {args.studies} studies")


if __name__ == "__main__":
    main()
