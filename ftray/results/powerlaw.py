"""The finetuning power law (Zhang et al., ICLR 2024): quality against model size and data, fitted over
a sweep's cells, with resampled fits for its intervals and the size a target loss needs."""

from __future__ import annotations

import math

import numpy as np

from ftray.results.stats import RESAMPLES, SEED


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
