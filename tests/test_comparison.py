"""The numerosity comparison and its Weber fraction (analysis.comparison): the fit against statsmodels' probit
GLM, and planted codes whose Weber fraction is known."""
import numpy as np
import pytest
from scipy.special import ndtr

from analysis.comparison import RATIO, compared, fit_weber, numerosity_comparison, probit_fit, scaled_difference
from analysis.config import parse_references
from common.errors import UsageError

sm = pytest.importorskip("statsmodels.api", reason="statsmodels is a test dependency")


def dot_design(n=6000, seed=0):
    """N uniform in 1..32 and a cumulative area drawn independently of it, as the dot stimuli have them."""
    rng = np.random.default_rng(seed)
    return rng, rng.integers(1, 33, n), np.exp(rng.uniform(np.log(500), np.log(5000), n))


def test_the_weber_fit_is_a_probit_glm_without_intercept():
    """P(more) = Phi(x / w), x = (N - r) / sqrt(N^2 + r^2): a probit regression on x with slope 1 / w."""
    rng = np.random.default_rng(1)
    n = rng.integers(8, 33, 3000)
    n = n[n != 16]
    more = rng.random(n.size) < ndtr(scaled_difference(n, 16) / 0.2)
    fit = fit_weber(n, 16, more)
    glm = sm.GLM(more.astype(float), scaled_difference(n, 16)[:, None],
                 family=sm.families.Binomial(link=sm.families.links.Probit())).fit()
    assert fit.slope == pytest.approx(glm.params[0], rel=1e-7)
    assert fit.slope_se == pytest.approx(glm.bse[0], rel=1e-5)
    assert fit.weber_fraction == pytest.approx(1 / glm.params[0], rel=1e-7)
    assert 0.18 < fit.weber_fraction < 0.22  # the w the answers were drawn with
    low, high = fit.ci95
    assert low == pytest.approx(1 / (glm.params[0] + 1.959964 * glm.bse[0]), rel=1e-5)
    assert high == pytest.approx(1 / (glm.params[0] - 1.959964 * glm.bse[0]), rel=1e-5)
    # answers without an error: the likelihood has no maximum, and w is below what the set resolves
    perfect = fit_weber(n, 16, n > 16)
    assert perfect.errors == 0 and perfect.weber_fraction is None and perfect.ci95 == (None, None)
    # answers that fall as N grows: no Weber fraction either
    assert fit_weber(n, 16, ~more).weber_fraction is None


@pytest.mark.parametrize("noise", [0.1, 0.25])
def test_a_log_code_with_gaussian_noise_gets_the_weber_fraction_its_noise_implies(noise):
    """One dimension codes log N with noise sd s, the others code area or nothing. The ideal answers are
    Phi((log N - log r) / s), which the model's form matches near r with w = s / sqrt(2), and at a ratio of 2
    with w = 0.65 s: the readout must find w in that range against either reference, and in the comparison over
    both. A finer code gives a smaller w."""
    rng, count, area = dot_design()
    z = np.c_[np.log(count) + noise * rng.standard_normal(count.size), np.log(area),
              rng.standard_normal((count.size, 4))]
    comparison = numerosity_comparison(z, count, (8, 16), folds=5, seed=0)
    assert [c.reference for c in comparison.curves] == [8, 16] and comparison.left_out == []
    for curve in comparison.curves:
        assert (curve.numerosities.min(), curve.numerosities.max()) == (curve.reference / RATIO,
                                                                        RATIO * curve.reference)
        assert 0.6 * noise < curve.fit.weber_fraction < 0.8 * noise, curve.summary()
        assert np.all(np.diff(curve.share_more[curve.images > 50]) > -0.1)  # the share of "more" grows with N
    assert 0.6 * noise < comparison.pooled.weber_fraction < 0.8 * noise
    assert comparison.pooled.images == sum(c.fit.images for c in comparison.curves)


def test_the_probit_fit_equals_statsmodels_with_two_predictors():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 2))
    y = (rng.random(3000) < ndtr(x @ [1.5, -0.4])).astype(float)
    beta, se = probit_fit(x, y)
    glm = sm.GLM(y, x, family=sm.families.Binomial(link=sm.families.links.Probit())).fit()
    np.testing.assert_allclose(beta, glm.params, rtol=1e-7)
    np.testing.assert_allclose(se, glm.bse, rtol=1e-5)


@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_the_area_bias_is_what_a_code_that_mixes_area_into_number_implies(leak):
    """One dimension codes log N + leak * log A with noise s, which no readout can take apart: the answers then
    shift by leak * ln 2 / s probit units per doubling of the area. A code that holds area apart gives none."""
    rng, count, area = dot_design()
    z = np.c_[np.log(count) + leak * np.log(area) + 0.15 * rng.standard_normal(count.size),
              rng.standard_normal((count.size, 3))]
    if not leak:
        z[:, 1] = np.log(area)  # area on a dimension of its own, which the readout can leave aside
    comparison = numerosity_comparison(z, count, (8, 16), folds=5, seed=0, cues={"cumulative area": area})
    biases = [b for c in comparison.curves for b in c.biases] + comparison.pooled_biases
    assert len(biases) == 3 and {b.cue for b in biases} == {"cumulative area"}
    if leak:
        assert all(b.per_doubling == pytest.approx(leak * np.log(2) / 0.15, rel=0.15) and b.p < 1e-6 for b in biases)
    else:
        assert all(abs(b.per_doubling) < 3 * b.se and b.p > 0.01 for b in biases)
    assert numerosity_comparison(z, count, (8,)).pooled_biases == []  # no cues: no biases


