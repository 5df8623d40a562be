"""Numerosity comparison on the latent code, as Stoianov & Zorzi (2012) tested their network's number sense:
is this image more numerous than a reference? And the Weber fraction of the answers.

For each reference numerosity r, the images with N from r / 2 to 2 r (ratios symmetric on the log scale, as in
studies of people), N != r, are judged "more than r" or not by a linear readout of the active latents: ridge
regression onto +1 / -1 (the least-squares solution that S&Z's delta rule converges to) on as many training
images of each side, the penalty chosen by leave-one-out on the training fold, the answer the sign of the
out-of-fold prediction. The share of "more" answers at each N is the psychometric curve. Its Weber fraction w
is the one parameter of the scalar-variability model of Piazza et al. (2004), which S&Z fitted as is done for
people:

    P(more | N) = Phi((N - r) / (w * sqrt(N^2 + r^2)))

fitted by maximum likelihood: a probit regression of the answers on x = (N - r) / sqrt(N^2 + r^2) without an
intercept, whose slope is 1 / w. Each reference gets its fit, and all of them one together. A smaller w is
finer discrimination: S&Z's network reached 0.15, human adults lie around 0.1-0.25. The cumulative area of a
controlled set varies independently of N, so a readout of area alone answers at chance.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_ndtr, ndtr

from analysis.controls import fold_assignment, ridge_fit_predict
from common import streams

# The compared numerosities lie within this ratio of the reference on either side. A log-like code puts a linear
# readout's boundary midway between the two sides' mean codes: with every N from 1 to 32 against 16, the side
# below spans four times the log range of the side above, and the boundary fell near 12, not 16.
RATIO = 2
MIN_EACH_SIDE = 2  # distinct numerosities needed below and above a reference for a curve that has a slope
Z95 = 1.959963984540054


def compared(count: np.ndarray, reference: int) -> np.ndarray:
    """Which images are compared with `reference`: N from r / RATIO to RATIO * r, N >= 1, N != r."""
    return (count >= max(1, reference / RATIO)) & (count <= RATIO * reference) & (count != reference)


def reference_problem(reference: int, numerosities: np.ndarray) -> str | None:
    """Why `reference` cannot be compared against on a set of these numerosities (N >= 1); None if it can."""
    within = numerosities[compared(numerosities, reference)]
    below, above = int(np.sum(within < reference)), int(np.sum(within > reference))
    if below >= MIN_EACH_SIDE and above >= MIN_EACH_SIDE:
        return None
    return (f"reference {reference} needs at least {MIN_EACH_SIDE} numerosities on each side within a ratio of "
            f"{RATIO} (N from {reference / RATIO:g} to {RATIO * reference}), and the set's {numerosities.min()}-"
            f"{numerosities.max()} have {below} below and {above} above")


@dataclass
class WeberFit:
    """The scalar-variability model fitted to answers: the slope 1 / w, its standard error, and w."""

    slope: float  # 1 / w
    slope_se: float  # from the expected information, as a GLM gives it
    images: int
    errors: int  # answers against the truth

    @property
    def weber_fraction(self) -> float | None:
        """w; None where the answers do not grow with N (slope <= 0) or hold no error to measure w by."""
        return 1 / self.slope if self.errors and self.slope > 0 else None

    @property
    def ci95(self) -> tuple[float | None, float | None]:
        """w's 95% interval from the slope's Wald interval (w = 1 / slope); None for an end beyond the data."""
        if self.weber_fraction is None:
            return None, None
        low, high = self.slope - Z95 * self.slope_se, self.slope + Z95 * self.slope_se
        return 1 / high, (1 / low if low > 0 else None)

    def summary(self) -> dict:
        return {"weber_fraction": self.weber_fraction, "ci95": list(self.ci95), "slope": self.slope,
                "slope_se": self.slope_se, "images": self.images, "errors": self.errors}


def scaled_difference(n: np.ndarray, reference: np.ndarray | int) -> np.ndarray:
    """x = (N - r) / sqrt(N^2 + r^2): the model's distance of N from r, in units of w."""
    n = np.asarray(n, dtype=np.float64)
    return (n - reference) / np.sqrt(n ** 2 + np.asarray(reference, dtype=np.float64) ** 2)


