"""Uncertainty for eval scores: bootstrap intervals, paired differences, power, honest digits, and the
finetuning power law. Pure functions over numpy arrays.

Every metric is a ratio of sums over rows, sum(num) / sum(den) (a mean when every den is 1; a micro
F1 when the den counts pairs), so a resample of rows is a resample of (num, den) pairs. Trials of a
sweep are scored on the same rows in the same order: one set of row resamples drawn for all of them
keeps every comparison paired (Miller 2024, "Adding Error Bars to Evals", arXiv 2411.00640).
"""

from __future__ import annotations

import math
import zlib
from statistics import NormalDist
from typing import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
# Row weights held at once (resamples x rows): bounds memory on large test splits.
_CHUNK = 4_000_000


def row_arrays(rows) -> tuple[np.ndarray, np.ndarray]:
    """(num, den) arrays from [[num, den], ...]."""
    a = np.asarray(rows, dtype=float)
    if a.size == 0:
        return np.zeros(0), np.zeros(0)
    a = a.reshape(-1, 2)
    return a[:, 0], a[:, 1]


def ratio(rows) -> float:
    """sum(num) / sum(den), 0.0 when the denominators sum to 0 (the metrics' own convention)."""
    num, den = row_arrays(rows)
    total = den.sum()
    return float(num.sum() / total) if total else 0.0


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a), where=b != 0)


