"""Label statistics of a set: count histogram, area distributions, corr(log N, log A), and for dot arrays their
hull."""
from __future__ import annotations

import math

import numpy as np


def corr_log(count: np.ndarray, area: np.ndarray) -> float | None:
    """Pearson correlation of log N and log A over images with N >= 1 (log 0 is undefined); None where it is
    undefined: fewer than 3 such images, or one count (or one area) among them."""
    keep = (count > 0) & (area > 0)
    if keep.sum() < 3:
        return None
    x, y = np.log(count[keep]), np.log(area[keep])
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # not std: rounding leaves the std of equal values at 1e-16, not 0
        return None
    r = float(np.corrcoef(x, y)[0, 1])
    return r if math.isfinite(r) else None


def sd_at_fixed_count(count: np.ndarray, values: np.ndarray) -> float:
    """The sd of `values` around their mean at each count: how far they vary where the count does not."""
    _, inverse = np.unique(count, return_inverse=True)
    means = np.bincount(inverse, weights=values) / np.bincount(inverse)
    return float(np.sqrt(np.mean((values - means[inverse]) ** 2)))


# The hull of one to three dots is little more than the dots themselves; from four on it spans the array, and the
# numerosity comparison's references (8 and 16, N from half to twice each) start there.
HULL_FROM_COUNT = 4


def field_summary(count: np.ndarray, field_area: np.ndarray, size: int) -> dict:
    """How the dot arrays' convex hull goes with N: its range, corr(log N, log hull) and its sd at a fixed N (in
    doublings), over the images with N >= HULL_FROM_COUNT; what the numerosity comparison has to tell number from."""
    field_area = np.asarray(field_area, dtype=np.float64)  # stored as float32
    keep = (count >= HULL_FROM_COUNT) & (field_area > 0)
    if keep.sum() < 3:
        return {}
    return {"from_count": HULL_FROM_COUNT, "fraction": _quantiles(field_area[keep] / float(size * size)),
            "corr_log_count": corr_log(count[keep], field_area[keep]),
            "sd_log2_at_fixed_count": sd_at_fixed_count(count[keep], np.log2(field_area[keep]))}


def corr_text(r: float | None) -> str:
    return "undefined" if r is None else f"{r:+.3f}"


def _quantiles(values: np.ndarray) -> dict:
    if values.size == 0:
        return {}
    q = np.quantile(values, [0, 0.05, 0.5, 0.95, 1])
    return dict(zip(("min", "p05", "median", "p95", "max"), (round(float(v), 6) for v in q)))


def count_histogram(count: np.ndarray) -> dict[str, int]:
    values, freq = np.unique(count, return_counts=True)
    return {str(int(v)): int(f) for v, f in zip(values, freq)}


def label_summary(count: np.ndarray, target_area: np.ndarray, visible_area: np.ndarray, size: int) -> dict:
    """A JSON-ready summary of a set's labels; areas as fractions of the canvas."""
    canvas = float(size * size)
    with_objects = count > 0
    return {
        "n_images": int(count.size),
        "count_histogram": count_histogram(count),
        "target_area_fraction": _quantiles(target_area[with_objects] / canvas),
        "visible_area_fraction": _quantiles(visible_area[with_objects] / canvas),
        "corr_log_count_log_area": {"target": corr_log(count, target_area), "visible": corr_log(count, visible_area)},
    }


def summary_lines(summary: dict) -> list[str]:
    """The summary as a few human-readable lines."""
    hist = "  ".join(f"{k}: {v}" for k, v in summary["count_histogram"].items())
    lines = [f"count histogram   {hist}"]
    if "corr_log_count_log_area" not in summary:  # a natural set: labels only
        return lines
    for key, label in (("target_area_fraction", "target area"), ("visible_area_fraction", "visible area")):
        q = summary[key]
        if q:
            lines.append(f"{label:<17} {q['min']:.1%} .. {q['max']:.1%} of the canvas (median {q['median']:.1%}, "
                         f"5-95% {q['p05']:.1%} .. {q['p95']:.1%}), images with N >= 1")
    r = summary["corr_log_count_log_area"]
    lines.append(f"corr(log N, log A) {corr_text(r['visible'])} visible, {corr_text(r['target'])} target (N >= 1; "
                 "near 0 means area and number are independent; undefined with one count or one area)")
    field = summary.get("field_area")
    if field:
        q = field["fraction"]
        lines.append(f"hull (field area) {q['min']:.1%} .. {q['max']:.1%} of the canvas; corr(log N, log hull) "
                     f"{corr_text(field['corr_log_count'])}, sd {field['sd_log2_at_fixed_count']:.2f} doublings at a "
                     f"fixed N (N >= {field['from_count']}; the closer the hull goes with N, the less the numerosity "
                     "comparison tells them apart: --field-range)")
    association = summary.get("source_area_association")
    if association:
        lines.append(f"objects vs area   Cramer's V {association['cramers_v']:.3f}, chi-square p "
                     f"{association['chi2_p']:.2g} ({association['sources']} source objects x area quintiles"
                     + ("; sparse table, p approximate" if association.get("sparse") else "")
                     + "; V near 0: which objects appear does not depend on the area)")
    excluded = summary.get("excluded_objects")
    if excluded:
        lines.append(f"excluded objects  {len(excluded)}, too large (or too hard to pack) at the top of --area-range "
                     "(manifest.json: summary.excluded_objects)")
    masks = summary.get("masks")
    if masks:
        lines.append(f"object masks      {masks['binary']} binary, {masks['soft']} soft-edged, {masks['graded']} "
                     f"graded; {masks['several_objects_largest_kept']} with several objects (largest kept), "
                     f"{masks['specks_removed']} with specks removed")
    return lines


