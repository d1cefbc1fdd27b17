"""Uncertainty for eval scores: intervals over rows, paired differences and power. Pure functions over
numpy arrays. How many digits a score with its interval deserves is ftray/results/digits.py; the finetuning
power law, ftray/results/powerlaw.py.

Every metric is a ratio of sums over rows, sum(num) / sum(den) (a mean when every den is 1; a micro
F1 when the den counts pairs), so a draw of row weights is a draw of the metric. Trials of a sweep are
scored on the same rows in the same order: one set of row weights drawn for all of them keeps every
comparison paired (Miller 2024, "Adding Error Bars to Evals", arXiv 2411.00640).

Why not a plain percentile bootstrap: it is too narrow below a few hundred rows and collapses to [0, 0]
on all-zero rows (Bowyer et al. 2025, arXiv 2503.01747), and 16-32 rows with rates near 0 or 1 are
common here. The draws are Gaffke's bound for the mean of a bounded variable instead (Gaffke 2005;
Learned-Miller & Thomas 2019, arXiv 1905.06208): each row gets an Exp(1) weight (a Bayesian bootstrap,
Rubin 1981) and one more pseudo-row, with its own Exp(1) weight, sits at the end of the score range
that is least favourable to the bound: at 0 for the lower end, at 1 for the upper end. For 0/1 rows
(a proportion) this is exactly Clopper-Pearson's interval (0 hits of n: [0, 1 - 0.025^(1/n)], about
3.7/n), which holds its level at any n and rate; for other scores in a known range (ROUGE-L) Learned-
Miller & Thomas find it at or above its level wherever they simulated, at small n too, and conjecture
that it always is, where t and bootstrap intervals fall short. A ratio metric's pseudo-row has the
trial's mean den. Because the pseudo-row shares its weight across trials like a
real row, a statistic linear in the trials' scores (a paired difference, a slope, a seed mean) takes
each trial's pseudo-row at the end that moves the statistic the unfavourable way (`Draws`): the
difference b - a of two means is then Gaffke's bound on the per-row differences (range [-1, 1]): it needs
no separate method for paired proportions and still covers where discordant rows are few.
"""

from __future__ import annotations

import enum
import math
import zlib
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
METHOD = "Gaffke's bound, Clopper-Pearson's for 0/1 rows"  # what the report names its intervals by
# Row weights held at once (draws x rows): bounds memory on large test splits.
_CHUNK = 4_000_000


class RowKind(str, enum.Enum):
    """What a trial's per-row scores are, read from the rows themselves."""
    PROPORTION = "proportion"  # every row a hit or a miss (exact match, accuracy): num is 0 or den, one den
    RATIO = "ratio"  # rows that weigh differently (micro slot F1: den counts pairs)
    SCORE = "score"  # one den for every row, scores in between (ROUGE-L)


def row_arrays(rows) -> tuple[np.ndarray, np.ndarray]:
    """(num, den) arrays from [[num, den], ...]."""
    a = np.asarray(rows, dtype=float)
    if a.size == 0:
        return np.zeros(0), np.zeros(0)
    a = a.reshape(-1, 2)
    return a[:, 0], a[:, 1]


def row_kind(rows) -> RowKind:
    """A proportion when every row scores 0 or its whole den and the dens are equal, a ratio when the
    dens differ, else a score. Rows with den 0 (nothing to score, like no predicted pairs) are left out."""
    num, den = row_arrays(rows)
    num, den = num[den != 0], den[den != 0]
    if np.any(den != den[:1]):
        return RowKind.RATIO
    return RowKind.PROPORTION if np.all((num == 0) | (num == den)) else RowKind.SCORE


def score_range(rows) -> tuple[float, float]:
    """The ends the pseudo-row sits on: [0, 1] when every row's score num / den lies in it (every metric
    of ftray's tasks), else the scores' own extremes (the bound then assumes no row goes past them)."""
    num, den = row_arrays(rows)
    score = num[den != 0] / den[den != 0]
    if not score.size or (score.min() >= 0 and score.max() <= 1):
        return 0.0, 1.0
    return float(score.min()), float(score.max())


def ratio(rows) -> float:
    """sum(num) / sum(den), 0.0 when the denominators sum to 0 (the metrics' own convention)."""
    num, den = row_arrays(rows)
    total = den.sum()
    return float(num.sum() / total) if total else 0.0


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a), where=b != 0)


