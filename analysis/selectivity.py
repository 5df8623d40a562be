"""Number-selective units the way the neuroscience literature finds them (Nasr et al. 2019; Kim et al. 2021).

Per latent dimension, a two-way ANOVA of the response on numerosity (N, a factor) and cumulative area
(A, in bins), with their interaction. A dimension is number-selective when N is significant (p <
`p_max`, 0.01 by default) and neither A nor the interaction is. Sums of squares are Type II (what
statsmodels' `anova_lm(typ=2)` gives for `y ~ C(N) * C(A)`): each main effect is tested against the
additive model without it, the interaction against the additive model, all over the residual of the
full (cell-means) model. Images with N = 0 have no area and are left out.

Every dimension shares the design, so everything comes from four d x d matrices, the residual
cross-products of the four models (cells, N + A, N, A): the residual sum of squares of any direction v
of the latent space is v' Q v. That also makes the random-rotation null (analysis.controls) cheap.

A selective unit's tuning curve is its mean response per numerosity (over all areas), turned so that
its largest deviation from the mean is upwards (a latent dimension has no preferred sign, unlike the
non-negative units of a network) and scaled to [0, 1]; its preferred numerosity is the curve's peak.
A unit tuned so broadly that most levels sit near its peak may be read as its mirror image (a peak
at the other end): the sign of a latent dimension cannot tell them apart. The average curves per preferred numerosity
are fitted by Gaussians on a linear and on a log2 axis: widths that stay constant on the log axis
while they grow on the linear one are the Weber-Fechner signature Nasr et al. report.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, special

TERMS = ("numerosity", "area", "interaction")


@dataclass
class Design:
    """The factor levels of the images that enter the ANOVA."""

    used: np.ndarray  # bool over the set's images (N >= 1)
    numerosity: np.ndarray  # level index per used image
    area_bin: np.ndarray  # bin index per used image
    levels: np.ndarray  # the numerosity of each level
    area_edges: np.ndarray  # bin edges of the area (pixels), or the distinct levels when the design has them
    by_levels: bool = False  # binned by the design's own area levels, not by quantiles

    @property
    def cells(self) -> np.ndarray:
        return self.numerosity * (int(self.area_bin.max()) + 1) + self.area_bin


def make_design(count: np.ndarray, area: np.ndarray, target_area: np.ndarray | None = None,
                area_bins: int = 4, max_levels: int = 12) -> Design:
    """Numerosity levels and area bins. A set built with a few repeated area levels (the dot stimuli,
    Stoianov & Zorzi's eight) is binned by them; a continuous area by `area_bins` quantiles of log A."""
    count = np.asarray(count)
    used = (count > 0) & (np.asarray(area) > 0)
    levels, numerosity = np.unique(count[used], return_inverse=True)
    design_levels = np.unique(target_area[used]) if target_area is not None else np.array([])
    # levels that repeat: a handful of images of a continuous area would otherwise pass for a design of levels
    if 1 < design_levels.size <= max_levels and 2 * design_levels.size <= np.count_nonzero(used):
        area_bin = np.searchsorted(design_levels, target_area[used])
        return Design(used, numerosity, area_bin, levels, design_levels, by_levels=True)
    area_bin, edges = area_quantile_bins(area[used], area_bins)
    return Design(used, numerosity, area_bin, levels, edges)


def area_quantile_bins(area: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Each area's bin among `bins` quantiles of log A, and the bins' edges (as areas), leaving out empty bins.

    Tied areas (whole pixels of small images) can put two edges on one value and leave a bin empty: an empty
    bin is no level of the factor, and counting it would give the F tests the wrong degrees of freedom."""
    log_area = np.log(area)
    edges = np.quantile(log_area, np.linspace(0, 1, bins + 1))
    quantile_bin = np.clip(np.searchsorted(edges, log_area, side="right") - 1, 0, bins - 1)
    present, area_bin = np.unique(quantile_bin, return_inverse=True)
    return area_bin, np.exp(np.append(edges[present], edges[-1]))


def _group_scatter(zc: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """sum_g n_g mean_g mean_g' of the centred responses: what a group-means model explains."""
    sums = np.zeros((int(groups.max()) + 1, zc.shape[1]))
    np.add.at(sums, groups, zc)
    sizes = np.bincount(groups, minlength=sums.shape[0]).astype(np.float64)
    present = sizes > 0
    return sums[present].T @ (sums[present] / sizes[present, None])


@dataclass
class AnovaMoments:
    """Residual cross-products of the four models and the degrees of freedom (see the module's notes)."""

    cells: np.ndarray
    additive: np.ndarray
    numerosity: np.ndarray
    area: np.ndarray
    df: dict[str, int]


def anova_moments(z: np.ndarray, design: Design) -> AnovaMoments:
    """The residual cross-product matrices (d x d) of the responses `z` of the used images."""
    z = np.asarray(z, dtype=np.float64)
    zc = z - z.mean(axis=0)
    total = zc.T @ zc
    k_n, k_a = int(design.numerosity.max()) + 1, int(design.area_bin.max()) + 1
    dummies = np.column_stack([np.eye(k_n)[design.numerosity][:, 1:], np.eye(k_a)[design.area_bin][:, 1:]])
    dummies = dummies - dummies.mean(axis=0)  # centred: the intercept is the mean already removed
    cross = dummies.T @ zc
    explained_additive = cross.T @ np.linalg.pinv(dummies.T @ dummies) @ cross
    n_cells = np.unique(design.cells).size
    m = zc.shape[0]
    df = {"numerosity": k_n - 1, "area": k_a - 1, "interaction": n_cells - k_n - k_a + 1, "residual": m - n_cells}
    return AnovaMoments(total - _group_scatter(zc, design.cells), total - explained_additive,
                        total - _group_scatter(zc, design.numerosity), total - _group_scatter(zc, design.area_bin), df)


def anova_tests(moments: AnovaMoments, directions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """F and p of (numerosity, area, interaction) for each direction (columns of `directions`; the
    dimensions themselves by default): arrays of shape (3, k). An untestable interaction has p = NaN."""
    def rss(q):
        return np.diag(q).copy() if directions is None else np.sum(directions * (q @ directions), axis=0)

    cells, additive, numerosity, area = (rss(q) for q in (moments.cells, moments.additive, moments.numerosity,
                                                           moments.area))
    squares = np.stack([area - additive, numerosity - additive, additive - cells])
    df = moments.df
    dfs = np.array([df["numerosity"], df["area"], df["interaction"]], dtype=np.float64)[:, None]
    residual = np.maximum(cells, 1e-300) / df["residual"]
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(dfs > 0, np.maximum(squares, 0) / np.maximum(dfs, 1) / residual, np.nan)
    # The F distribution's upper tail from scipy.special (what scipy.stats.f.sf computes): importing scipy.stats
    # took 0.7 s of every analysis on 2 cores.
    p = np.where(dfs > 0, special.fdtrc(np.maximum(dfs, 1), df["residual"], f), np.nan)
    return f, p


def selective(p: np.ndarray, p_max: float = 0.01) -> np.ndarray:
    """Number-selective: numerosity significant, neither area nor the interaction (NaN: not testable)."""
    interaction_clear = np.isnan(p[2]) | (p[2] >= p_max)
    return (p[0] < p_max) & (p[1] >= p_max) & interaction_clear


@dataclass
class Selectivity:
    """The ANOVA of every active dimension, and the tuning of the selective ones."""

    levels: np.ndarray  # numerosities
    area_bins: int
    f: np.ndarray  # (3, active): numerosity, area, interaction
    p: np.ndarray
    selective: np.ndarray  # bool over the active dimensions
    curves: np.ndarray  # (active, levels): oriented tuning curves scaled to [0, 1]
    preferred: np.ndarray  # preferred numerosity per active dimension
    average: dict[int, np.ndarray] = field(default_factory=dict)  # preferred N -> mean curve of its selective units
    widths: dict[int, dict] = field(default_factory=dict)  # preferred N -> Gaussian fits on linear and log2 axes
    p_max: float = 0.01
    by_levels: bool = False  # the area factor is the design's own levels (the dot stimuli), not quantile bins


def tuning_curves(z: np.ndarray, design: Design) -> tuple[np.ndarray, np.ndarray]:
    """Oriented, [0, 1]-scaled mean response per numerosity (active x levels), and each one's peak level."""
    k = design.levels.size
    sums = np.zeros((k, z.shape[1]))
    np.add.at(sums, design.numerosity, z)
    means = (sums / np.bincount(design.numerosity, minlength=k)[:, None]).T
    deviation = means - means.mean(axis=1, keepdims=True)
    sign = np.sign(deviation[np.arange(len(means)), np.abs(deviation).argmax(axis=1)])
    oriented = means * np.where(sign == 0, 1, sign)[:, None]
    low, high = oriented.min(axis=1, keepdims=True), oriented.max(axis=1, keepdims=True)
    curves = (oriented - low) / np.where(high > low, high - low, 1.0)
    return curves, design.levels[curves.argmax(axis=1)]


def gaussian_width(x: np.ndarray, y: np.ndarray, centre: float) -> dict:
    """Least-squares Gaussian with its peak at `centre`: y = b + (1 - b) exp(-(x - centre)^2 / 2 sigma^2)."""
    def model(xs, sigma, base):
        return base + (1 - base) * np.exp(-((xs - centre) ** 2) / (2 * sigma**2))

    span = float(np.ptp(x)) or 1.0
    try:
        (sigma, base), _ = optimize.curve_fit(model, x, y, p0=(span / 4, 0.0), bounds=([1e-3, -1], [10 * span, 1]))
    except (RuntimeError, ValueError):
        return {"sigma": float("nan"), "r2": float("nan")}
    residual = np.sum((y - model(x, sigma, base)) ** 2)
    total = np.sum((y - y.mean()) ** 2)
    return {"sigma": float(sigma), "r2": float(1 - residual / total) if total > 0 else float("nan")}


def number_selectivity(z: np.ndarray, design: Design, p_max: float = 0.01,
                       moments: AnovaMoments | None = None) -> Selectivity:
    """The two-way ANOVA of every column of `z` (the used images' responses), selectivity and tuning; `moments`:
    anova_moments(z, design), where the caller has them already."""
    f, p = anova_tests(moments if moments is not None else anova_moments(z, design))
    chosen = selective(p, p_max)
    curves, preferred = tuning_curves(z, design)
    result = Selectivity(design.levels, int(design.area_bin.max()) + 1, f, p, chosen, curves, preferred,
                         p_max=p_max, by_levels=design.by_levels)
    for value in np.unique(preferred[chosen]):
        mean_curve = curves[chosen & (preferred == value)].mean(axis=0)
        result.average[int(value)] = mean_curve
        if design.levels.size >= 4:
            result.widths[int(value)] = {
                "linear": gaussian_width(design.levels.astype(float), mean_curve, float(value)),
                "log2": gaussian_width(np.log2(design.levels), mean_curve, float(np.log2(value))),
                "units": int((chosen & (preferred == value)).sum())}
    return result