def source_area_association(offsets: np.ndarray, source_ids: np.ndarray, area: np.ndarray, bins: int = 5) -> dict:
    """How much which source objects appear depends on the cumulative area: a contingency table of
    (source object, area quintile) over the images with objects (each image counts each of its distinct
    sources once), its chi-square test, and Cramer's V with Bergsma's (2013) bias correction, which
    stays near 0 for independent variables even when the table is sparse (thousands of sources)."""
    counts = np.diff(offsets)
    images = np.flatnonzero((counts > 0) & (area > 0))
    if images.size < 2 * bins:
        return {}
    edges = np.quantile(np.log(area[images]), np.linspace(0, 1, bins + 1)[1:-1])
    area_bin = np.full(counts.size, -1)
    area_bin[images] = np.searchsorted(edges, np.log(area[images]), side="right")
    image_of = np.repeat(np.arange(counts.size), counts)  # the image of every object
    counted = area_bin[image_of] >= 0
    # (image, source) pairs, each distinct pair once: a source repeated within an image counts once
    base = int(source_ids.max()) + 1
    image, source = np.divmod(np.unique(image_of[counted] * base + source_ids[counted]), base)
    sources, row = np.unique(source, return_inverse=True)
    table = np.zeros((sources.size, bins))
    np.add.at(table, (row, area_bin[image]), 1)
    table = table[:, table.sum(axis=0) > 0]
    if min(table.shape) < 2:
        return {"sources": int(sources.size), "cramers_v": 0.0, "chi2_p": 1.0}
    chi2, p, dof, expected = chi_square_test(table)
    n, (r, k) = table.sum(), table.shape
    phi2 = max(0.0, chi2 / n - (k - 1) * (r - 1) / (n - 1))
    r_corrected, k_corrected = r - (r - 1) ** 2 / (n - 1), k - (k - 1) ** 2 / (n - 1)
    v = math.sqrt(phi2 / max(min(k_corrected - 1, r_corrected - 1), 1e-12))
    return {"sources": int(r), "area_bins": int(k), "cramers_v": float(v), "chi2": float(chi2), "dof": int(dof),
            "chi2_p": float(p), "sparse": bool(np.mean(expected < 5) > 0.2)}


def chi_square_test(table: np.ndarray) -> tuple[float, float, int, np.ndarray]:
    """Pearson's chi-square test of independence of a contingency table: (chi2, p, dof, expected counts),
    with Yates' correction for a 2x2 table, as scipy.stats.chi2_contingency computes it. Written out
    because importing scipy.stats took a second of every `synthgen inspect`."""
    from scipy.special import chdtrc

    n = table.sum()
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / n
    dof = (table.shape[0] - 1) * (table.shape[1] - 1)
    observed = table
    if dof == 1:  # Yates: each count moved half a unit towards its expectation, never past it
        difference = expected - table
        observed = table + np.sign(difference) * np.minimum(0.5, np.abs(difference))
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    return chi2, float(chdtrc(dof, chi2)), dof, expected


def mask_summary(masks: list[tuple[str, dict]], threshold: float) -> tuple[dict, list[dict]]:
    """How many object masks were binary, soft-edged or graded, how many showed several objects (and
    kept their largest part) or had specks removed; and a note per mask that was changed."""
    summary = {"binary": 0, "soft": 0, "graded": 0, "several_objects_largest_kept": 0, "specks_removed": 0}
    notes = []
    for path, info in masks:
        summary[info["kind"]] += 1
        changed = []
        if info["kind"] == "graded":
            changed.append(f"graded mask (grey levels {', '.join(map(str, info['levels'][:8]))}), cut at "
                           f"{threshold:g} of its maximum")
        if info["parts"] > 1:
            summary["several_objects_largest_kept"] += 1
            changed.append(f"shows {info['parts']} separate objects: the largest is kept")
        if info["specks"]:
            summary["specks_removed"] += 1
            changed.append(f"{info['specks']} speck(s) of noise removed")
        if changed:
            notes.append({"path": path, "note": "; ".join(changed)})
    return summary, notes
