"""Group-sequential boundaries: the Lan-DeMets spending function of O'Brien-Fleming type and the two-sided
boundaries it gives at planned looks (Lan and DeMets, 1983; Reboussin et al., 2000).

The error rate `alpha` is spent over the information fractions t_1 < ... < t_K = 1 (a look's replicates
over the last look's) as

    alpha(t) = 2 (2 - 2 Phi(z_{1 - alpha/4} / sqrt(t)))   (alpha / 2 a side),

and the boundary c_k of look k is the z value at which the chance that a standardised statistic under the
null first crosses +-c at look k equals alpha(t_k) - alpha(t_{k-1}). The statistic at the looks behaves as
Brownian motion observed at t_k (independent increments), so the chance is computed by the recursion of
Armitage, McPherson and Rowe (1969): the sub-density of B(t_k) on the continuation region, carried from
look to look by convolution with the increment's normal density (Simpson's rule on a fine grid), and each
c_k found by root finding. `tests/test_groupseq.py` checks the result against published boundaries.

With a t statistic (a look's standard deviation estimated from its n replicates) a look uses the
boundary's nominal level, 2 (1 - Phi(c_k)), as the level of its t test or interval (the usual practice
for small groups; its error rate is checked by simulation in `analysis.simulate`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

GRID = 1001  # points of the continuation region's grid (odd: Simpson's rule)


def obf_spending(t, alpha: float) -> np.ndarray:
    """The Lan-DeMets O'Brien-Fleming-type spending function of a two-sided test at level `alpha`: the error rate
    spent by information fraction t, alpha / 2 on each side, each side spent as 2 - 2 Phi(z_{1 - alpha/4} / sqrt(t))
    (the symmetric two-sided form of Reboussin et al.'s ld98 and R's ldbounds)."""
    from scipy.stats import norm

    t = np.asarray(t, dtype=float)
    side = 2 - 2 * norm.cdf(norm.ppf(1 - alpha / 4) / np.sqrt(np.maximum(t, 1e-300)))
    return np.where(t > 0, 2 * side, 0.0)


def _simpson(n: int) -> np.ndarray:
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return w / 3


def _gauss(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


@lru_cache(maxsize=256)
def _boundaries(fractions: tuple[float, ...], alpha: float) -> tuple[float, ...]:
    from scipy.optimize import brentq
    from scipy.special import ndtr
    from scipy.stats import norm

    spent = obf_spending(fractions, alpha)
    bounds: list[float] = []
    grid = weights = density = None  # the sub-density of B(t) at the last look, on its continuation region
    previous = 0.0
    for k, t in enumerate(fractions):
        target = float(spent[k] - (spent[k - 1] if k else 0.0))
        if k == 0:
            c = float(norm.isf(target / 2)) if target > 0 else math.inf
        else:
            dt = t - previous
            sd = math.sqrt(dt)

            def crossing(c, grid=grid, weights=weights, density=density, sd=sd, t=t):
                edge = c * math.sqrt(t)  # the boundary on B's scale
                outside = ndtr((grid - edge) / sd) + ndtr((-edge - grid) / sd)
                return float(np.sum(weights * density * outside)) - target

            if target <= 0:
                c = math.inf
            else:
                hi = 40.0
                c = brentq(crossing, 0.0, hi, xtol=1e-10) if crossing(0.0) > 0 > crossing(hi) else (
                    0.0 if crossing(0.0) <= 0 else hi)
        bounds.append(c)
        # carry the sub-density of B(t) on (-c sqrt(t), c sqrt(t)) to this look
        edge = min(c, 40.0) * math.sqrt(t)
        new_grid = np.linspace(-edge, edge, GRID)
        new_weights = _simpson(GRID) * (new_grid[1] - new_grid[0])
        if k == 0:
            new_density = norm.pdf(new_grid, scale=math.sqrt(t))
        else:
            new_density = _gauss((new_grid[:, None] - grid[None, :]) / sd) / sd @ (weights * density)
        grid, weights, density, previous = new_grid, new_weights, new_density, t
    return tuple(bounds)


def boundaries(sizes, alpha: float) -> np.ndarray:
    """Two-sided z boundaries c_1..c_K for looks at `sizes` replicates (information fractions sizes / last), the
    error rate `alpha` spent by the O'Brien-Fleming-type function."""
    sizes = [float(s) for s in sizes]
    if not sizes or any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] <= 0:
        raise ValueError(f"look sizes must be positive and increasing, got {sizes}")
    fractions = tuple(round(s / sizes[-1], 12) for s in sizes)
    return np.array(_boundaries(fractions, float(alpha)))


