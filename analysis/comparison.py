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

Whether the answers still lean on what goes with number in the images is their cue biases: the same probit
with log2 of each non-numerical magnitude the set records (centred over the compared images) as further
predictors, P(more) = Phi(a_r + x / w + sum_c b_c * (log2 c - mean_r)), with a free intercept and the cues
centred for each reference r (the cues at a reference are not their mean over its compared images): the
cumulative area A, and for the dot arrays
the field area F (their convex hull), after DeWind et al. (2015). b_c is the shift, in probit units, that
doubling c gives the answers at a fixed N and fixed other cues: 0 for answers by number alone, positive where
more reads as more (the congruency effects of people's comparisons). The same fit's slope of x gives the Weber
fraction at fixed cues: coarser than w where part of the answers' acuity comes from a cue that goes with N. How
well a bias is told apart from number shows in how far its cue varies at a fixed N (sd of its log2, in doublings)
and how closely it goes with log N: with the field fixed, a dot array's hull grows with N and varies by about
a fifth of a doubling at each N.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr, ndtr

from analysis.controls import fold_assignment, ridge_fit_predict
from common import streams
from synthgen.stats import corr_log, sd_at_fixed_count

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
        """w; None where the answers hold no error to measure w by, have no fit, or do not grow with N."""
        return 1 / self.slope if self.errors and np.isfinite(self.slope) and self.slope > 0 else None

    def why_none(self) -> str:
        """Why there is no w, in words."""
        if not self.errors:
            return "no error to measure it by"
        return "the answers do not grow with N" if np.isfinite(self.slope) else "no maximum-likelihood fit"

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


def probit_fit(predictors: np.ndarray, yes: np.ndarray, trials: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood probit regression on `predictors` as given (no intercept is added): `yes` of `trials`
    (default 1 each) answers at each row. Fisher scoring, as a GLM is fitted; returns the coefficients and their
    standard errors from the expected information, or NaNs where the likelihood has no maximum (answers that a
    combination of the predictors separates: the coefficients grow without end, the information degenerates).
    The log-likelihood is concave: one maximum, where one exists."""
    x = np.asarray(predictors, dtype=np.float64).reshape(len(yes), -1)
    yes = np.asarray(yes, dtype=np.float64)
    trials = np.ones_like(yes) if trials is None else np.asarray(trials, dtype=np.float64)
    beta = np.zeros(x.shape[1])
    undefined = np.full(x.shape[1], np.nan), np.full(x.shape[1], np.nan)

    def log_likelihood(b):
        eta = x @ b
        value = float(yes @ log_ndtr(eta) + (trials - yes) @ log_ndtr(-eta))
        return value if np.isfinite(value) else -np.inf

    def information_and_score(b):
        eta = x @ b
        p = np.clip(ndtr(eta), 1e-300, 1 - 1e-16)
        density = np.exp(-0.5 * eta ** 2) / np.sqrt(2 * np.pi)
        information = x.T @ ((trials * density ** 2 / (p * (1 - p)))[:, None] * x)
        return information, x.T @ (density * (yes - trials * p) / (p * (1 - p)))

    with np.errstate(all="ignore"):  # a separated fit runs into infinities; it is told by what comes out
        try:
            for _ in range(100):
                step = np.linalg.solve(*information_and_score(beta))
                before = log_likelihood(beta)
                for _ in range(30):  # halve a step that overshoots
                    if log_likelihood(beta + step) >= before:
                        break
                    step = step / 2
                beta = beta + step
                if np.max(np.abs(step)) < 1e-10 * (1 + np.max(np.abs(beta))):
                    break
            else:
                return undefined
            variance = np.diag(np.linalg.inv(information_and_score(beta)[0]))
        except np.linalg.LinAlgError:
            return undefined
    if not (np.all(np.isfinite(beta)) and np.all(np.isfinite(variance)) and np.all(variance > 0)):
        return undefined
    return beta, np.sqrt(variance)


def fit_weber(n: np.ndarray, reference: np.ndarray | int, more: np.ndarray) -> WeberFit:
    """Maximum-likelihood fit of P(more | N) = Phi(x / w) to the answers `more` (bool) at numerosities `n`
    against `reference` (one, or one per answer)."""
    x = scaled_difference(n, reference)
    more = np.asarray(more, dtype=bool)
    errors = int(np.sum(more != (x > 0)))
    if errors == 0:  # every answer right: the likelihood grows without end, and w is below what the set resolves
        return WeberFit(np.inf, np.inf, int(more.size), 0)
    values, inverse = np.unique(x, return_inverse=True)  # the answers at each distance, for speed
    slope, se = probit_fit(values, np.bincount(inverse, weights=more), np.bincount(inverse))
    return WeberFit(float(slope[0]), float(se[0]), int(more.size), errors)


@dataclass
class CueBias:
    """How far the answers lean on one non-numerical magnitude at a fixed N: the probit shift per doubling."""

    cue: str
    per_doubling: float
    se: float
    # What the bias is told from: a cue that barely varies at a fixed N, or that goes with N almost in step, leaves
    # its bias and number's own acuity hard to tell apart (a wide SE, and w at fixed cues with it).
    spread_at_fixed_n: float  # sd of log2 of the cue around its mean at each numerosity, in doublings
    corr_with_log_n: float  # over the compared images

    @property
    def p(self) -> float:
        """Two-sided p of the Wald test of no bias."""
        return float(2 * ndtr(-abs(self.per_doubling) / self.se))

    def summary(self) -> dict:
        return {"cue": self.cue, "per_doubling": self.per_doubling, "se": self.se, "p": self.p,
                "spread_at_fixed_n": self.spread_at_fixed_n, "corr_with_log_n": self.corr_with_log_n}


def fit_with_cues(n: np.ndarray, reference: np.ndarray | int, cues: dict[str, np.ndarray], more: np.ndarray
                  ) -> tuple[WeberFit | None, list[CueBias]]:
    """The Weber fraction at fixed cues and the answers' bias towards each cue (module docstring), fitted
    together; neither where the answers hold no error, a cue does not vary or is not positive (an image with
    nothing visible), or the fit has no maximum."""
    x = scaled_difference(n, reference)
    more = np.asarray(more, dtype=bool)
    values = {cue: np.asarray(v, dtype=np.float64) for cue, v in cues.items()}
    errors = int(np.sum(more != (x > 0)))
    if not values or not errors or not all(np.all(v > 0) and np.all(np.isfinite(v)) and np.ptp(v) > 0
                                           for v in values.values()):
        return None, []
    logs = {cue: np.log2(v) for cue, v in values.items()}
    # A free intercept per reference, and the cues centred within each: the cues at a reference are not their mean
    # over its compared images, and where a cue grows with N its level at each reference differs; an offset left
    # unfitted would be read as number (x's mean is not 0 either).
    references = np.broadcast_to(np.asarray(reference), x.shape)
    groups = [references == r for r in np.unique(references)]
    intercepts = [g.astype(np.float64) for g in groups]
    centred = [v - sum(g * v[g].mean() for g in groups) for v in logs.values()]
    beta, se = probit_fit(np.c_[(*intercepts, x, *centred)], more.astype(np.float64))
    if not np.all(np.isfinite(se)):
        return None, []
    k = len(groups)
    return (WeberFit(float(beta[k]), float(se[k]), int(more.size), errors),
            [CueBias(cue, float(b), float(e), sd_at_fixed_count(n, logs[cue]), corr_log(n, values[cue]))
             for cue, b, e in zip(logs, beta[k + 1:], se[k + 1:])])


@dataclass
class Curve:
    """The answers against one reference: the share of "more" at each numerosity, and their fit."""

    reference: int
    numerosities: np.ndarray
    share_more: np.ndarray
    images: np.ndarray  # per numerosity
    accuracy: float
    fit: WeberFit
    fit_at_fixed_cues: WeberFit | None  # None: no cues given, or no fit (fit_with_cues)
    biases: list[CueBias]

    def summary(self) -> dict:
        fixed = self.fit_at_fixed_cues
        return {"reference": self.reference, "accuracy": self.accuracy, **self.fit.summary(),
                "weber_fraction_at_fixed_cues": fixed.weber_fraction if fixed else None,
                "cue_biases": [b.summary() for b in self.biases],
                "numerosities": self.numerosities.tolist(), "share_more": self.share_more.tolist(),
                "images_per_numerosity": self.images.tolist()}


@dataclass
class Comparison:
    """Numerosity comparison against every usable reference, and one fit over all of them."""

    curves: list[Curve]  # none where no reference suits the set
    pooled: WeberFit | None
    pooled_at_fixed_cues: WeberFit | None
    pooled_biases: list[CueBias]
    folds: int
    left_out: list[str]  # references that could not be used, and why

    def summary(self) -> dict:
        return {"model": "P(more | N) = Phi((N - r) / (w sqrt(N^2 + r^2))) (Piazza et al. 2004)",
                "cue_bias_model": "P(more) = Phi(a_r + x / w + sum_c b_c (log2 c - mean_r)); b_c per doubling of cue c",
                "readout": f"ridge regression onto +1/-1 from the active latents, N from r/{RATIO} to {RATIO}r, "
                           "trained on as many images of each side, cross-validated answers",
                "folds": self.folds, "weber_fraction": self.pooled.weber_fraction if self.pooled else None,
                "pooled": self.pooled.summary() if self.pooled else None,
                "weber_fraction_at_fixed_cues": (self.pooled_at_fixed_cues.weber_fraction
                                                 if self.pooled_at_fixed_cues else None),
                "cue_biases": [b.summary() for b in self.pooled_biases],
                "references": [c.summary() for c in self.curves], "left_out": self.left_out}


def balanced(rows: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`rows` with the larger side cut at random to the size of the smaller. Least squares weighs each side by
    its images: with 8 numerosities above a reference of 8 and 4 below (N from 4 to 16), the boundary would move
    towards the smaller side, and its errors would read as a coarser w."""
    more, less = rows[target[rows] > 0], rows[target[rows] < 0]
    keep = min(more.size, less.size)
    return np.sort(np.concatenate([rng.permutation(more)[:keep], rng.permutation(less)[:keep]]))


def answers(z: np.ndarray, count: np.ndarray, reference: int, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The images compared with `reference` (`compared`), and the readout's out-of-fold answer for each: True for
    "more than r". The readout is trained on as many images of each side."""
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
    return rows, predicted > 0


def numerosity_comparison(z: np.ndarray, count: np.ndarray, references, folds: int = 5, seed: int = 0,
                          cues: dict[str, np.ndarray] | None = None) -> Comparison:
    """The comparison task on the latents `z` (images x active dimensions) of images of numerosity `count`,
    against each reference with enough numerosities on both sides in this set (`left_out` says why not); with
    the images' non-numerical magnitudes (`cues`: name -> one value per image), the answers' biases too."""
    count = np.asarray(count, dtype=np.int64)
    numerosities = np.unique(count[count >= 1])
    curves, left_out, pooled = [], [], ([], [], [])
    for reference in references:
        problem = reference_problem(int(reference), numerosities)
        if problem:
            left_out.append(problem)
            continue
        rows, more = answers(z, count, int(reference), folds, seed)
        n, r = count[rows], np.full(rows.size, int(reference))
        compared_cues = {cue: np.asarray(values)[rows] for cue, values in (cues or {}).items()}
        levels, inverse = np.unique(n, return_inverse=True)
        images = np.bincount(inverse)
        curves.append(Curve(int(reference), levels, np.bincount(inverse, weights=more) / images, images,
                            float(np.mean(more == (n > reference))), fit_weber(n, r, more),
                            *fit_with_cues(n, r, compared_cues, more)))
        for part, values in zip(pooled, (rows, r, more)):
            part.append(values)
    if not curves:
        return Comparison([], None, None, [], folds, left_out)
    rows, r, more = (np.concatenate(part) for part in pooled)
    pooled_cues = {cue: np.asarray(values)[rows] for cue, values in (cues or {}).items()}
    return Comparison(curves, fit_weber(count[rows], r, more), *fit_with_cues(count[rows], r, pooled_cues, more),
                      folds, left_out)
