"""Figures of the analyses, in the style of the paper's Figures 2-4, and the readout's confusion matrix."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.special import ndtr  # noqa: E402

from analysis.comparison import scaled_difference  # noqa: E402
from analysis.regression import AREA, NUMEROSITY  # noqa: E402
from common.atomic import save_figure  # noqa: E402
from synthgen.inspection import count_ticks  # noqa: E402

COLOURS = {NUMEROSITY: "#c44e52", AREA: "#4c72b0", "": "#999999"}


def beta_scatter(dims, beta_n, beta_a, r2, labels, r2_min: float, beta_max: float, path) -> None:
    """beta_N against beta_A for every active dimension; the criteria as shaded bands."""
    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    ax.axvspan(-beta_max, beta_max, color=COLOURS[AREA], alpha=0.08, lw=0)
    ax.axhspan(-beta_max, beta_max, color=COLOURS[NUMEROSITY], alpha=0.08, lw=0)
    sizes = 12 + 400 * np.clip(r2, 0, 1)
    for label, name in ((NUMEROSITY, "numerosity units"), (AREA, "area units"), ("", "other dimensions")):
        chosen = labels == label
        ax.scatter(beta_n[chosen], beta_a[chosen], s=sizes[chosen], c=COLOURS[label], alpha=0.75,
                   edgecolors="white", linewidths=0.5, label=f"{name} ({int(chosen.sum())})")
    for dim, bn, ba, label in zip(dims, beta_n, beta_a, labels):
        if label:
            ax.annotate(f"z{dim}", (bn, ba), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axhline(0, color="black", lw=0.5)
    ax.axvline(0, color="black", lw=0.5)
    limit = max(3 * beta_max, 1.1 * float(np.max(np.abs(np.r_[beta_n, beta_a]))))  # the bands must read as bands
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), xlabel="beta_N (standardised log N)",
           ylabel="beta_A (standardised log A)",
           title=f"Eq. 3 for every active dimension (marker area ~ R^2)\n"
                 f"units: R^2 >= {r2_min}, |other beta| < {beta_max}")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def response_profile(dim: int, z: np.ndarray, count: np.ndarray, area: np.ndarray, design, label: str, r2: float,
                     beta_n: float, beta_a: float, path) -> None:
    """Figure 4 style: (left) mean response per N for each cumulative-area bin; (right) the response
    against log A, coloured by N, with its binned means. The bins are the ANOVA's (`design`,
    selectivity.make_design): the set's own area levels, or --area-bins quantiles of log A."""
    z, count, area = z[design.used], count[design.used], area[design.used]
    log_area = np.log10(area)
    bins = design.area_bin
    area_bins = int(bins.max()) + 1
    if design.by_levels:
        names = [f"A = {level:.0f} px (level)" for level in design.area_edges]
    else:
        edges = np.log10(design.area_edges)
        names = [f"A in 10^[{edges[b]:.2f}, {edges[b + 1]:.2f}]" for b in range(area_bins)]
    values = np.unique(count)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("viridis")
    for b in range(area_bins):
        means, errors = [], []
        for v in values:
            chosen = z[(bins == b) & (count == v)]
            means.append(chosen.mean() if chosen.size else np.nan)
            errors.append(chosen.std() / np.sqrt(chosen.size) if chosen.size > 1 else np.nan)
        axes[0].errorbar(values, means, yerr=errors, marker="o", capsize=3, color=cmap(b / max(1, area_bins - 1)),
                         label=names[b])
    axes[0].set(xlabel="number of objects N", ylabel=f"mean response of z{dim}", xticks=count_ticks(values),
                title="response per N, for each cumulative-area bin")
    if area_bins <= 8:
        axes[0].legend(fontsize=7)
    else:  # many bins (--area-bins): a colour bar, where a legend entry each ran off the figure
        shades = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, area_bins - 1))
        bar = fig.colorbar(shades, ax=axes[0], label="cumulative-area bin")
        ticks = np.unique(np.linspace(0, area_bins - 1, 5).round().astype(int))
        bar.set_ticks(ticks, labels=[names[b].replace(" (level)", "") for b in ticks], fontsize=6)
    if values.size <= 8:
        for v in values:
            chosen = count == v
            axes[1].scatter(log_area[chosen], z[chosen], s=3, alpha=0.25, color=cmap(v / values.max()),
                            label=f"N = {v}")
    else:  # the dot stimuli's 32 counts: a colour bar, where a legend entry each ran off the figure
        dots = axes[1].scatter(log_area, z, s=3, alpha=0.25, c=count / values.max(), cmap=cmap, vmin=0, vmax=1)
        bar = fig.colorbar(dots, ax=axes[1], label="N")
        ticks = count_ticks(values, 8)
        bar.set_ticks(ticks / values.max(), labels=[str(v) for v in ticks])
    centres = [log_area[bins == b].mean() for b in range(area_bins)]
    axes[1].plot(centres, [z[bins == b].mean() for b in range(area_bins)], "k-o", label="binned mean")
    axes[1].set(xlabel="cumulative area A (log10 pixels)", ylabel=f"z{dim}", title="response against log A")
    legend = axes[1].legend(fontsize=7)
    for handle in legend.legend_handles:  # the scatter's dots seen in the legend; markerscale also blew up the line's
        if isinstance(handle, PathCollection):
            handle.set_sizes([20])
    kind = f"{label} unit" if label else "best-fitting dimension (no unit)"
    fig.suptitle(f"z{dim}: {kind}; R^2 = {r2:.3f}, beta_N = {beta_n:+.3f}, beta_A = {beta_a:+.3f}")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def traversal_grid(model, image: np.ndarray, code: np.ndarray, dims: list[int], spread: np.ndarray, path,
                   steps=(0, 1, 2, 3), device="cpu") -> None:
    """Figure 3 style: the reconstruction of one image (its posterior mean `code`) while single latent
    dimensions are increased by 0..3 standard deviations of their posterior means over the set."""
    model = model.to(device).eval()
    mu = torch.as_tensor(code, dtype=torch.float32, device=device)[None]
    with torch.no_grad():
        rows = []
        for dim in dims:
            codes = mu.repeat(len(steps), 1)
            codes[:, dim] += torch.tensor(steps, dtype=codes.dtype, device=device) * float(spread[dim])
            rows.append(model.decode(codes).permute(0, 2, 3, 1).cpu().numpy())
    fig, axes = plt.subplots(len(dims), len(steps) + 1, figsize=(1.9 * (len(steps) + 1), 1.9 * len(dims)),
                             squeeze=False)
    for r, dim in enumerate(dims):
        axes[r, 0].imshow(image)
        axes[r, 0].set_ylabel(f"z{dim}", fontsize=9)
        for c, step in enumerate(steps):
            axes[r, c + 1].imshow(np.clip(rows[r][c], 0, 1))
            if r == 0:
                axes[r, c + 1].set_title(f"+{step} sd", fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("original", fontsize=9)
    fig.suptitle("reconstructions while single latent dimensions are increased", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def confusion_matrix(confusion: np.ndarray, classes, path, title: str) -> None:
    confusion = np.asarray(confusion)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5, 4.4))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{confusion[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted count", ylabel="true count", title=title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def readouts_figure(rows: list[dict], stats: dict, chance, published_vae, path) -> None:
    """Each run's per-class AP and recall (dots), their mean ± sd over runs (bars), against chance (the test
    set's prevalence) and the published VAE row (most likely recall)."""
    from matplotlib.lines import Line2D

    classes = [key[len("ap_"):] for key in rows[0] if key.startswith("ap_")]
    x = np.arange(len(classes) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    jitter = np.linspace(-0.15, 0.15, len(rows))
    for ax, measure, title in ((axes[0], "ap", "count AP per class"), (axes[1], "recall", "per-class recall")):
        for k, key in enumerate([f"{measure}_{c}" for c in classes] + [f"mean_{measure}"]):
            values = np.array([np.nan if r[key] is None else 100 * r[key] for r in rows], dtype=np.float64)
            ax.scatter(x[k] + jitter, values, s=14, color="#4c72b0", alpha=0.7, zorder=3)
            stat = stats.get(key)  # none where the test set lacks the class
            if stat is not None:
                ax.errorbar(x[k] + 0.3, 100 * stat["mean"], yerr=None if stat["sd"] is None else 100 * stat["sd"],
                            fmt="o", color="black", ms=4, capsize=3)
        if measure == "ap":
            prevalence = [*(100 * c for c in chance), 100 * float(np.nanmean(chance))]
            ax.scatter(x, prevalence, marker="_", s=500, color="#999999", zorder=2)
        else:
            ax.scatter(x, published_vae, marker="x", s=40, color="#c44e52", zorder=4)
        ax.set(xticks=x, xticklabels=[*classes, "mean"], xlabel="count class", title=title, ylim=(0, 105))
    axes[0].set_ylabel("%")
    # one legend below both panels: inside them it hid the points of a class near 100%
    legend = [Line2D([], [], ls="", marker="o", ms=4, color="#4c72b0", alpha=0.7, label="one run"),
              Line2D([], [], ls="-", marker="o", ms=4, color="black", label="mean ± sd over runs"),
              Line2D([], [], ls="", marker="_", ms=14, color="#999999", label="chance: the class's prevalence (AP)"),
              Line2D([], [], ls="", marker="x", ms=6, color="#c44e52", label="published VAE row, most likely recall")]
    fig.legend(handles=legend, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"subitizing readout over {len(rows)} runs (test set)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save_figure(fig, path, dpi=110)


def readouts_epochs_figure(rows: list[dict], chance, path) -> None:
    """The readouts over the course of training, against the epoch, a line style per run: mean AP, mean recall and
    accuracy, and each class's AP, against chance (the test set's prevalence)."""
    classes = [key[len("ap_"):] for key in rows[0] if key.startswith("ap_")]
    runs = list(dict.fromkeys(row["run"] for row in rows))
    styles = ["o-", "s--", "^:", "d-."]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)

    def percent(chosen, key):
        return [np.nan if row[key] is None else 100 * row[key] for row in chosen]

    for k, run in enumerate(runs):
        chosen = sorted((row for row in rows if row["run"] == run), key=lambda row: row["model_epoch"])
        epochs, style = [row["model_epoch"] for row in chosen], styles[k % len(styles)]
        name = run if len(runs) > 1 else ""
        for j, (key, what) in enumerate((("mean_ap", "mean AP"), ("mean_recall", "mean recall"),
                                         ("accuracy", "accuracy"))):
            axes[0].plot(epochs, percent(chosen, key), style, color=colours[j], label=f"{name} {what}".strip())
        for j, cls in enumerate(classes):
            axes[1].plot(epochs, percent(chosen, f"ap_{cls}"), style, color=colours[j],
                         label=f"{name} {cls}".strip())
    axes[0].axhline(100 * float(np.nanmean(chance)), color="#999999", lw=1, ls="--", label="chance: mean prevalence")
    for j, prevalence in enumerate(chance):
        axes[1].axhline(100 * prevalence, color=colours[j], lw=0.8, ls="--", alpha=0.6)
    axes[0].set(title="test scores", xlabel="epoch of the VAE", ylabel="%", ylim=(0, 105))
    axes[1].set(title="count AP per class (dashed: its prevalence, chance)", xlabel="epoch of the VAE")
    for ax in axes:
        ax.legend(fontsize=7, loc="best", ncol=2 if len(runs) > 1 else 1)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def null_figure(null, decoding, path) -> None:
    """The observed statistics against their random-rotation null distributions, and the decoding R^2."""
    keys = [k for k in ("best_numerosity_unit_r2", "best_area_unit_r2", "best_r2", "selective_units")
            if k in null.observed]
    titles = {"best_numerosity_unit_r2": "R^2 of the best numerosity unit", "best_area_unit_r2": "R^2 of the best "
              "area unit", "best_r2": "best R^2 of Eq. 3", "selective_units": "number-selective units (ANOVA)"}
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(3.6 * (len(keys) + 1), 3.6))
    for ax, key in zip(axes, keys):
        values = null.null[key]
        if key.endswith("r2"):  # from 0: an R^2 of 0 (no unit in any rotation) drew an axis from -0.5
            upper = max(float(values.max()), null.observed[key]) * 1.1 or 0.1
            ax.hist(values, bins=np.linspace(0, upper, 31), color="#bbbbbb")
            ax.set_xlim(0, upper)
            if not values.any() and not null.observed[key]:
                ax.text(0.5, 0.5, "no unit: observed or\nin any rotation (R^2 = 0)", ha="center", fontsize=8,
                        transform=ax.transAxes)
        else:
            ax.hist(values, bins=np.arange(values.min(), max(values.max(), null.observed[key]) + 2) - 0.5,
                    color="#bbbbbb")
        ax.axvline(null.observed[key], color="#c44e52", lw=2, label="observed")
        ax.set(title=f"{titles[key]}\np = {null.p[key]:.3f}", xlabel="value", ylabel="rotations")
        ax.legend(fontsize=7)
    ax = axes[-1]
    names = [f"{d.target}\n{'all' if d.features.startswith('all') else 'units'}" for d in decoding]
    r2 = [d.r2 for d in decoding]
    # A percentile interval need not contain the estimate (few resamples, or a skewed statistic): no bar below 0.
    errors = np.clip(np.array([[d.r2 - d.ci[0] for d in decoding], [d.ci[1] - d.r2 for d in decoding]]), 0, None)
    ax.bar(range(len(decoding)), r2, yerr=errors, color="#4c72b0", capsize=3)
    ax.set(xticks=range(len(decoding)), xticklabels=names, ylim=(min(0, min(r2, default=0)), 1),
           title="population decoding (ridge)", ylabel="cross-validated R^2")
    fig.suptitle(f"observed against {null.rotations} random rotations of the latent space")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def tuning_figure(selectivity, path) -> None:
    """Average tuning curves of the number-selective units per preferred numerosity, on linear and log2 axes."""
    levels = selectivity.levels.astype(float)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    cmap = plt.get_cmap("viridis")
    top = max(selectivity.average, default=1)
    for value, curve in sorted(selectivity.average.items()):
        units = int(np.sum(selectivity.selective & (selectivity.preferred == value)))
        for ax in axes:
            ax.plot(levels, curve, "o-", color=cmap(np.log(value) / max(np.log(top), 1e-9)) if top > 1 else "#4c72b0",
                    label=f"preferred {value} ({units})")
    # the numerosities' range whether or not a curve is drawn (with none, the axes showed 0-1)
    axes[0].set(xlabel="numerosity N", ylabel="normalised mean response", title="linear axis",
                xlim=(levels.min() - 0.5, levels.max() + 0.5), xticks=count_ticks(levels))
    axes[1].set(xscale="log", xlabel="numerosity N (log axis)", title="log axis",
                xlim=(levels.min() / 1.2, levels.max() * 1.2))
    ticks = levels if levels.size <= 10 else [v for v in levels if np.log2(v).is_integer()] or levels
    axes[1].set_xticks(ticks, [f"{v:g}" for v in ticks], fontsize=7)
    axes[1].minorticks_off()
    for ax in axes:
        ax.set_ylim(-0.05, 1.05)
    if selectivity.average:
        axes[0].legend(fontsize=7)
    else:
        axes[0].text(0.5, 0.5, "no number-selective unit", ha="center", transform=axes[0].transAxes)
    fig.suptitle(f"tuning of the {int(selectivity.selective.sum())} number-selective units "
                 f"(two-way ANOVA, p < {selectivity.p_max})")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def comparison_figure(comparison, path) -> None:
    """The psychometric curve of each reference: the share of "more" answers at each N, and the fitted model."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colours = plt.get_cmap("tab10")
    for k, curve in enumerate(comparison.curves):
        colour, w = colours(k % 10), curve.fit.weber_fraction
        ax.scatter(curve.numerosities, curve.share_more, color=colour, s=14 + 40 * curve.images / curve.images.max(),
                   zorder=3, label=f"reference {curve.reference}: w = " + (f"{w:.3f}" if w is not None else "none"))
        grid = np.geomspace(curve.numerosities.min(), curve.numerosities.max(), 200)
        if w is not None:
            ax.plot(grid, ndtr(scaled_difference(grid, curve.reference) / w), color=colour, lw=1.5)
        ax.axvline(curve.reference, color=colour, lw=0.8, ls="--")
    ax.axhline(0.5, color="black", lw=0.5)
    ticks = np.unique(np.concatenate([c.numerosities for c in comparison.curves]))
    ticks = [v for v in ticks if np.log2(v).is_integer()] or list(ticks)
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.minorticks_off()
    pooled, fixed = comparison.pooled.weber_fraction, comparison.pooled_at_fixed_cues
    lines = ["numerosity comparison from the latents (marker area ~ images)",
             f"w over all references: {'none' if pooled is None else f'{pooled:.3f}'}"
             + ("" if fixed is None or fixed.weber_fraction is None else
                f"; at fixed {', '.join(b.cue for b in comparison.pooled_biases)}: {fixed.weber_fraction:.3f}")]
    if comparison.pooled_biases:
        lines.append("bias per doubling (report.md): " + ", ".join(f"{b.cue} {b.per_doubling:+.2f}"
                                                                  for b in comparison.pooled_biases))
    ax.set(ylim=(-0.03, 1.03), xlabel="numerosity N (log axis)", ylabel='share of "more than the reference"')
    ax.set_title("\n".join(lines), fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


STOIANOV_ZORZI_W = 0.15  # the Weber fraction of their network's numerosity comparison
WEBER_KEYS = ("weber_fraction", "weber_fraction_at_fixed_cues")


def has_weber(rows: list[dict]) -> bool:
    return any(row.get("weber_fraction") is not None for row in rows)


def weber_axes(ax, title: str, rows: list[dict]) -> None:
    """An axis of Weber fractions, with Stoianov & Zorzi's network's for reference: logarithmic where they span
    more than a factor of 4 (an untrained model's next to a trained one's), else linear from 0."""
    ax.axhline(STOIANOV_ZORZI_W, color="grey", lw=0.8, ls="--",
               label=f"Stoianov & Zorzi's network ({STOIANOV_ZORZI_W})")
    values = [row[key] for row in rows for key in WEBER_KEYS if row.get(key) is not None] + [STOIANOV_ZORZI_W]
    ax.set(title=title, ylabel="Weber fraction w (smaller: finer)")
    if max(values) <= 4 * min(values):
        ax.set_ylim(0, 1.25 * max(values))
        return
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ticks = [v for v in (0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50) if low <= v <= high]
    ax.set_yticks(ticks, [f"{v:g}" for v in ticks])
    ax.minorticks_off()


def runs_figure(rows: list[dict], null_95th: list[float | None], path) -> None:
    """Best R^2 of each run against the 95th percentile of its null, the decoding R^2 of log N and log A, and the
    Weber fraction of the numerosity comparison where it was run."""
    labels = [r["label"] for r in rows]
    x = np.arange(len(rows))
    panels = 2 + has_weber(rows)
    fig, axes = plt.subplots(1, panels, figsize=(max(7, 1.2 * len(rows) + 4) * panels / 2, 4))
    best = [np.nan if r["best_r2"] is None else r["best_r2"] for r in rows]  # None: a collapsed code, no R^2
    axes[0].bar(x, best, color="#c44e52", label="observed best R^2")
    if any(v is not None for v in null_95th):
        axes[0].scatter(x, [np.nan if v is None else v for v in null_95th], marker="_", s=600, color="black",
                        label="null 95th percentile")
    axes[0].set(xticks=x, title="best R^2 of Eq. 3 per run", ylabel="R^2",
                ylim=(0, 1.25 * max([v for v in best if v == v] + [v or 0 for v in null_95th] + [0.01])))
    axes[0].set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper right", ncol=2)
    for key, colour, offset, name in (("decoding_r2_log_n", "#c44e52", -0.2, "log N"),
                                      ("decoding_r2_log_a", "#4c72b0", 0.2, "log A")):
        axes[1].bar(x + offset, [np.nan if r[key] is None else r[key] for r in rows], width=0.4, color=colour,
                    label=name)
    axes[1].set(xticks=x, title="population decoding R^2 per run", ylabel="R^2", ylim=(0, 1.15))
    axes[1].set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    axes[1].legend(fontsize=7, loc="upper right", ncol=2)
    if panels == 3:
        for key, face, name in (("weber_fraction", "#c44e52", "w"), ("weber_fraction_at_fixed_cues", "none",
                                                                        "w at fixed cues (area, field)")):
            axes[2].scatter(x, [np.nan if r.get(key) is None else r[key] for r in rows], facecolors=face,
                            edgecolors="#c44e52", zorder=3, label=name)
        weber_axes(axes[2], "numerosity comparison per run", rows)
        axes[2].set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        axes[2].legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


UNIT_COUNTS = (("numerosity_units", "o-", "numerosity units"), ("area_units", "s:", "area units"),
               ("selective_units", "^--", "number-selective (ANOVA)"))
UNIT_COLOURS = {"numerosity_units": COLOURS[NUMEROSITY], "area_units": COLOURS[AREA], "selective_units": "#55a868"}


def epochs_figure(rows: list[dict], course: dict, null_95th: list[float | None], path) -> None:
    """The course of training: per run, against the epoch, the best R^2 with its null's 95th percentile, the units
    found (with several runs, their mean over the runs bold, from `course`: report.epochs_summary), the
    population decoding R^2, and the Weber fraction of the numerosity comparison where it was run."""
    panels = 3 + has_weber(rows)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2))
    runs = list(dict.fromkeys(row["run"] for row in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def values(key, chosen):
        return [np.nan if row[key] is None else row[key] for row in chosen]  # None: a collapsed code

    for k, run in enumerate(runs):
        order = sorted((i for i, row in enumerate(rows) if row["run"] == run), key=lambda i: rows[i]["model_epoch"])
        chosen = [rows[i] for i in order]
        epochs = [row["model_epoch"] for row in chosen]
        colour, name = colours[k % len(colours)], run if len(runs) > 1 else ""
        axes[0].plot(epochs, values("best_r2", chosen), "o-", color=colour, label=f"{name} observed".strip())
        axes[0].plot(epochs, [np.nan if null_95th[i] is None else null_95th[i] for i in order], "_--", color=colour,
                     markersize=14, label=f"{name} null 95th percentile".strip())
        for key, style, what in UNIT_COUNTS:  # with several runs, faint: their mean is drawn over them below
            axes[1].plot(epochs, values(key, chosen), style, color=UNIT_COLOURS[key], alpha=0.3 if name else 1,
                         ms=3 if name else 6, label=None if name else what)
        axes[2].plot(epochs, values("decoding_r2_log_n", chosen), "o-", color=colour, label=f"{name} log N".strip())
        axes[2].plot(epochs, values("decoding_r2_log_a", chosen), "s:", color=colour, label=f"{name} log A".strip())
        if panels == 4:
            axes[3].plot(epochs, values("weber_fraction", chosen), "o-", color=colour, label=f"{name} w".strip())
            axes[3].plot(epochs, values("weber_fraction_at_fixed_cues", chosen), "o--", color=colour, mfc="none",
                         label=f"{name} w at fixed cues".strip())
    if len(runs) > 1:
        by_epoch = course["by_epoch"]
        for key, style, what in UNIT_COUNTS:
            axes[1].plot([int(epoch) for epoch in by_epoch], [stats[key]["mean"] for stats in by_epoch.values()], style,
                         color=UNIT_COLOURS[key], lw=2.2, label=f"{what}: mean over runs")
    lowest = min([row[key] for row in rows for key in ("decoding_r2_log_n", "decoding_r2_log_a")
                  if row[key] is not None] + [0])  # cross-validated R^2 is below 0 where a code holds nothing
    counts = [row[key] or 0 for row in rows for key in ("numerosity_units", "area_units", "selective_units")]
    axes[0].set(title="best R^2 of Eq. 3", xlabel="epoch", ylabel="R^2", ylim=(0, None))
    axes[1].set(title="units found", xlabel="epoch", ylabel="dimensions", ylim=(-0.2, max(counts + [1]) + 0.5))
    axes[1].yaxis.get_major_locator().set_params(integer=True)
    axes[2].set(title="population decoding R^2", xlabel="epoch", ylabel="R^2", ylim=(lowest - 0.05, 1.05))
    axes[2].axhline(0, color="grey", lw=0.6)
    if panels == 4:
        weber_axes(axes[3], "numerosity comparison", rows)
        axes[3].set(xlabel="epoch")
    for ax in axes:
        ax.legend(fontsize=7, loc="best")
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
