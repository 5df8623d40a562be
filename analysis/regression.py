"""Eq. 3 of the paper for every latent dimension at once, and Stoianov & Zorzi's unit criteria.

For each dimension i: z_i = b0 + beta_N * log N + beta_A * log A + e, with z_i, log N and log A
standardised, fitted by ordinary least squares with an intercept (what statsmodels' OLS gives on
the same columns with a constant). All dimensions share the design matrix, so the fit reduces to
two passes over the latents and 2x2 algebra. Standard errors are the classical OLS ones (n - 3 degrees of
freedom). Confidence intervals come from a row bootstrap: each resample is a vector of counts, so a
chunk of resamples is a few matrix products instead of many copies of the data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common import streams

NUMEROSITY, AREA, NEITHER = "numerosity", "area", ""


MAX_PREDICTOR_R = 0.99  # beyond it the betas' standard errors are over 7x an uncorrelated set's: no separation


@dataclass
class Predictors:
    """The standardised log N and log A of the images used in the fit."""

    used: np.ndarray  # boolean mask over the set's images
    x: np.ndarray  # (m, 2): standardised log N, standardised log A
    transform: str  # "log" (N = 0 images left out) or "log1p"
    excluded_zero: int  # images left out because N = 0

    @property
    def correlation(self) -> float:
        """Pearson's r of the two predictors over the fitted images (both are standardised)."""
        return float(np.mean(self.x[:, 0] * self.x[:, 1]))


