"""Controls that say whether a unit finding is more than chance: a random-rotation null and population decoding.

**Random-rotation null.** Single VAE axes are only weakly identifiable: a code that carries log N and
log A as two ordinary directions, mixed over many dimensions, still puts some of each on every axis,
and with enough axes a few pass the unit criteria by chance. The null keeps the code's information and
destroys its axes: K random orthogonal rotations (Haar) of the centred active latents, each analysed
exactly as the observed code (Eq. 3 and the criteria; the two-way ANOVA when asked). The observed
number of numerosity units and of area units, the R^2 of the best unit of each kind (0 without one),
the best R^2 of any dimension and the number of number-selective units are compared with their null
distributions by permutation p-values, (1 + #{null >= observed}) / (K + 1). The counts are coarse (a
rotated code often shows a unit or two by chance); the best unit's R^2 is the sharper test.
Everything comes from d x d moment matrices, so a rotation costs a few d^3 products, not a pass over
the images.

**Population decoding.** Cross-validated ridge regression of log N and of log A from all active
dimensions (and from the units alone): how much number and area information the code holds at all,
whatever its axes. Features are standardised on each training fold; the ridge penalty is chosen on the
training fold by efficient leave-one-out (generalised cross-validation, as scikit-learn's RidgeCV);
R^2 is computed over the out-of-fold predictions, with a bootstrap 95% interval over images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from analysis.regression import AREA, NUMEROSITY, unit_labels
from analysis.selectivity import AnovaMoments, anova_tests, selective
from common import streams

ALPHAS = np.logspace(-2, 6, 17)  # ridge penalties tried (features standardised)


# ------------------------------------------------------------------------------------------ rotation null


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal matrix, uniform over O(d) (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@dataclass
class Eq3Moments:
    """What Eq. 3 needs of the latents, for any rotation of them."""

    covariance: np.ndarray  # z_c' z_c / m, (d, d)
    cross: np.ndarray  # x_c' z_c, (2, d)
    sxx: np.ndarray  # x_c' x_c, (2, 2)
    m: int


def eq3_moments(z: np.ndarray, x: np.ndarray) -> Eq3Moments:
    z = np.asarray(z, dtype=np.float64)
    zc = z - z.mean(axis=0)
    xc = np.asarray(x, dtype=np.float64) - np.mean(x, axis=0)
    return Eq3Moments(zc.T @ zc / len(z), xc.T @ zc, xc.T @ xc, len(z))


def eq3_rotated(moments: Eq3Moments, rotation: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R^2, beta_N, beta_A of Eq. 3 for the columns of z_c @ rotation (the dimensions themselves if None):
    the same numbers analysis.regression.fit_eq3 gives on those columns."""
    if rotation is None:
        variance, cross = np.diag(moments.covariance), moments.cross
    else:
        variance = np.sum(rotation * (moments.covariance @ rotation), axis=0)
        cross = moments.cross @ rotation
    sd = np.sqrt(np.maximum(variance, 0))
    sxy = cross / np.where(sd > 0, sd, 1.0)
    slopes = np.linalg.solve(moments.sxx, sxy)
    r2 = np.where(sd > 0, np.einsum("kj,kj->j", slopes, sxy) / moments.m, 0.0)
    return r2, slopes[0], slopes[1]


@dataclass
class NullResult:
    """Observed statistics, their null distributions over K rotations, and permutation p-values."""

    rotations: int
    observed: dict[str, float]
    null: dict[str, np.ndarray]
    p: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"rotations": self.rotations, "observed": self.observed, "p": self.p,
                "null_mean": {k: float(v.mean()) for k, v in self.null.items()},
                "null_95th_percentile": {k: float(np.percentile(v, 95)) for k, v in self.null.items()},
                "null_max": {k: float(v.max()) for k, v in self.null.items()}}


def _statistics(r2, beta_n, beta_a, r2_min, beta_max) -> dict[str, float]:
    labels = unit_labels(r2, beta_n, beta_a, r2_min, beta_max)

    def best_of(kind):  # the R^2 of the best unit of a kind, 0 without one: more telling than a count of 0, 1, 2
        chosen = labels == kind
        return float(r2[chosen].max()) if chosen.any() else 0.0

    return {"numerosity_units": float((labels == NUMEROSITY).sum()), "area_units": float((labels == AREA).sum()),
            "best_numerosity_unit_r2": best_of(NUMEROSITY), "best_area_unit_r2": best_of(AREA),
            "best_r2": float(r2.max())}


