"""Posterior means of a shard set under a trained VAE: the input of both analyses."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from common.errors import UsageError
from synthgen import ShardSet
from vae.augment import to_float
from vae.checkpoint import CheckpointError, load_checkpoint, load_model_and_metadata, run_identity


def encode_set(model, shards: ShardSet, device: torch.device, batch_size: int = 256,
               progress: bool = True) -> np.ndarray:
    """The posterior mean of every image of a set, (n, latent) float64, in the set's order."""
    model = model.to(device).eval()
    size = model.config.image_size
    means = []
    with torch.no_grad():
        for start in tqdm(range(0, len(shards), batch_size), desc=f"encoding {shards.root.name}", unit="batch",
                          disable=not progress, dynamic_ncols=True):
            images = torch.from_numpy(shards.images(np.arange(start, min(start + batch_size, len(shards)))))
            x = to_float(images.to(device), size).contiguous(memory_format=torch.channels_last)
            means.append(model.encode(x)[0].double().cpu().numpy())
    return np.concatenate(means) if means else np.zeros((0, model.config.latent))


def load_encoder(checkpoint, device: torch.device):
    """The model of a vae-train checkpoint and its metadata."""
    try:
        model, meta = load_model_and_metadata(checkpoint, map_location="cpu")
    except CheckpointError as exc:
        raise CheckpointError(f"--checkpoint {exc}") from None
    return model.to(device).eval(), meta


def check_checkpoints(paths) -> None:
    """Refuse a missing, truncated or foreign checkpoint before any is used: with several runs, the last one
    would otherwise fail after minutes of analysing the others. The tensors are mapped, not read.

    Several checkpoints are several runs, summarised over (mean and sd): two of one run (its best.pt and
    last.pt, or a copy of it) are refused, since they would count one run twice."""
    runs = {}
    for path in paths:
        try:
            state = load_checkpoint(path, mmap=True)
        except CheckpointError as exc:
            raise CheckpointError(f"--checkpoint {exc}") from None
        identity = run_identity(state)
        if identity in runs:
            raise UsageError(f"--checkpoint {runs[identity]} and {path} are of one run (the same settings and --seed "
                             "on the same sets: a run's best.pt and last.pt, or a copy of a run), and the summary "
                             "over runs would count it twice; give one checkpoint per run, or analyse them one at a "
                             "time")
        runs[identity] = path