def test_each_cue_gets_its_own_bias_at_fixed_other_cues():
    """Answers that lean on one cue and not on another: fitted together, each gets its own shift."""
    rng, count, area = dot_design()
    field = np.exp(rng.uniform(np.log(200), np.log(800), count.size))
    z = np.c_[np.log(count) - 0.2 * np.log(field) + 0.15 * rng.standard_normal(count.size), np.log(area),
              rng.standard_normal((count.size, 2))]
    comparison = numerosity_comparison(z, count, (8, 16), folds=5, seed=0,
                                       cues={"cumulative area": area, "field area": field})
    by_cue = {b.cue: b for b in comparison.pooled_biases}
    assert by_cue["field area"].per_doubling == pytest.approx(-0.2 * np.log(2) / 0.15, rel=0.15)
    assert by_cue["field area"].p < 1e-6 and by_cue["cumulative area"].p > 0.01
    # the field, drawn apart from N, is noise to the answers at a fixed N alone; held fixed, it leaves number's
    # own acuity, the 0.6-0.8 s of a log code with noise s = 0.15
    fixed = comparison.pooled_at_fixed_cues.weber_fraction
    assert 0.6 * 0.15 < fixed < 0.8 * 0.15 and fixed < comparison.pooled.weber_fraction
    # what each bias is told from: the field varies by the sd of a log-uniform over 2 doublings at every N, apart
    # from N, and so does the area
    assert by_cue["field area"].spread_at_fixed_n == pytest.approx(2 / np.sqrt(12), rel=0.05)
    assert abs(by_cue["field area"].corr_with_log_n) < 0.05 and abs(by_cue["cumulative area"].corr_with_log_n) < 0.05
    summary = comparison.summary()["cue_biases"]
    assert [b["cue"] for b in summary] == ["cumulative area", "field area"] and set(summary[0]) == {
        "cue", "per_doubling", "se", "p", "spread_at_fixed_n", "corr_with_log_n"}


def test_a_cue_that_goes_with_number_lends_the_answers_acuity_that_w_at_fixed_cues_takes_back():
    """A code that holds only a cue correlated with N (a field area that grows with N) answers well by it: w
    looks fine, w at fixed cues is much coarser, and the cue's bias is large."""
    rng, count, area = dot_design()
    field = count * np.exp(0.3 * rng.standard_normal(count.size))  # the field grows with N, and varies at fixed N
    z = np.c_[np.log(field) + 0.1 * rng.standard_normal(count.size), np.log(area),
              rng.standard_normal((count.size, 2))]
    comparison = numerosity_comparison(z, count, (8, 16), folds=5, seed=0,
                                       cues={"cumulative area": area, "field area": field})
    w, fixed = comparison.pooled.weber_fraction, comparison.pooled_at_fixed_cues.weber_fraction
    assert w < 0.5 and fixed > 3 * w
    field_bias = {b.cue: b for b in comparison.pooled_biases}["field area"]
    assert field_bias.per_doubling > 1
    # the field's log2 is log2 N plus noise of sd s = 0.3 / ln 2 doublings: that is its spread at a fixed N, and
    # its correlation with log2 N, of sd t over the compared images (both references' together), t / sqrt(t^2 + s^2)
    s = 0.3 / np.log(2)
    assert field_bias.spread_at_fixed_n == pytest.approx(s, rel=0.05)
    t = np.std(np.log2(np.concatenate([count[compared(count, r)] for r in (8, 16)])))
    assert field_bias.corr_with_log_n == pytest.approx(t / np.hypot(t, s), abs=0.03)


def test_answers_that_number_and_area_together_separate_have_a_w_and_no_area_bias():
    """Answers given exactly by N and A together: the two-predictor likelihood has no maximum (its coefficients
    grow without end), which is said as no bias rather than as a number or a crash."""
    from analysis.comparison import fit_with_cues

    rng, count, area = dot_design(800)
    n = count[(count >= 8) & (count <= 32) & (count != 16)]
    a = area[: n.size]
    more = scaled_difference(n, 16) + 0.3 * (np.log2(a) - np.log2(a).mean()) > 0
    assert fit_with_cues(n, 16, {"cumulative area": a}, more) == (None, [])
    fit = fit_weber(n, 16, more)
    assert fit.errors > 0 and fit.weber_fraction is not None


def test_a_code_of_area_alone_answers_at_chance():
    rng, count, area = dot_design()
    z = np.c_[np.log(area), rng.standard_normal((count.size, 3))]
    comparison = numerosity_comparison(z, count, (8, 16), folds=5, seed=0)
    assert all(0.4 < c.accuracy < 0.6 for c in comparison.curves)
    assert comparison.pooled.weber_fraction is None or comparison.pooled.weber_fraction > 2


def test_references_a_set_cannot_compare_against_are_left_out_with_the_reason():
    rng = np.random.default_rng(0)
    count = rng.integers(0, 5, 500)  # the paper's counts 0-4
    comparison = numerosity_comparison(rng.standard_normal((500, 3)), count, (4, 8), folds=5, seed=0)
    assert comparison.curves == [] and comparison.pooled is None
    assert comparison.left_out == [
        "reference 4 needs at least 2 numerosities on each side within a ratio of 2 (N from 2 to 8), and the set's "
        "1-4 have 2 below and 0 above",
        "reference 8 needs at least 2 numerosities on each side within a ratio of 2 (N from 4 to 16), and the set's "
        "1-4 have 1 below and 0 above"]
    assert comparison.summary()["weber_fraction"] is None and comparison.summary()["cue_biases"] == []


def test_the_references_option():
    assert parse_references("8,16") == (8, 16) and parse_references(" none ") == ()
    for bad, told in (("", "give whole numbers"), ("8,x", "give whole numbers"), ("1", "each at least 2"),
                      ("8,8", "give each reference once")):
        with pytest.raises(UsageError, match=told):
            parse_references(bad)
