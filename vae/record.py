"""What a run records of itself: config.json (its settings, model, data, split, device, compile check, machine
and command: every figure traced back to what made it), and the opening lines of its log."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from common.machine import describe as describe_machine
from common.settings import to_dict
from vae.checkpoint import kept_epochs, kept_epochs_line
from vae.config import TrainConfig
from vae.data import mixing_plan
from vae.model import describe, parameter_counts
from vae.runtime import Runtime

if TYPE_CHECKING:
    from vae.train import Run


def machine(runtime: Runtime) -> str:
    """The main process's machine, its GPU when it trains on one: the images/s of metrics.jsonl depend on it."""
    return describe_machine("numpy", "torch", gpu=runtime.device.type == "cuda")


def run_record(run: Run, config: TrainConfig, runtime: Runtime, command: list[str]) -> dict:
    """config.json's record: the settings, the model, the data and the machine the run trains with."""
    return {"train": to_dict(config), "model": json.loads(run.model.config.to_json()),
            "parameters": parameter_counts(run.model), "vgg": run.vgg_record, "world_size": runtime.world,
            "optimizer": {"name": "Adam", "fused": bool(run.optimizer.defaults.get("fused"))},
            "compile": run.compile_check, "device": str(runtime.device), "amp": "bf16" if runtime.amp else "off",
            "torch": torch.__version__, "machine": machine(runtime), "command": command,
            "data": {**run.data.split.counts(), "sets": run.data.sets(), "feed": asdict(run.data.feed_choice)}}


def log_opening(run: Run, config: TrainConfig, runtime: Runtime, resume: bool, start: dict | None = None) -> None:
    """The opening lines of the log (`start`: a resumed run's untrained start, to keep)."""
    split = run.data.split
    counts = split.counts()
    run.log(describe(run.model))
    run.log(f"data: {counts['synthetic_train']} synthetic and {counts['natural_train']} natural training images, "
            f"{counts['validation']} held out; natural examples removed for class balance: {split.dropped or 'none'}")
    mixing = mixing_plan(config.training.epochs, config.data.natural_start, config.data.natural_ramp,
                         int(split.train_natural_order.size))
    if mixing:
        run.log(mixing)
    run.log(f"loss: {config.loss.alpha} * KL + {config.loss.beta} * {config.loss.recon} reconstruction "
            f"({config.loss.rec_reduction} over elements per image, mean over the batch); VGG weights: "
            f"{(run.vgg_record or {}).get('source', 'not used')}")
    run.log(f"device {runtime.device} x {runtime.world} process(es), amp {'bf16' if runtime.amp else 'off'}, "
            f"{'compiled' if run.compiled_batch else 'eager'}, {run.data.feed_choice.line()}"
            + (f", resuming after epoch {run.epoch}" if resume else ""))
    if config.training.save_every:
        epochs = kept_epochs(run.epoch, config.training.epochs, config.training.save_every, new=not resume)
        each = sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
        run.log(kept_epochs_line(epochs, each, shutil.disk_usage(run.out).free, start=start is not None))