@dataclass(frozen=True)
class Draws:
    """Draws of a statistic that is linear in the trials' scores, in two versions sharing every weight:
    `low` with each trial's pseudo-row at the end that lowers the statistic, `high` at the end that
    raises it. The interval is low's lower quantile to high's upper one. Sums, differences and scalar
    multiples keep the pairing: a negative factor swaps the versions. `centre` (the pseudo-row at the
    middle of the range) is for spreads: standard errors, power, seed variance."""
    low: np.ndarray
    high: np.ndarray
    __array_ufunc__ = None  # numpy scalars hand arithmetic to the methods below

    @property
    def centre(self) -> np.ndarray:
        return (self.low + self.high) / 2

    def __add__(self, other) -> "Draws":
        if isinstance(other, Draws):
            return Draws(self.low + other.low, self.high + other.high)
        return Draws(self.low + other, self.high + other)

    __radd__ = __add__

    def __neg__(self) -> "Draws":
        return Draws(-self.high, -self.low)

    def __sub__(self, other) -> "Draws":
        return self + (-other)

    def __rsub__(self, other) -> "Draws":
        return -self + other

    def __mul__(self, k) -> "Draws":
        return Draws(k * self.low, k * self.high) if k >= 0 else Draws(k * self.high, k * self.low)

    __rmul__ = __mul__

    def __truediv__(self, k) -> "Draws":
        return self * (1.0 / k)

    def column(self, j: int) -> "Draws":
        return Draws(self.low[:, j], self.high[:, j])

    def columns(self, cols: Sequence[int]) -> "Draws":
        return Draws(self.low[:, cols], self.high[:, cols])


