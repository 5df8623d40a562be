"""Checkpoints: written atomically, loadable with `torch.load(weights_only=True)`, self-describing.

A checkpoint holds the model's config (JSON), so `load_model(path)` rebuilds the model from the file
alone; `last.pt` also holds everything `--resume` needs (optimizer, scheduler, epoch, history).
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from synthgen.atomic import write_atomic
from vae.model import VAE, ModelConfig

FORMAT = "vae-train-checkpoint"
VERSION = 1


def save_checkpoint(path, state: dict) -> None:
    """Write a checkpoint so that it is either complete on disk or not there at all."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True (tensors, numbers, strings, lists and dicts only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a vae-train checkpoint")
    return state


def load_model(path, map_location="cpu") -> tuple[VAE, dict]:
    """The trained model (in eval mode) and the checkpoint's metadata, from the checkpoint alone."""
    state = load_checkpoint(path, map_location)
    model = VAE(ModelConfig.from_json(state["model_config"]))
    model.load_state_dict(state["model"])
    return model.eval(), {k: v for k, v in state.items() if k not in ("model", "optimizer", "scheduler")}