def _row_counts(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    """b resamples of n rows drawn with replacement, as how often each row was drawn (b x n)."""
    idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(float)


def resample_ratios(row_sets: Sequence, n_boot: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(n_boot x T): each trial's ratio on each resample of rows.

    Trials with the same number of rows share their resamples (the rows pair up); those with another
    count get their own, independent ones. The resamples for n rows depend only on (seed, n), so a
    trial's interval is the same whichever other trials are resampled beside it.
    """
    out = np.zeros((n_boot, len(row_sets)))
    by_n: dict[int, list[int]] = {}
    arrays = [row_arrays(r) for r in row_sets]
    for j, (num, _) in enumerate(arrays):
        by_n.setdefault(len(num), []).append(j)
    for n, cols in by_n.items():
        if n == 0:
            continue
        num = np.stack([arrays[j][0] for j in cols], axis=1)
        den = np.stack([arrays[j][1] for j in cols], axis=1)
        rng = np.random.default_rng([seed, n])
        step = max(1, _CHUNK // n)
        for start in range(0, n_boot, step):
            w = _row_counts(rng, min(step, n_boot - start), n)
            out[start:start + len(w), cols] = _divide(w @ num, w @ den)
    return out


def seed_resampled_means(ratios: np.ndarray, groups: Sequence[Sequence[int]], seed: int = SEED) -> np.ndarray:
    """(n_boot x G): per replicate, each group's mean over its trials drawn with replacement.

    A group is one configuration run with several seeds; drawing its trials anew in each replicate
    puts the seed-to-seed spread into the interval (a two-level bootstrap: rows, then seeds). A
    group of one trial keeps its row-only replicates: one seed cannot show seed noise. With k seeds
    the draws' variance is (k - 1) / k of the seeds' own, so 2-4 seeds understate it somewhat.
    """
    out = np.empty((ratios.shape[0], len(groups)))
    for g, cols in enumerate(groups):
        cols = list(cols)
        k = len(cols)
        if k == 1:
            out[:, g] = ratios[:, cols[0]]
            continue
        rng = np.random.default_rng([seed, zlib.crc32(repr(cols).encode())])
        counts = rng.multinomial(k, np.full(k, 1.0 / k), size=ratios.shape[0])
        out[:, g] = (ratios[:, cols] * counts).sum(axis=1) / k
    return out


def percentile_interval(samples, level: float = LEVEL) -> tuple[float, float]:
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if not s.size:
        return (math.nan, math.nan)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(s, [tail, 1.0 - tail])
    return float(lo), float(hi)


def summarize(value: float, samples, level: float = LEVEL, n: int | None = None) -> dict:
    """{"value", "lo", "hi", "se", "n"}: the point estimate, its percentile interval and bootstrap SE."""
    lo, hi = percentile_interval(samples, level)
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    se = float(s.std(ddof=1)) if s.size > 1 else math.nan
    # None, not NaN: the report is JSON, and strict JSON has no NaN.
    return {"value": float(value), "lo": _finite(lo), "hi": _finite(hi), "se": _finite(se), "n": n}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def bootstrap_ci(rows, level: float = LEVEL, n_boot: int = RESAMPLES, seed: int = SEED) -> dict:
    """Percentile bootstrap interval of a ratio-of-sums metric over its rows."""
    return summarize(ratio(rows), resample_ratios([rows], n_boot, seed)[:, 0], level, n=len(row_arrays(rows)[0]))


def paired_diff_ci(rows_a, rows_b, level: float = LEVEL, n_boot: int = RESAMPLES, seed: int = SEED,
                   alpha: float = 0.05, power: float = 0.8) -> dict:
    """b minus a, two trials on the same rows: rows drawn jointly, so what the rows share cancels.

    Adds "sd_row" (spread of the per-row paired differences) and "rows_needed" to detect the observed
    difference (`rows_needed`).
    """
    n = len(row_arrays(rows_a)[0])
    if n != len(row_arrays(rows_b)[0]):
        raise ValueError(f"paired rows differ in number: {n} and {len(row_arrays(rows_b)[0])}")
    reps = resample_ratios([rows_a, rows_b], n_boot, seed)
    out = summarize(ratio(rows_b) - ratio(rows_a), reps[:, 1] - reps[:, 0], level, n=n)
    out["sd_row"] = paired_sd(rows_a, rows_b)
    out["rows_needed"] = rows_needed(out["sd_row"], out["value"], alpha, power)
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


# ---- digits -------------------------------------------------------------------------------------
def decimals(lo: float | None, hi: float | None, value: float | None = None) -> int:
    """Decimal places the interval supports: the half-width to one significant digit, two when that
    digit is 1 or 2 (rounding 0.014 to 0.01 would misstate it by a third)."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        v = abs(value) if value else 0.0
        return 3 if v == 0 or not math.isfinite(v) else min(6, max(0, 2 - math.floor(math.log10(v))))
    half = (hi - lo) / 2
    exp = math.floor(math.log10(half))
    lead = half / 10 ** exp
    return min(6, max(0, -exp + (1 if lead < 3 else 0)))


def _fmt(x: float, d: int, signed: bool) -> str:
    x = round(x, d) or 0.0  # no "-0.00"
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def format_ci(value: float, lo: float | None = None, hi: float | None = None, signed: bool = False) -> str:
    """0.412 with [0.352, 0.472] -> "0.41 [0.35, 0.47]"; with no interval, three significant digits."""
    if value is None or not math.isfinite(value):
        return "-"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{value:+.3g}" if signed else f"{value:.3g}"
    d = decimals(lo, hi, value)
    return f"{_fmt(value, d, signed)} [{_fmt(lo, d, signed)}, {_fmt(hi, d, signed)}]"


def format_count(n: float, significant: int | None = None) -> str:
    """A parameter or row count with its unit: one decimal before it (53.4K, 134.5M, 1.5B), or
    `significant` digits and never an exponent (130M); below 1,000 the number itself."""
    def num(x: float) -> str:
        return f"{float(f'{x:.{significant}g}'):g}" if significant else f"{x:.1f}"

    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return num(n / scale) + unit
    return num(n) if significant else f"{n:g}"


def format_interval(iv: dict | None, signed: bool = False, value: float | None = None) -> str:
    """`format_ci` of a `summarize` dict; `value` alone when there is no interval."""
    if not iv:
        return format_ci(value, signed=signed) if value is not None else "-"
    return format_ci(iv["value"], iv.get("lo"), iv.get("hi"), signed)


# ---- the finetuning power law -------------------------------------------------------------------
def fit_power_law(n_params, data, loss) -> dict | None:
    """Least squares of log L = log A + alpha log N + beta log D (Zhang et al., ICLR 2024, "When
    Scaling Meets LLM Finetuning": finetuning loss is multiplicative in model size and data).

    None when the cells cannot separate the two (fewer than 2 distinct sizes or data amounts, or a
    loss that is not positive).
    """
    n, d, y = (np.asarray(v, dtype=float) for v in (n_params, data, loss))
    if len(y) < 3 or np.any(y <= 0) or len(set(n)) < 2 or len(set(d)) < 2:
        return None
    x = np.column_stack([np.ones_like(y), np.log(n), np.log(d)])
    coef, _, rank, _ = np.linalg.lstsq(x, np.log(y), rcond=None)
    if rank < 3:
        return None
    resid = np.log(y) - x @ coef
    total = ((np.log(y) - np.log(y).mean()) ** 2).sum()
    return {"log_A": float(coef[0]), "alpha": float(coef[1]), "beta": float(coef[2]),
            "r2": float(1 - (resid ** 2).sum() / total) if total else 1.0,
            "rmse_log": float(math.sqrt((resid ** 2).mean()))}


def power_law_samples(n_params, data, loss, loss_reps: np.ndarray | None = None, n_boot: int = RESAMPLES,
                      seed: int = SEED) -> np.ndarray:
    """(n_boot x 3) samples of (log A, alpha, beta): cells drawn with replacement (the misfit between
    cells), each cell's loss taken from its own row/seed replicate when `loss_reps` (n_boot x cells)
    is given (the noise in each cell). Replicates that cannot be fitted are NaN.

    A replicate loss of 0 (a perfect score on a resample) is floored at half the smallest positive
    loss: the log form has no room for it, and dropping the cell would bias the fit.
    """
    n, d, y = (np.asarray(v, dtype=float) for v in (n_params, data, loss))
    floor = y[y > 0].min() / 2 if np.any(y > 0) else 1e-9
    rng = np.random.default_rng([seed, len(y)])
    pick = rng.integers(0, len(y), (n_boot, len(y)))
    ys = np.take_along_axis(loss_reps, pick, axis=1) if loss_reps is not None else y[pick]
    # All replicates at once through the normal equations: (X'X) b = X'y, X = [1, log N, log D].
    x = np.stack([np.ones(pick.shape), np.log(n)[pick], np.log(d)[pick]], axis=2)
    xtx = np.einsum("bci,bcj->bij", x, x)
    xty = np.einsum("bci,bc->bi", x, np.log(np.maximum(ys, floor)))
    out = np.full((n_boot, 3), np.nan)
    # A replicate whose cells miss a second size or data amount (or tie them together) cannot be fitted.
    ok = np.linalg.matrix_rank(x) == 3
    out[ok] = np.linalg.solve(xtx[ok], xty[ok][..., None])[..., 0]
    return out


def size_for_loss(log_a, alpha, beta, loss: float, data: float):
    """Parameters at which the fitted law reaches `loss` with `data`; inf where alpha >= 0 (the loss
    does not fall with size). Works on arrays of samples too."""
    log_a, alpha, beta = (np.asarray(v, dtype=float) for v in (log_a, alpha, beta))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_n = (math.log(loss) - log_a - beta * math.log(data)) / alpha
        return np.where(alpha < 0, np.exp(log_n), np.inf)
