"""Numerosity and area units by Stoianov & Zorzi's criteria: the statistics alone, as a typed result.

From posterior means and labels to units: drop inactive dimensions, fit Eq. 3 to the rest
(analysis.regression), bootstrap the betas, apply the criteria. No paths, no files: the report and
the figures are written elsewhere (analysis.report, analysis.figures).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.regression import AREA, NUMEROSITY, Fit, Predictors, bootstrap_betas, classify, fit_eq3
from common.errors import UserError


# The untrained model (epoch 0 of vae-train --save-every): no KL term has yet pushed unused dimensions to the
# prior, which is what the activity threshold finds in a trained VAE, and its posterior means vary little (1e-5
# to 1e-4 in variance) though they carry the image. Every dimension that varies at all is analysed; Eq. 3, the
# null, the decoding and the ANOVA are all scale-free. float32 rounding of the means is far below this.
UNTRAINED_ACTIVE_THRESHOLD = 1e-12


@dataclass(frozen=True)
class Criteria:
    """What makes a unit (Stoianov & Zorzi 2012; the paper loosened R^2 to 0.05), and which data enter."""

    r2_min: float = 0.05
    beta_max: float = 0.1
    active_threshold: float = 0.01
    log1p: bool = False


@dataclass
class UnitResult:
    """Eq. 3 and the criteria for every active dimension (arrays over the active dimensions unless named)."""

    variance: np.ndarray  # variance of the posterior mean, every dimension
    active: np.ndarray  # bool, every dimension
    dims: np.ndarray  # the active dimensions' indices
    predictors: Predictors  # the rows used and their standardised log N, log A
    fit: Fit
    labels: np.ndarray  # NUMEROSITY, AREA or "" per active dimension
    ci: np.ndarray  # (2 low/high, 2 beta_N/beta_A, active): bootstrap 95% intervals (NaN without bootstrap)

    @property
    def units(self) -> dict[str, list[int]]:
        return {kind: [int(self.dims[k]) for k in np.flatnonzero(self.labels == kind)] for kind in (NUMEROSITY, AREA)}

    @property
    def best(self) -> np.ndarray:
        """Positions (in the active dimensions) from the highest R^2 down."""
        return np.argsort(-self.fit.r2)

    def latents(self, means: np.ndarray) -> np.ndarray:
        """The fitted block of the posterior means: used images x active dimensions."""
        return means[self.predictors.used][:, self.active]


class NoActiveDimension(UserError):
    """A code that does not vary over the set (a collapsed posterior, as a large KL weight can give)."""


def find_units(means: np.ndarray, predictors: Predictors, criteria: Criteria, bootstrap: int = 0,
               seed: int = 0) -> UnitResult:
    """Drop inactive dimensions, fit Eq. 3 to the rest (on the set's log N and log A, `make_predictors`), bootstrap
    the betas, apply the criteria."""
    variance = means.var(axis=0)
    active = variance >= criteria.active_threshold
    if not active.any():
        raise NoActiveDimension(f"no active latent dimension (variance of the posterior mean over the set >= "
                                f"--active-threshold {criteria.active_threshold}): the model codes nothing that "
                                "varies here")
    z = means[predictors.used][:, active]
    fit = fit_eq3(z, predictors.x)
    labels = classify(fit, criteria.r2_min, criteria.beta_max)
    if bootstrap > 0:
        ci = np.percentile(bootstrap_betas(z, predictors.x, bootstrap, seed), [2.5, 97.5], axis=0)
    else:
        ci = np.full((2, 2, int(active.sum())), np.nan)
    return UnitResult(variance, active, np.flatnonzero(active), predictors, fit, labels, ci)
