"""The controls of the area-versus-number analysis against known answers: the random-rotation null,
population decoding (against scikit-learn) and the two-way ANOVA of number selectivity (against statsmodels)."""
import numpy as np
import pytest

from analysis.controls import (ALPHAS, decode, eq3_moments, eq3_rotated, fold_assignment, population_decoding,
                               random_rotation, rotation_null)
from analysis.regression import fit_eq3, make_predictors
from analysis.selectivity import anova_moments, anova_tests, make_design, number_selectivity

sm = pytest.importorskip("statsmodels.api", reason="statsmodels is a test dependency")
smf = pytest.importorskip("statsmodels.formula.api", reason="statsmodels is a test dependency")
pd = pytest.importorskip("pandas", reason="pandas comes with statsmodels")
linear_model = pytest.importorskip("sklearn.linear_model", reason="scikit-learn is a test dependency")


def labels(m=4000, seed=0):
    rng = np.random.default_rng(seed)
    count = rng.integers(1, 6, m)
    area = np.exp(rng.uniform(np.log(300), np.log(3000), m))  # independent of N, as synthgen draws it
    return rng, count, area


def axis_aligned(rng, x, d=40, strength=0.6):
    """z0 codes log N, z1 codes log A, the rest is noise: true units."""
    z = rng.normal(size=(len(x), d))
    z[:, 0] += strength * x[:, 0]
    z[:, 1] += strength * x[:, 1]
    return z


def test_eq3_of_any_rotation_equals_a_refit_of_the_rotated_latents():
    rng, count, area = labels(800)
    x = make_predictors(count, area).x
    z = axis_aligned(rng, x, d=12)
    moments = eq3_moments(z, x)
    fit = fit_eq3(z, x)
    np.testing.assert_allclose(np.stack(eq3_rotated(moments)), np.stack([fit.r2, fit.beta_n, fit.beta_a]), atol=1e-12)
    rotation = random_rotation(12, rng)
    assert np.allclose(rotation.T @ rotation, np.eye(12))
    refit = fit_eq3((z - z.mean(axis=0)) @ rotation, x)
    np.testing.assert_allclose(np.stack(eq3_rotated(moments, rotation)),
                               np.stack([refit.r2, refit.beta_n, refit.beta_a]), atol=1e-12)


def test_the_null_tells_true_units_from_a_rotated_code_that_holds_the_same_information():
    rng, count, area = labels()
    x = make_predictors(count, area).x
    aligned = axis_aligned(rng, x)
    found = rotation_null(aligned, x, r2_min=0.05, beta_max=0.1, rotations=200, seed=0)
    assert found.observed["numerosity_units"] == 1 and found.observed["area_units"] == 1
    for key in ("best_numerosity_unit_r2", "best_area_unit_r2", "best_r2"):
        assert found.p[key] < 0.01, key
    assert found.null["numerosity_units"].max() >= 1  # a count alone is weak: rotations show units too
    mixed = (aligned - aligned.mean(axis=0)) @ random_rotation(aligned.shape[1], rng)  # same code, no axes
    chance = rotation_null(mixed, x, r2_min=0.05, beta_max=0.1, rotations=200, seed=0)
    for key in ("best_numerosity_unit_r2", "best_area_unit_r2", "best_r2", "numerosity_units", "area_units"):
        assert chance.p[key] > 0.05, key
    # ... while decoding finds the number information just as well in both
    decoded = [population_decoding(z, x[:, 0], x[:, 1], {}, folds=5, seed=0, bootstrap=200) for z in (aligned, mixed)]
    for a, b in zip(*decoded):
        assert a.r2 > 0.2 and abs(a.r2 - b.r2) < 0.01 and a.ci[0] < a.r2 < a.ci[1]
    units_only = population_decoding(aligned, x[:, 0], x[:, 1], {"numerosity": np.array([0])}, bootstrap=0)
    assert units_only[2].features == "the numerosity units alone" and units_only[2].r2 > 0.2


def test_ridge_decoding_equals_scikit_learn():
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng, count, area = labels(1500, seed=3)
    x = make_predictors(count, area).x
    z = (axis_aligned(rng, x, d=20) - 0.5) @ random_rotation(20, rng) * rng.uniform(0.1, 10, 20)  # unequal scales
    result = decode(z, x[:, 0], "log N", "all", folds=5, seed=4, bootstrap=0)
    tests = fold_assignment(len(z), 5, 4)
    splits = [(np.setdiff1d(np.arange(len(z)), t), t) for t in tests]
    reference = cross_val_predict(make_pipeline(StandardScaler(), linear_model.RidgeCV(alphas=ALPHAS)), z, x[:, 0],
                                  cv=splits)
    expected = 1 - np.sum((x[:, 0] - reference) ** 2) / np.sum((x[:, 0] - x[:, 0].mean()) ** 2)
    assert result.r2 == pytest.approx(expected, abs=1e-10)
    for (train, _), alpha in zip(splits, result.alphas):
        fitted = make_pipeline(StandardScaler(), linear_model.RidgeCV(alphas=ALPHAS)).fit(z[train], x[train, 0])
        assert fitted[-1].alpha_ == alpha