def fit_weber(n: np.ndarray, reference: np.ndarray | int, more: np.ndarray) -> WeberFit:
    """Maximum-likelihood fit of P(more | N) = Phi(x / w) to the answers `more` (bool) at numerosities `n`
    against `reference` (one, or one per answer)."""
    x = scaled_difference(n, reference)
    more = np.asarray(more, dtype=bool)
    values, inverse = np.unique(x, return_inverse=True)
    trials = np.bincount(inverse).astype(np.float64)
    yes = np.bincount(inverse, weights=more).astype(np.float64)
    errors = int(np.sum(more != (x > 0)))

    def minus_log_likelihood(slope: float) -> float:
        return -float(yes @ log_ndtr(slope * values) + (trials - yes) @ log_ndtr(-slope * values))

    if errors == 0:  # every answer right: the likelihood grows without end, and w is below what the set resolves
        slope = np.inf
    else:  # the probit log-likelihood is concave in the slope: one maximum
        slope = float(minimize_scalar(minus_log_likelihood, bracket=(0.0, 1.0),
                                      options={"xtol": 1e-12, "maxiter": 500}).x)
    p = ndtr(slope * values) if np.isfinite(slope) else (values > 0).astype(np.float64)
    density = np.exp(-0.5 * (slope * values) ** 2) / np.sqrt(2 * np.pi) if np.isfinite(slope) else 0 * values
    information = float(np.sum(trials * values ** 2 * density ** 2 / np.maximum(p * (1 - p), 1e-300)))
    se = 1 / np.sqrt(information) if information > 0 else np.inf
    return WeberFit(slope, float(se), int(more.size), errors)


@dataclass
class Curve:
    """The answers against one reference: the share of "more" at each numerosity, and their fit."""

    reference: int
    numerosities: np.ndarray
    share_more: np.ndarray
    images: np.ndarray  # per numerosity
    accuracy: float
    fit: WeberFit

    def summary(self) -> dict:
        return {"reference": self.reference, "accuracy": self.accuracy, **self.fit.summary(),
                "numerosities": self.numerosities.tolist(), "share_more": self.share_more.tolist(),
                "images_per_numerosity": self.images.tolist()}


@dataclass
class Comparison:
    """Numerosity comparison against every usable reference, and one fit over all of them."""

    curves: list[Curve]  # none where no reference suits the set
    pooled: WeberFit | None
    folds: int
    left_out: list[str]  # references that could not be used, and why

    def summary(self) -> dict:
        return {"model": "P(more | N) = Phi((N - r) / (w sqrt(N^2 + r^2))) (Piazza et al. 2004)",
                "readout": f"ridge regression onto +1/-1 from the active latents, N from r/{RATIO} to {RATIO}r, "
                           "trained on as many images of each side, cross-validated answers",
                "folds": self.folds, "weber_fraction": self.pooled.weber_fraction if self.pooled else None,
                "pooled": self.pooled.summary() if self.pooled else None,
                "references": [c.summary() for c in self.curves], "left_out": self.left_out}


def balanced(rows: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`rows` with the larger side cut at random to the size of the smaller. Least squares weighs each side by
    its images: with 8 numerosities above a reference of 8 and 4 below (N from 4 to 16), the boundary would move
    towards the smaller side, and its errors would read as a coarser w."""
    more, less = rows[target[rows] > 0], rows[target[rows] < 0]
    keep = min(more.size, less.size)
    return np.sort(np.concatenate([rng.permutation(more)[:keep], rng.permutation(less)[:keep]]))


def answers(z: np.ndarray, count: np.ndarray, reference: int, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The numerosities of the images compared with `reference` (`compared`), and the readout's out-of-fold
    answer for each: True for "more than r". The readout is trained on as many images of each side."""
    rows = np.flatnonzero(compared(count, reference))
    features = np.asarray(z, dtype=np.float64)[rows]
    target = np.where(count[rows] > reference, 1.0, -1.0)
    predicted = np.empty(rows.size)
    rng = streams.rng(seed, streams.COMPARISON_BALANCE, reference)
    # folds drawn within each side, so that every training part holds both sides (each has two numerosities)
    sides = [np.flatnonzero(target > 0), np.flatnonzero(target < 0)]
    parts = zip(*(fold_assignment(side.size, folds, seed) for side in sides))
    for test in (np.concatenate([side[part] for side, part in zip(sides, fold)]) for fold in parts):
        train = balanced(np.setdiff1d(np.arange(rows.size), test), target, rng)
        predicted[test], _ = ridge_fit_predict(features[train], target[train], features[test])
    return count[rows], predicted > 0


def numerosity_comparison(z: np.ndarray, count: np.ndarray, references, folds: int = 5, seed: int = 0
                          ) -> Comparison:
    """The comparison task on the latents `z` (images x active dimensions) of images of numerosity `count`,
    against each reference with enough numerosities on both sides in this set (`left_out` says why not)."""
    count = np.asarray(count, dtype=np.int64)
    numerosities = np.unique(count[count >= 1])
    curves, left_out, pooled = [], [], ([], [], [])
    for reference in references:
        problem = reference_problem(int(reference), numerosities)
        if problem:
            left_out.append(problem)
            continue
        n, more = answers(z, count, int(reference), folds, seed)
        levels, inverse = np.unique(n, return_inverse=True)
        images = np.bincount(inverse)
        curves.append(Curve(int(reference), levels, np.bincount(inverse, weights=more) / images, images,
                            float(np.mean(more == (n > reference))), fit_weber(n, int(reference), more)))
        for part, values in zip(pooled, (n, np.full(n.size, reference), more)):
            part.append(values)
    fit = fit_weber(*(np.concatenate(part) for part in pooled)) if curves else None
    return Comparison(curves, fit, folds, left_out)