def standardise(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    std = values.std(axis=0)
    # equal values: rounding leaves their std at about 1e-16, not 0, and dividing by it would blow them up
    return (values - values.mean(axis=0)) / np.where(np.ptp(values, axis=0) > 0, std, 1.0)


def make_predictors(count: np.ndarray, area: np.ndarray, log1p: bool = False) -> Predictors:
    """log N and log A are undefined at N = 0 (A = 0): leave those images out, or use log(1 + x)."""
    count = np.asarray(count, dtype=np.float64)
    area = np.asarray(area, dtype=np.float64)
    if log1p:
        used = np.isfinite(area)
        raw = np.stack([np.log1p(count[used]), np.log1p(area[used])], axis=1)
        excluded = 0
    else:
        used = (count > 0) & (area > 0)
        raw = np.stack([np.log(count[used]), np.log(area[used])], axis=1)
        excluded = int(((count == 0) | (area <= 0)).sum())
    if used.sum() < 4:
        raise ValueError("fewer than 4 images with N >= 1: nothing to fit")
    if np.any(np.ptp(raw, axis=0) == 0):
        raise ValueError("log N or log A does not vary over the images: the set cannot separate number from area")
    predictors = Predictors(used, standardise(raw), "log1p" if log1p else "log", excluded)
    if abs(predictors.correlation) > MAX_PREDICTOR_R:
        raise ValueError(f"log N and log A are almost one predictor over the images (r = "
                         f"{predictors.correlation:+.3f}): Eq. 3 cannot tell number from area in this set; analyse "
                         "one whose area varies apart from N (synthgen build, or synthgen dots --control total-area)")
    return predictors


@dataclass
class Fit:
    """Per-dimension results of Eq. 3 (arrays over the fitted dimensions)."""

    r2: np.ndarray
    beta_n: np.ndarray
    beta_a: np.ndarray
    se_n: np.ndarray
    se_a: np.ndarray
    intercept: np.ndarray
    n: int


def fit_eq3(z: np.ndarray, x: np.ndarray) -> Fit:
    """OLS of every standardised column of z (m, d) on [1, x] with x (m, 2), from sufficient statistics.

    Two passes over z, whatever d: one product [1, x - mean(x)]' z (column sums and cross products)
    and the column sums of squares; the rest is 2x2 algebra. With y = (z - mean) / sd and centred x,
    the slopes are Sxx^-1 x_c' y, the intercept is -slopes . mean(x), TSS = m, RSS = m - slopes . x_c' y.
    """
    z = np.asarray(z, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    m = z.shape[0]
    centre = x.mean(axis=0)
    xc = x - centre
    cross = np.column_stack([np.ones(m), xc]).T @ z  # (3, d): sum z, sum xc1 z, sum xc2 z
    mean = cross[0] / m
    variance = np.einsum("ij,ij->j", z, z) / m - mean**2
    unstable = variance < 1e-6 * mean**2  # large offsets: recompute those columns without cancellation
    if unstable.any():
        variance[unstable] = z[:, unstable].var(axis=0)
    sd = np.sqrt(np.maximum(variance, 0))
    flat = sd == 0
    sxx = xc.T @ xc
    sxy = cross[1:] / np.where(flat, 1.0, sd)  # x_c' y
    slopes = np.linalg.solve(sxx, sxy)
    tss = np.where(flat, 0.0, float(m))
    explained = np.einsum("kj,kj->j", slopes, sxy)
    rss = np.maximum(tss - explained, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(tss > 0, explained / tss, 0.0)
    se = np.sqrt(np.diag(np.linalg.inv(sxx))[:, None] * (rss / (m - 3))[None, :])
    return Fit(r2, slopes[0], slopes[1], se[0], se[1], -(centre @ slopes), m)


def bootstrap_betas(z: np.ndarray, x: np.ndarray, n_boot: int, seed: int, chunk: int = 50) -> np.ndarray:
    """Standardised beta_N and beta_A of `n_boot` row resamples, shape (n_boot, 2, d).

    Each resample is re-standardised (the betas are standardised coefficients of that resample).
    With w the resample's row counts: slopes = Sxx^-1 Sxy from weighted sums, then scaled by
    sd(x) / sd(y)."""
    rng = streams.rng(seed, streams.BETA_BOOTSTRAP)
    z = np.asarray(z, dtype=np.float64)
    m, d = z.shape
    z_square = z * z
    x1, x2 = x[:, 0], x[:, 1]
    products = np.column_stack([x1, x2, x1 * x1, x1 * x2, x2 * x2])  # (m, 5)
    out = np.empty((n_boot, 2, d))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        weights = np.stack([np.bincount(rng.integers(0, m, m), minlength=m) for _ in range(b)]).astype(np.float64)
        sums = weights @ products / m  # (b, 5): E[x1], E[x2], E[x1^2], E[x1 x2], E[x2^2]
        mean_y = weights @ z / m
        mean_yy = weights @ z_square / m
        mean_x1y = (weights * x1) @ z / m
        mean_x2y = (weights * x2) @ z / m
        s11 = sums[:, 2] - sums[:, 0] ** 2
        s12 = sums[:, 3] - sums[:, 0] * sums[:, 1]
        s22 = sums[:, 4] - sums[:, 1] ** 2
        s1y = mean_x1y - sums[:, [0]] * mean_y
        s2y = mean_x2y - sums[:, [1]] * mean_y
        determinant = (s11 * s22 - s12 * s12)[:, None]
        slope1 = (s22[:, None] * s1y - s12[:, None] * s2y) / determinant
        slope2 = (s11[:, None] * s2y - s12[:, None] * s1y) / determinant
        sd_y = np.sqrt(np.maximum(mean_yy - mean_y**2, 1e-300))
        out[start:start + b, 0] = slope1 * np.sqrt(s11)[:, None] / sd_y
        out[start:start + b, 1] = slope2 * np.sqrt(s22)[:, None] / sd_y
    return out


def unit_labels(r2: np.ndarray, beta_n: np.ndarray, beta_a: np.ndarray, r2_min: float,
                beta_max: float = 0.1) -> np.ndarray:
    """Stoianov & Zorzi: a numerosity unit has R^2 >= r2_min and |beta_A| < beta_max; an area unit
    has R^2 >= r2_min and |beta_N| < beta_max. Each also has at least beta_max of its own property: a
    dimension under beta_max on both codes neither, yet a low --r2-min (below 2 beta_max^2 (1 + |r|): never
    at the paper's or their settings) or a large --beta-max would let it meet both criteria."""
    labels = np.full(np.shape(r2), NEITHER, dtype=object)
    fits_well = r2 >= r2_min
    by_n, by_a = np.abs(beta_n) >= beta_max, np.abs(beta_a) >= beta_max
    labels[fits_well & by_n & ~by_a] = NUMEROSITY
    labels[fits_well & by_a & ~by_n] = AREA
    return labels


def classify(fit: Fit, r2_min: float, beta_max: float = 0.1) -> np.ndarray:
    """The unit label of every fitted dimension (see unit_labels)."""
    return unit_labels(fit.r2, fit.beta_n, fit.beta_a, r2_min, beta_max)
