"""`synthgen inspect`: a set's statistics, a count-versus-area figure and a contact sheet (PNGs)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from common.atomic import save_figure, write_atomic  # noqa: E402
from synthgen.manifest import write_json_atomic  # noqa: E402
from synthgen.reader import ShardSet  # noqa: E402
from synthgen.stats import (count_histogram, corr_text, field_summary, label_summary,  # noqa: E402
                            source_area_association)


def count_ticks(values: np.ndarray, most: int = 16) -> np.ndarray:
    """Tick positions for count values: all of them, or every k-th (the first kept) where more than `most` would
    print over each other (the dot stimuli's 32 counts)."""
    values = np.asarray(values)
    return values if values.size <= most else values[::-(-values.size // most)]


def plot_count_vs_area(count: np.ndarray, target: np.ndarray, visible: np.ndarray, size: int, path,
                       corr_visible: float | None) -> None:
    """Three panels: the count histogram, N against visible area A, and log A per N."""
    canvas = size * size
    values = np.unique(count)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    _histogram(axes[0], count)
    with_objects = count > 0
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-0.28, 0.28, with_objects.sum())
    # faint where tens of thousands of points overlap, but still seen where there are a few hundred
    alpha = min(0.8, max(0.25, 300 / max(1, int(with_objects.sum()))))
    axes[1].scatter(count[with_objects] + jitter, visible[with_objects] / canvas, s=3, alpha=alpha, color="#4c72b0",
                    linewidths=0)
    nonzero = values[values > 0]
    if nonzero.size:
        medians = [np.median(visible[count == v] / canvas) for v in nonzero]
        axes[1].plot(nonzero, medians, "o-", color="#c44e52", label="median")
        axes[1].legend(loc="upper right")
    else:  # a set of empty scenes (--count 0): no area to show
        for ax in axes[1:]:
            ax.text(0.5, 0.5, "no image has objects", transform=ax.transAxes, ha="center", va="center")
    axes[1].set(yscale="log", xlabel="number of objects N", ylabel="visible cumulative area A (fraction of canvas)",
                title=f"N against A: corr(log N, log A) = {corr_text(corr_visible)}", xticks=count_ticks(values))
    if (~with_objects).any():
        axes[1].text(0.01, 0.02, f"{int((~with_objects).sum())} images with N = 0 (A = 0) not shown",
                     transform=axes[1].transAxes, fontsize=8)
    groups = [np.log10(visible[count == v] / canvas) for v in nonzero]
    if groups:
        axes[2].boxplot(groups, positions=nonzero, widths=0.5, showfliers=False)
        ratio = target[with_objects] / canvas
        axes[2].axhline(np.log10(ratio.min()), color="grey", lw=0.8, ls="--", label="target range")
        axes[2].axhline(np.log10(ratio.max()), color="grey", lw=0.8, ls="--")
        axes[2].legend(loc="upper right")
        ticks = count_ticks(nonzero)
        axes[2].set_xticks(ticks, [str(v) for v in ticks])  # the boxplot labelled every position
    axes[2].set(xlabel="number of objects N", ylabel="log10 visible area (fraction of canvas)",
                title="area distribution per N (same = independent)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _histogram(ax, count: np.ndarray) -> None:
    values, freq = np.unique(count, return_counts=True)
    ax.bar(values, freq, color="#4c72b0")
    ax.set(xlabel="number of objects N", ylabel="images", title="count histogram", xticks=count_ticks(values))


def plot_count_histogram(count: np.ndarray, path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4.2))
    _histogram(ax, count)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def sample_indices(count: np.ndarray, n_samples: int, seed: int = 0) -> np.ndarray:
    """About n_samples images spread evenly over the count values, in count order."""
    rng = np.random.default_rng(seed)
    values = np.unique(count)
    per_value = max(1, n_samples // len(values))
    picks = [rng.choice(np.flatnonzero(count == v), min(per_value, int((count == v).sum())), replace=False)
             for v in values]
    return np.concatenate([np.sort(p) for p in picks])[:n_samples]


TILE_SIDE = 160, 320  # the sides a sample is shown at: smaller images are enlarged by whole pixels, larger shrunk
CAPTION_HEIGHT, GAP = 16, 4
BOX_COLOUR = (255, 230, 0)


def tile_scale(image_size: int) -> int | float:
    """How much a sample is enlarged (a whole number) or shrunk on the contact sheet."""
    smallest, largest = TILE_SIDE
    if image_size < smallest:
        return -(-smallest // image_size)
    return min(1.0, largest / image_size)


def contact_sheet(shards: ShardSet, indices: np.ndarray, path, columns: int = 8) -> None:
    """Sample images with their labels (N, visible area) and object boxes, as one PNG.

    Drawn straight into one array, each image at its own pixels (or whole multiples of them; images larger
    than 320 pixels are shrunk to 320): tens of milliseconds, where a matplotlib grid of 40 panels took
    3-4 s."""
    scale = tile_scale(shards.image_size)
    side = round(shards.image_size * scale)
    columns = max(1, min(columns, len(indices)))
    rows = -(-len(indices) // columns)
    sheet = np.full((GAP + rows * (CAPTION_HEIGHT + side + GAP), GAP + columns * (side + GAP), 3), 255, np.uint8)
    labels, canvas = shards.labels, shards.image_size**2
    captions = []
    for k, (index, image) in enumerate(zip(indices.tolist(), shards.images(indices))):
        top, left = tile_origin(k, columns, side)
        tile = sheet[top:top + side, left:left + side]
        tile[:] = image if scale == 1 else cv2.resize(
            image, (side, side), interpolation=cv2.INTER_NEAREST if scale > 1 else cv2.INTER_AREA)
        for x0, y0, x1, y1 in shards.objects(index)["box"].tolist():
            cv2.rectangle(tile, (round(x0 * scale), round(y0 * scale)), (round(x1 * scale) - 1, round(y1 * scale) - 1),
                          BOX_COLOUR, 1)
        area = labels["visible_area"][index]
        captions.append(((left, top - CAPTION_HEIGHT + 2), f"#{index}  N={labels['count'][index]}"
                         + ("" if np.isnan(area) else f"  A={area / canvas:.1%}")))
    picture = Image.fromarray(sheet)
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default(size=CAPTION_HEIGHT - 4)
    for origin, text in captions:
        draw.text(origin, text, fill=(0, 0, 0), font=font)
    write_atomic(path, lambda handle: picture.save(handle, format="PNG"))


def tile_origin(k: int, columns: int, side: int) -> tuple[int, int]:
    """(top, left) pixel of the k-th sample's image on the contact sheet."""
    row, column = divmod(k, columns)
    return GAP + row * (CAPTION_HEIGHT + side + GAP) + CAPTION_HEIGHT, GAP + column * (side + GAP)


def inspect_set(root, out_dir=None, n_samples: int = 40, verify: bool = True, progress: bool = False) -> dict:
    """Compute a set's statistics and write inspect.json and PNG figures (a contact sheet, and the count
    against area figure for synthetic sets or the count histogram for natural ones)."""
    with ShardSet(root, verify=verify, progress=progress) as shards:
        out = Path(out_dir) if out_dir else shards.root / "inspect"
        out.mkdir(parents=True, exist_ok=True)
        labels = shards.labels
        figures = {"contact_sheet": str(out / "contact_sheet.png")}
        if shards.kind == "natural":
            summary = {"n_images": len(shards), "count_histogram": count_histogram(labels["count"])}
            figures["count_histogram"] = str(out / "count_histogram.png")
            plot_count_histogram(labels["count"], figures["count_histogram"])
        else:
            summary = label_summary(labels["count"], labels["target_area"], labels["visible_area"], shards.image_size)
            if shards.kind == "dots":  # no source objects; their hull instead
                summary["field_area"] = field_summary(labels["count"], labels["field_area"], shards.image_size)
            else:
                offsets, objects = shards.object_table()
                summary["source_area_association"] = source_area_association(offsets, objects["source_id"],
                                                                              labels["visible_area"])
                # what the labels cannot show: which sources the design left out, and what the masks were
                built = shards.manifest.get("summary") or {}
                summary |= {key: built[key] for key in ("excluded_objects", "masks") if built.get(key)}
            figures["count_vs_area"] = str(out / "count_vs_area.png")
            plot_count_vs_area(labels["count"], labels["target_area"], labels["visible_area"], shards.image_size,
                               figures["count_vs_area"], summary["corr_log_count_log_area"]["visible"])
        contact_sheet(shards, sample_indices(labels["count"], n_samples), figures["contact_sheet"])
        report = {"set": str(shards.root), "kind": shards.kind, "summary": summary, "figures": figures,
                  "build": shards.manifest.get("config")}
        write_json_atomic(out / "inspect.json", report)
    return report