def rotation_null(z: np.ndarray, x: np.ndarray, r2_min: float, beta_max: float, rotations: int = 200, seed: int = 0,
                  anova: AnovaMoments | None = None, p_max: float = 0.01) -> NullResult:
    """The random-rotation null of the unit counts and the best R^2 (and of the selective-unit count when
    `anova` moments of the same latents are given). `z`: used images x active dimensions."""
    moments = eq3_moments(z, x)
    observed = _statistics(*eq3_rotated(moments), r2_min, beta_max)
    if anova is not None:
        observed["selective_units"] = float(selective(anova_tests(anova)[1], p_max).sum())
    null = {key: np.empty(rotations) for key in observed}
    rng = streams.rng(seed, streams.NULL_ROTATION)
    d = z.shape[1]
    for k in range(rotations):
        rotation = random_rotation(d, rng)
        for key, value in _statistics(*eq3_rotated(moments, rotation), r2_min, beta_max).items():
            null[key][k] = value
        if anova is not None:
            null["selective_units"][k] = selective(anova_tests(anova, rotation)[1], p_max).sum()
    p = {key: float((1 + np.sum(null[key] >= observed[key])) / (rotations + 1)) for key in observed}
    return NullResult(rotations, observed, null, p)


# ------------------------------------------------------------------------------------------ decoding


@dataclass
class Decoding:
    """Cross-validated ridge decoding of one target from some dimensions."""

    target: str
    features: str
    n_features: int
    r2: float
    ci: tuple[float, float]
    alphas: list[float]  # the penalty chosen on each fold
    folds: int
    images: int

    def summary(self) -> dict:
        return {"target": self.target, "features": self.features, "n_features": self.n_features, "r2": self.r2,
                "ci95": list(self.ci), "alphas": self.alphas, "folds": self.folds, "images": self.images}


def fold_assignment(m: int, folds: int, seed: int) -> list[np.ndarray]:
    """The test rows of each fold: a seeded permutation cut into near-equal parts."""
    return np.array_split(streams.rng(seed, streams.DECODING_FOLDS).permutation(m), folds)


def ridge_fit_predict(x_train, y_train, x_test, alphas=ALPHAS) -> tuple[np.ndarray, float]:
    """Standardise on the training rows, choose the penalty by efficient leave-one-out on them, predict."""
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    xs = (x_train - mean) / std
    y_mean = y_train.mean()
    yc = y_train - y_mean
    u, s, vt = np.linalg.svd(xs, full_matrices=False)
    uy = u.T @ yc
    shrink = s[None, :] ** 2 / (s[None, :] ** 2 + np.asarray(alphas)[:, None])  # (alphas, k)
    fitted = (shrink * uy[None, :]) @ u.T  # (alphas, m): X w for every penalty
    leverage = 1.0 / len(yc) + shrink @ (u.T ** 2)  # hat diagonal, the intercept included
    loo = ((yc[None, :] - fitted) / (1 - leverage)) ** 2
    best = int(np.argmin(loo.mean(axis=1)))
    coefficients = vt.T @ (shrink[best] / np.where(s > 0, s, 1.0) * uy)
    return ((x_test - mean) / std) @ coefficients + y_mean, float(alphas[best])


def decode(features: np.ndarray, target: np.ndarray, target_name: str, features_name: str, folds: int = 5,
           seed: int = 0, bootstrap: int = 1000) -> Decoding:
    """Out-of-fold R^2 of ridge decoding, with a bootstrap 95% interval over images."""
    features = np.asarray(features, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    m = len(target)
    predicted = np.empty(m)
    chosen = []
    for test in fold_assignment(m, folds, seed):
        train = np.setdiff1d(np.arange(m), test, assume_unique=True)
        predicted[test], alpha = ridge_fit_predict(features[train], target[train], features[test])
        chosen.append(alpha)
    residual = (target - predicted) ** 2
    centred = (target - target.mean()) ** 2
    r2 = float(1 - residual.sum() / centred.sum())
    rng = streams.rng(seed, streams.DECODING_BOOTSTRAP)
    boots = []
    for _ in range(bootstrap):
        rows = rng.integers(0, m, m)
        t = target[rows]
        boots.append(1 - residual[rows].sum() / np.sum((t - t.mean()) ** 2))
    ci = tuple(float(v) for v in np.percentile(boots, [2.5, 97.5])) if boots else (float("nan"), float("nan"))
    return Decoding(target_name, features_name, features.shape[1], r2, ci, chosen, folds, m)


def population_decoding(z: np.ndarray, log_n: np.ndarray, log_a: np.ndarray, units: dict[str, np.ndarray],
                        folds: int = 5, seed: int = 0, bootstrap: int = 1000) -> list[Decoding]:
    """log N and log A decoded from all active dimensions, and from the numerosity / area units alone."""
    results = [decode(z, log_n, "log N", "all active dimensions", folds, seed, bootstrap),
               decode(z, log_a, "log A", "all active dimensions", folds, seed, bootstrap)]
    for kind, target, name in ((NUMEROSITY, log_n, "log N"), (AREA, log_a, "log A")):
        columns = units.get(kind)
        if columns is not None and len(columns):
            results.append(decode(z[:, columns], target, name, f"the {kind} units alone", folds, seed, bootstrap))
    return results

