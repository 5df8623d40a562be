"""Label statistics of a set: count histogram, area distributions, corr(log N, log A)."""
from __future__ import annotations

import math

import numpy as np


def corr_log(count: np.ndarray, area: np.ndarray) -> float:
    """Pearson correlation of log N and log A over images with N >= 1 (log 0 is undefined)."""
    keep = (count > 0) & (area > 0)
    if keep.sum() < 3:
        return math.nan
    x, y = np.log(count[keep]), np.log(area[keep])
    if x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


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
    lines.append(f"corr(log N, log A) {r['visible']:+.3f} visible, {r['target']:+.3f} target (N >= 1; near 0 means "
                 "area and number are independent)")
    masks = summary.get("masks")
    if masks:
        lines.append(f"object masks      {masks['binary']} binary, {masks['soft']} soft-edged, {masks['graded']} "
                     f"graded; {masks['several_objects_largest_kept']} with several objects (largest kept), "
                     f"{masks['specks_removed']} with specks removed")
    return lines


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