def nominal_levels(sizes, alpha: float) -> np.ndarray:
    """Each look's nominal two-sided level, 2 (1 - Phi(c_k)): the level its t interval is taken at."""
    from scipy.stats import norm

    return 2 * norm.sf(boundaries(sizes, alpha))


def crossing_probabilities(bounds, fractions) -> np.ndarray:
    """The chance, under the null, of first crossing +-c_k at look k (for checks: their sums are the spending
    function's values)."""
    from scipy.stats import norm

    out, grid, weights, density, previous = [], None, None, None, 0.0
    for k, (c, t) in enumerate(zip(bounds, fractions)):
        edge = c * math.sqrt(t)
        if k == 0:
            out.append(float(2 * norm.sf(c)))
        else:
            sd = math.sqrt(t - previous)
            inside = norm.cdf((edge - grid) / sd) - norm.cdf((-edge - grid) / sd)
            out.append(float(np.sum(weights * density * (1 - inside))))
        new_grid = np.linspace(-edge, edge, GRID)
        new_weights = _simpson(GRID) * (new_grid[1] - new_grid[0])
        if k == 0:
            new_density = norm.pdf(new_grid, scale=math.sqrt(t))
        else:
            new_density = (norm.pdf((new_grid[:, None] - grid[None, :]) / sd) / sd) @ (weights * density)
        grid, weights, density, previous = new_grid, new_weights, new_density, t
    return np.array(out)


@lru_cache(maxsize=512)
def _sign_bounds(counts: tuple[int, ...], planned: int, alpha: float) -> tuple[int, ...]:
    from scipy.stats import binom

    spent = obf_spending([min(1.0, n / planned) for n in counts], alpha)
    mass = np.array([1.0])  # P(S = s, not crossed yet), s = 0..n: S the positive signs so far
    done, crossed, out = 0, 0.0, []
    for k, n in enumerate(counts):
        step = binom.pmf(np.arange(n - done + 1), n - done, 0.5)
        mass = np.convolve(mass, step)
        bound = -1
        for b in range((n - 1) // 2, -1, -1):  # the widest rejection region whose chance stays within the budget
            tails = mass[: b + 1].sum() + mass[n - b:].sum()
            if crossed + tails <= spent[k] * (1 + 1e-12):
                bound = b
                break
        if bound >= 0:
            crossed += mass[: bound + 1].sum() + mass[n - bound:].sum()
            mass = mass.copy()
            mass[: bound + 1] = 0.0
            mass[n - bound:] = 0.0
        out.append(bound)
        done = n
    return tuple(out)


def sign_bounds(counts, planned: int, alpha: float) -> list[int]:
    """The exact group-sequential sign test: b_k per look (n_k differences at look k, increasing), rejecting a
    median of 0 at look k when the positive differences number at most b_k or at least n_k - b_k (-1: no
    rejection possible there). Each b_k is the widest whose exact chance of a first crossing under the null (a
    simple random walk, computed over every path) keeps the running total within the O'Brien-Fleming-type
    spending function at information fraction n_k / `planned`: the error rate holds for any distribution of the
    differences with median 0, whatever its shape."""
    counts = tuple(int(n) for n in counts)
    if any(b < a for a, b in zip(counts, counts[1:])) or (counts and counts[0] < 0):
        raise ValueError(f"counts must be non-negative and non-decreasing, got {counts}")
    return list(_sign_bounds(counts, int(planned), float(alpha)))
