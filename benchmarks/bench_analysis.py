"""Benchmark the area-versus-number statistics on 35,000 images x 180 latent dimensions: the Eq. 3 fit
(closed form for all dimensions at once against a statsmodels OLS loop over the dimensions, in the
same run; statsmodels is a test dependency: pip install -e '.[test]'), the bootstrap, and the controls:
the random-rotation null (with and without the ANOVA), population decoding, the two-way ANOVA.

    python benchmarks/bench_analysis.py
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import statsmodels.api as sm

from analysis.controls import population_decoding, rotation_null
from analysis.regression import bootstrap_betas, fit_eq3, make_predictors, standardise
from analysis.selectivity import anova_moments, make_design, number_selectivity
from common.machine import describe


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=35_000)
    parser.add_argument("--dims", type=int, default=180)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--rotations", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    count = rng.integers(0, 5, args.images)
    area = np.where(count > 0, np.exp(rng.uniform(np.log(1000), np.log(9000), args.images)), 0.0)
    means = rng.normal(size=(args.images, args.dims))
    means[:, 0] += np.log(np.maximum(count, 1))
    start = time.perf_counter()
    predictors = make_predictors(count, area)
    z = means[predictors.used]
    prepare = time.perf_counter() - start
    closed = min(_timed(lambda: fit_eq3(z, predictors.x)) for _ in range(5))  # best of 5: a warm cache
    fit = fit_eq3(z, predictors.x)

    start = time.perf_counter()
    design = sm.add_constant(predictors.x)
    looped = [sm.OLS(standardise(z[:, i]), design).fit() for i in range(args.dims)]  # as one would write it
    loop = time.perf_counter() - start
    worst = max(max(abs(r.params[1] - fit.beta_n[i]), abs(r.bse[1] - fit.se_n[i]), abs(r.rsquared - fit.r2[i]))
                for i, r in enumerate(looped))
    start = time.perf_counter()
    bootstrap_betas(z, predictors.x, args.bootstrap, seed=0)
    boot = time.perf_counter() - start
    print(f"machine: {describe('numpy', 'statsmodels')}")
    print(f"{predictors.x.shape[0]} images with N >= 1 (of {args.images}) x {args.dims} dimensions\n")
    print("| step | seconds | speed-up over the statsmodels loop |")
    print("|---|---|---|")
    print(f"| Eq. 3 fit, closed form, all dimensions at once | {closed:.4f} | {loop / closed:.0f}x |")
    print(f"| the same, with building log N, log A and selecting the N >= 1 rows | {prepare + closed:.4f} | "
          f"{loop / (prepare + closed):.0f}x |")
    print(f"| statsmodels OLS, one dimension at a time | {loop:.3f} | 1x |")
    print(f"| {args.bootstrap} bootstrap resamples (closed form) | {boot:.3f} | |")
    design = make_design(count, area)
    z_design = means[design.used]
    anova = _timed(lambda: number_selectivity(z_design, design))
    moments = anova_moments(z_design, design)
    null = _timed(lambda: rotation_null(z, predictors.x, 0.05, 0.1, args.rotations, 0))
    null_anova = _timed(lambda: rotation_null(z, predictors.x, 0.05, 0.1, args.rotations, 0, anova=moments))
    decoding = _timed(lambda: population_decoding(z, predictors.x[:, 0], predictors.x[:, 1], {},
                                                  bootstrap=args.bootstrap))
    print(f"| two-way ANOVA of every dimension (number selectivity, tuning) | {anova:.3f} | |")
    print(f"| random-rotation null, {args.rotations} rotations, Eq. 3 criteria | {null:.3f} | |")
    print(f"| the same with the ANOVA's selective count (moments given) | {null_anova:.3f} | |")
    print(f"| population decoding of log N and log A (5 folds, {args.bootstrap} bootstraps each) | "
          f"{decoding:.3f} | |")
    print(f"\nlargest difference from statsmodels (beta, SE, R^2): {worst:.1e}")


if __name__ == "__main__":
    main()
