"""Is a difference real? Means with t-intervals over seeds, seed-paired differences, and the main
effects and two-way interactions of a two-level factorial design, each with its 95% interval.

The numbers come from scipy's t distribution; the report (issue: seeds and confidence intervals)
builds its tables from these functions. A quantity measured once has no interval (None): one seed
cannot tell noise from effect.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    mean: float
    sd: float | None  # sample standard deviation (n - 1); None when n = 1
    n: int
    low: float | None  # the 95% t-interval; None when n = 1
    high: float | None

    @property
    def excludes_zero(self) -> bool:
        """The interval lies wholly on one side of zero (a difference the seeds support). Floating-point
        residue of an exactly zero contrast (|bound| < 1e-12) does not count as a side."""
        return self.low is not None and (self.low > 1e-12 or self.high < -1e-12)

    def as_dict(self) -> dict:
        return {"mean": self.mean, "sd": self.sd, "n": self.n, "ci95": [self.low, self.high],
                "excludes_zero": self.excludes_zero}


def estimate(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean, standard deviation and the t-interval of the mean over independent values (seeds)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, None, 1, None, None)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Estimate(mean, sd, n, mean - half, mean + half)


def paired_difference(runs: Mapping[int, float], reference: Mapping[int, float], level: float = LEVEL) -> Estimate:
    """`runs` - `reference`, paired by seed (only seeds both have): the seed's shared data order and
    initial weights cancel out of each difference."""
    seeds = sorted(set(runs) & set(reference))
    if not seeds:
        raise ValueError("no seed in common: nothing to pair")
    return estimate([runs[s] - reference[s] for s in seeds], level)


def factorial_effects(results: Mapping[tuple[str, ...], Mapping[int, float]], factors: Sequence[str],
                      levels: Mapping[str, tuple[str, str]], level: float = LEVEL) -> dict[str, Estimate]:
    """Main effects and two-way interactions of a full two-level factorial design, with t-intervals
    over seeds.

    `results` maps each cell (one level per factor, in `factors` order) to {seed: value}; `levels`
    gives each factor's (low, high). Within one seed, the main effect of a factor is the mean over the
    cells at its high level minus the mean at its low level; an interaction A x B is half the
    difference between A's effect at B high and at B low (the usual +-1 contrast over 2^(k-1)). The
    interval is over the seeds that every cell has."""
    cells = list(itertools.product(*(levels[f] for f in factors)))
    missing = [cell for cell in cells if cell not in results]
    if missing:
        raise ValueError(f"the design lacks cells {missing}")
    seeds = sorted(set.intersection(*(set(results[cell]) for cell in cells)))
    if not seeds:
        raise ValueError("no seed is in every cell")
    sign = {f: {levels[f][0]: -1.0, levels[f][1]: 1.0} for f in factors}
    terms = [(f,) for f in factors] + list(itertools.combinations(factors, 2))
    half = len(cells) / 2
    out = {}
    for term in terms:
        per_seed = []
        for seed in seeds:
            contrast = sum(math.prod(sign[f][cell[factors.index(f)]] for f in term) * results[cell][seed]
                           for cell in cells)
            per_seed.append(contrast / half)
        out[" x ".join(term)] = estimate(per_seed, level)
    return out