def resample_ratios(row_sets: Sequence, n_boot: int = RESAMPLES, seed: int = SEED) -> Draws:
    """(n_boot x T) draws of each trial's ratio (see the module's docstring).

    Trials with the same number of rows share their weights, the pseudo-row's too (the rows pair up);
    those with another count get their own, independent ones. The weights for n rows depend only on
    (seed, n), so a trial's interval is the same whichever other trials are drawn beside it.
    """
    low, high = np.zeros((n_boot, len(row_sets))), np.zeros((n_boot, len(row_sets)))
    by_n: dict[int, list[int]] = {}
    arrays = [row_arrays(r) for r in row_sets]
    for j, (num, _) in enumerate(arrays):
        by_n.setdefault(len(num), []).append(j)
    for n, cols in by_n.items():
        if n == 0:
            continue
        num = np.stack([arrays[j][0] for j in cols], axis=1)
        den = np.stack([arrays[j][1] for j in cols], axis=1)
        # The pseudo-row: each trial's mean den (1 where it has none), at the ends of its score range.
        size = np.where(den.mean(axis=0) > 0, den.mean(axis=0), 1.0)
        ends = np.array([score_range(np.column_stack(arrays[j])) for j in cols]).T * size
        rng = np.random.default_rng([seed, n])
        step = max(1, _CHUNK // (n + 1))
        for start in range(0, n_boot, step):
            w = rng.standard_exponential((min(step, n_boot - start), n + 1))
            rows, pseudo = w[:, :n], w[:, n:]
            num_w, den_w = rows @ num, rows @ den + pseudo * size
            span = slice(start, start + len(w))
            low[span, cols] = _divide(num_w + pseudo * ends[0], den_w)
            high[span, cols] = _divide(num_w + pseudo * ends[1], den_w)
    return Draws(low, high)


def seed_resampled_means(draws: Draws, groups: Sequence[Sequence[int]], seed: int = SEED,
                         keys: Sequence[str] | None = None) -> Draws:
    """(n_boot x G): per draw, each group's mean over its trials drawn with replacement.

    A group is one configuration run with several seeds; drawing its trials anew in each replicate
    puts the seed-to-seed spread into the interval (a two-level bootstrap: rows, then seeds). A
    group of one trial keeps its row-only draws: one seed cannot show seed noise. With k seeds
    the draws' variance is (k - 1) / k of the seeds' own, so 2-4 seeds understate it somewhat.
    `keys`, one a group, seed each group's draw of its trials: give what names the group (its
    configuration and seeds), so the same scores give the same interval whatever the trials' ids or
    their order; without them, the columns seed it.
    """
    b = draws.low.shape[0]
    low, high = np.empty((b, len(groups))), np.empty((b, len(groups)))
    for g, cols in enumerate(groups):
        cols = list(cols)
        k = len(cols)
        if k == 1:
            low[:, g], high[:, g] = draws.low[:, cols[0]], draws.high[:, cols[0]]
            continue
        key = keys[g] if keys is not None else repr(cols)
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        counts = rng.multinomial(k, np.full(k, 1.0 / k), size=b)
        low[:, g] = (draws.low[:, cols] * counts).sum(axis=1) / k
        high[:, g] = (draws.high[:, cols] * counts).sum(axis=1) / k
    return Draws(low, high)


def percentile_interval(samples, level: float = LEVEL) -> tuple[float, float]:
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if not s.size:
        return (math.nan, math.nan)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(s, [tail, 1.0 - tail])
    return float(lo), float(hi)


def bounds(draws: Draws, values, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The equal-tailed interval of each column of `draws` (low's lower quantile, high's upper one),
    stretched to hold its point estimate in `values`, which Monte Carlo noise in a tail could otherwise
    leave just outside it. Vectorised over columns; `summarize` takes one."""
    tail = (1.0 - level) / 2.0
    values = np.asarray(values, dtype=float)
    lo = np.quantile(draws.low, tail, axis=0)
    hi = np.quantile(draws.high, 1.0 - tail, axis=0)
    return np.fmin(lo, values), np.fmax(hi, values)


def interval_se(draws: Draws, level: float = LEVEL) -> float:
    """The standard error the interval implies: its width over 2 z. The power calculation plans from
    this, so the rows it asks for are the rows that would narrow this interval enough, small-n width
    and all (a spread of the draws alone would understate it where the pseudo-row weighs most)."""
    lo, hi = bounds(draws, np.nan, level)
    return float((hi - lo) / (2 * NormalDist().inv_cdf(0.5 + level / 2)))


def summarize(value: float, samples: "Draws | np.ndarray", level: float = LEVEL, n: int | None = None) -> dict:
    """{"value", "lo", "hi", "se", "n"}: the point estimate, its equal-tailed interval and standard error:
    from `Draws` their `bounds` and `interval_se`; from plain samples (the power law's) their percentile
    interval and SD."""
    if isinstance(samples, Draws):
        lo, hi = (float(x) for x in bounds(samples, value, level))
        se = interval_se(samples, level)
    else:
        lo, hi = percentile_interval(samples, level)
        s = np.asarray(samples, dtype=float)
        s = s[np.isfinite(s)]
        se = float(s.std(ddof=1)) if s.size > 1 else math.nan
    # None, not NaN: the report is JSON, and strict JSON has no NaN.
    return {"value": float(value), "lo": _finite(lo), "hi": _finite(hi), "se": _finite(se), "n": n}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def bootstrap_ci(rows, level: float = LEVEL, n_boot: int = RESAMPLES, seed: int = SEED) -> dict:
    """One trial's interval over its rows, as the report gives it (Gaffke's bound; Clopper-Pearson's
    for 0/1 rows), with "kind": what the rows are (`row_kind`)."""
    out = summarize(ratio(rows), resample_ratios([rows], n_boot, seed).column(0), level, n=len(row_arrays(rows)[0]))
    return {**out, "kind": row_kind(rows).value}


def paired_diff_ci(rows_a, rows_b, level: float = LEVEL, n_boot: int = RESAMPLES, seed: int = SEED,
                   alpha: float = 0.05, power: float = 0.8) -> dict:
    """b minus a, two trials on the same rows: the weights are shared, so what the rows share cancels.

    Adds "sd_row" (spread of the per-row paired differences) and "rows_needed" to detect the observed
    difference, from the interval's own standard error as the report's verdicts take it.
    """
    n = len(row_arrays(rows_a)[0])
    if n != len(row_arrays(rows_b)[0]):
        raise ValueError(f"paired rows differ in number: {n} and {len(row_arrays(rows_b)[0])}")
    draws = resample_ratios([rows_a, rows_b], n_boot, seed)
    out = summarize(ratio(rows_b) - ratio(rows_a), draws.column(1) - draws.column(0), level, n=n)
    out["sd_row"] = paired_sd(rows_a, rows_b)
    out["rows_needed"] = rows_needed_from_se(out["se"], n, out["value"], alpha, power)
    return out


# ---- power --------------------------------------------------------------------------------------
def influence(rows) -> np.ndarray:
    """Each row's linearised contribution to a ratio of sums, (num - R den) / mean(den).

    The ratio's variance is about var(influence) / n (the delta method); for a plain mean this is
    the row's score minus the mean.
    """
    num, den = row_arrays(rows)
    if not len(num) or not den.mean():
        return np.zeros(len(num))
    return (num - ratio(rows) * den) / den.mean()


def paired_sd(rows_a, rows_b) -> float:
    """Standard deviation of the per-row differences of the two trials' linearised scores."""
    d = influence(rows_b) - influence(rows_a)
    return float(d.std(ddof=1)) if len(d) > 1 else math.nan


def rows_needed(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Rows to detect a paired difference `delta` with a two-sided test at `alpha` with `power`:
    n = ((z_{1-alpha/2} + z_power) * sd / delta)^2 (Miller 2024's sample-size formula for paired
    differences with one answer per row). None when there is no difference to detect."""
    if not delta or sd is None or not math.isfinite(delta) or not math.isfinite(sd):
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return max(1, math.ceil((z * sd / delta) ** 2))


def rows_needed_from_se(se: float, n: int, delta: float, alpha: float = 0.05, power: float = 0.8,
                       floor_se: float = 0.0) -> int | None:
    """`rows_needed` for a statistic whose standard error `se` on n rows shrinks as 1 / sqrt(rows).

    `floor_se`: a part of the error that more rows do not shrink (seed noise). Rows are enough when
    the row part fits under what the test allows, (delta / z)^2 - floor_se^2; None when seed noise
    alone is too large for any number of rows (or there is no difference to detect).
    """
    if not n or se is None or not math.isfinite(se) or not delta or not math.isfinite(delta):
        return None
    if not floor_se:
        return rows_needed(se * math.sqrt(n), delta, alpha, power)
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    budget = (delta / z) ** 2 - floor_se ** 2
    return max(1, math.ceil(n * se ** 2 / budget)) if budget > 0 else None