def test_the_two_way_anova_equals_statsmodels_type_2():
    rng, count, area = labels(900, seed=5)
    design = make_design(count, area, area_bins=3)
    z = rng.normal(size=(int(design.used.sum()), 4))
    z[:, 0] += 0.3 * design.numerosity  # numerosity
    z[:, 1] += 0.4 * design.area_bin  # area
    z[:, 2] += 1.5 * (design.numerosity == 2) * (design.area_bin == 1)  # an interaction
    f, p = anova_tests(anova_moments(z, design))
    for j in range(4):
        frame = pd.DataFrame({"y": z[:, j], "n": design.numerosity, "a": design.area_bin})
        table = sm.stats.anova_lm(smf.ols("y ~ C(n) * C(a)", frame).fit(), typ=2)
        np.testing.assert_allclose(f[:, j], table["F"].values[:3], rtol=1e-9)
        np.testing.assert_allclose(p[:, j], table["PR(>F)"].values[:3], rtol=1e-9, atol=1e-300)
    assert p[0, 0] < 1e-6 and p[1, 1] < 1e-6 and p[2, 2] < 0.01
    rotation = random_rotation(4, rng)  # a direction's ANOVA from the moments equals the ANOVA of that direction
    np.testing.assert_allclose(anova_tests(anova_moments(z, design), rotation)[0],
                               anova_tests(anova_moments((z - z.mean(axis=0)) @ rotation, design))[0], rtol=1e-9)


def test_selectivity_finds_planted_tuned_units_and_their_preferred_numerosity():
    rng = np.random.default_rng(6)
    m = 6000
    count = rng.integers(1, 9, m)
    levels = np.linspace(np.log(300), np.log(3000), 4)
    target = np.exp(levels[rng.integers(0, 4, m)])  # four discrete area levels, crossed with N
    design = make_design(count, target, target)
    assert design.area_bin.max() == 3 and np.array_equal(design.levels, np.arange(1, 9))
    z = rng.normal(size=(m, 6))
    for column, preferred in ((0, 2), (1, 4), (2, 6)):  # Gaussian tuning on log2 N, sign of z2 flipped
        tuning = np.exp(-((np.log2(count) - np.log2(preferred)) ** 2) / (2 * 0.3**2))
        z[:, column] += (1.5 if column < 2 else -1.5) * tuning
    z[:, 3] += 0.6 * np.log(target)  # area only
    z[:, 4] += 0.6 * np.log(target) + 0.6 * np.log(count)  # both: not selective
    result = number_selectivity(z[design.used], design)
    assert result.selective.tolist() == [True, True, True, False, False, False]
    assert result.preferred[:3].tolist() == [2, 4, 6]
    assert set(result.average) == {2, 4, 6} and result.average[4].argmax() == 3
    widths = result.widths[4]
    assert widths["log2"]["sigma"] == pytest.approx(0.3, rel=0.2) and widths["log2"]["r2"] > 0.9


def test_the_anova_of_tied_areas_counts_only_the_area_bins_that_hold_images():
    rng = np.random.default_rng(8)
    count = rng.integers(1, 5, 400)
    # half the images share one area (whole pixels of small images tie): two quantile edges fall on it
    area = np.concatenate([rng.uniform(100, 900, 100), np.full(200, 1000.0), rng.uniform(1100, 3000, 100)])
    design = make_design(count, area, area_bins=4)
    assert np.unique(design.area_bin).tolist() == [0, 1, 2] and design.area_edges.size == 4
    z = rng.normal(size=(400, 2))
    z[:, 0] += 0.2 * count
    moments = anova_moments(z, design)
    assert moments.df["area"] == 2 and moments.df["interaction"] == 6
    f, p = anova_tests(moments)
    for j in range(2):
        frame = pd.DataFrame({"y": z[:, j], "n": design.numerosity, "a": design.area_bin})
        table = sm.stats.anova_lm(smf.ols("y ~ C(n) * C(a)", frame).fit(), typ=2)
        np.testing.assert_allclose(p[:, j], table["PR(>F)"].values[:3], rtol=1e-9)
