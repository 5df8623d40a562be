"""Figures of the analyses, in the style of the paper's Figures 2-4, and the readout's confusion matrix."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from analysis.regression import AREA, NUMEROSITY  # noqa: E402

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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def response_profile(dim: int, z: np.ndarray, count: np.ndarray, area: np.ndarray, label: str, r2: float,
                     beta_n: float, beta_a: float, path, area_bins: int = 4) -> None:
    """Figure 4 style: (left) mean response per N for each cumulative-area bin; (right) the response
    against log A, coloured by N, with its binned means."""
    keep = count > 0
    z, count, area = z[keep], count[keep], area[keep]
    log_area = np.log10(area)
    edges = np.quantile(log_area, np.linspace(0, 1, area_bins + 1))
    bins = np.clip(np.searchsorted(edges, log_area, side="right") - 1, 0, area_bins - 1)
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
                         label=f"A in 10^[{edges[b]:.2f}, {edges[b + 1]:.2f}]")
    axes[0].set(xlabel="number of objects N", ylabel=f"mean response of z{dim}", xticks=values,
                title="response per N, for each cumulative-area bin")
    axes[0].legend(fontsize=7)
    for v in values:
        chosen = count == v
        axes[1].scatter(log_area[chosen], z[chosen], s=3, alpha=0.25, color=cmap(v / values.max()), label=f"N = {v}")
    centres = (edges[:-1] + edges[1:]) / 2
    axes[1].plot(centres, [z[bins == b].mean() for b in range(area_bins)], "k-o", label="binned mean")
    axes[1].set(xlabel="cumulative area A (log10 pixels)", ylabel=f"z{dim}", title="response against log A")
    axes[1].legend(fontsize=7, markerscale=3)
    kind = f"{label} unit" if label else "best-fitting dimension (no unit)"
    fig.suptitle(f"z{dim}: {kind}; R^2 = {r2:.3f}, beta_N = {beta_n:+.3f}, beta_A = {beta_a:+.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    fig.savefig(path, dpi=110)
    plt.close(fig)
