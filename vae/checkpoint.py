"""Checkpoints: written atomically, loadable with `torch.load(weights_only=True)`, self-describing.

A checkpoint holds the model's config (JSON), so `load_model(path)` rebuilds the model from the file
alone; `last.pt` also holds everything `--resume` needs (optimizer, scheduler, epoch, history).
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from common.atomic import write_atomic
from common.errors import UserError, exception_line
from vae.model import VAE, ModelConfig

FORMAT = "vae-train-checkpoint"
VERSION = 1
REQUIRED = ("model_config", "model", "epoch")


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file."""


def save_checkpoint(path, state: dict) -> None:
    """Write a checkpoint so that it is either complete on disk or not there at all."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path, map_location="cpu", mmap: bool = False) -> dict:
    """Load a checkpoint with weights_only=True (tensors, numbers, strings, lists and dicts only).
    Raises CheckpointError, naming the file, for anything that is not a whole vae-train checkpoint.
    `mmap`: map the tensors instead of reading them; a check of the file's structure that costs no memory."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (give best.pt or last.pt of a vae-train run)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001  (whatever torch.load raises, the file is not a checkpoint)
        raise CheckpointError(f"{path}: not a readable vae-train checkpoint: truncated, damaged, or a file that holds "
                              f"more than tensors and plain values ({exception_line(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vae-train checkpoint (a torch file of another kind); give best.pt or "
                              "last.pt of a vae-train run")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"{path}: an incomplete vae-train checkpoint (no {', '.join(missing)})")
    return state


def load_model_and_metadata(path, map_location="cpu") -> tuple[VAE, dict]:
    """The trained model (in eval mode) and the checkpoint's other entries (epoch, settings...)."""
    state = load_checkpoint(path, map_location)
    try:
        model = VAE(ModelConfig.from_json(state["model_config"]))
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: its weights do not fit the model it describes ({str(exc)[:160]})") from None
    return model.eval(), {k: v for k, v in state.items() if k not in ("model", "optimizer", "scheduler")}


def load_model(path, map_location="cpu") -> VAE:
    """The trained model, in eval mode, rebuilt from the checkpoint alone."""
    return load_model_and_metadata(path, map_location)[0]
