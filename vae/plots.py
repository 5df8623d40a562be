"""Figures of a training run: inputs against reconstructions, and the loss curves."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from common.atomic import save_figure, write_atomic  # noqa: E402

GAP = 4


def reconstruction_grid(inputs: np.ndarray, outputs: np.ndarray, path, title: str) -> None:
    """Top row inputs, bottom row posterior-mean reconstructions; arrays (n, H, W, 3) in [0, 1].
    Drawn with PIL: it is written every epoch, and matplotlib would take most of a short epoch."""
    n, h, w, _ = inputs.shape
    scale = max(1, round(128 / h))  # small images are enlarged (nearest neighbour) to be seen
    h, w = h * scale, w * scale
    header = 18
    canvas = Image.new("RGB", (n * (w + GAP) + GAP, header + 2 * (h + GAP) + GAP), "white")
    for row, images in enumerate((inputs, outputs)):
        for column, image in enumerate(images):
            tile = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).resize((w, h), Image.NEAREST)
            canvas.paste(tile, (GAP + column * (w + GAP), header + GAP + row * (h + GAP)))
    ImageDraw.Draw(canvas).text((GAP, 3), f"{title}   (top: input, bottom: reconstruction)", fill="black")
    write_atomic(path, lambda handle: canvas.save(handle, format="PNG"))


def loss_curves(history: list[dict], path) -> None:
    """Total loss, KL and reconstruction per epoch (train and validation), and the learning rate."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    # tight_layout is slow; the margins leave room for log-axis labels such as 2.4x10^4
    fig.subplots_adjust(left=0.06, right=0.96, bottom=0.14, top=0.9, wspace=0.35)
    for ax, key, title in zip(axes, ("loss", "kl", "rec"), ("total loss", "KL (per image)", "reconstruction")):
        ax.plot(epochs, [h["train"][key] for h in history], "o-", ms=3, label="train")
        ax.plot(epochs, [h["validation"][key] for h in history], "s-", ms=3, label="validation")
        ax.set(title=title, xlabel="epoch", yscale="log" if key != "kl" else "linear")
        ax.legend()
    axes[3].plot(epochs, [h["lr"] for h in history], "o-", ms=3, color="grey")
    axes[3].set(title="learning rate (grey), active dimensions (red)", xlabel="epoch", yscale="log")
    twin = axes[3].twinx()
    twin.plot(epochs, [h["active_dims"] for h in history], "^-", ms=3, color="#c44e52")
    latent = len(history[-1].get("kl_per_dim", [])) if history else 0
    if latent:  # out of all the dimensions: a flat line at 16 of 16 read as 15.2-16.8
        twin.set_ylim(0, latent * 1.05)
    twin.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:  # whole epochs only
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_figure(fig, path, dpi=90)
