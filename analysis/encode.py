"""Posterior means of a shard set under a trained VAE: the input of both analyses."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.errors import UsageError, UserError
from synthgen import ShardSet
from synthgen.overlap import shared_images
from vae.augment import to_float
from vae.checkpoint import CheckpointError, load_checkpoint, load_model_and_metadata, run_identity, saved_sets
from vae.config import EPOCHS_FOLDER
from vae.model import ModelConfig


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


def image_sizes(state: dict) -> tuple[int, set[int]]:
    """The side a checkpoint's model works at, and those of the sets its run trained on (recorded from this
    version on; empty before)."""
    trained = {int(s["image_size"]) for s in saved_sets(state) or [] if "image_size" in s}
    return ModelConfig.from_json(state["model_config"]).image_size, trained


def resize_notes(state: dict, checkpoint, sets: list[tuple[str, ShardSet]]) -> list[str]:
    """Notes on synthetic sets of another size than the run's own (every set is reduced to the model's size, but
    their objects are drawn at another scale); refuses a set smaller than the model's images, which enlarging
    would blur into images unlike any the encoder learnt from."""
    model, trained = image_sizes(state)
    suggested = max(trained) if trained and max(trained) >= model else model
    notes = []
    for option, shards in sets:
        size = shards.image_size
        if size < model:
            raise UsageError(f"{option} {shards.root}: its images are {size} px and the model of {checkpoint} works "
                             f"at {model} px; enlarged, they would show the encoder blurred images unlike those it "
                             f"learnt from: build or pack the set at --size {suggested}")
        # Older checkpoints do not record their sets' sizes: then nothing is noted. A photo pack at another size
        # differs from one at the run's only by its resampling; synthetic objects are drawn at the set's size.
        if trained and size not in trained and shards.kind != "natural":
            notes.append(f"the images of {option} {shards.root} are {size} px and the run's own sets were "
                         f"{', '.join(f'{t} px' for t in sorted(trained))} (the model works at {model} px): their "
                         "objects were drawn at another scale before the reduction, so the encoder sees them "
                         f"otherwise than in the images it learnt from; build the set at --size {suggested} to "
                         "match them")
    return notes


def check_checkpoints(paths) -> list[dict]:
    """Refuse a missing, truncated or foreign checkpoint before any is used: with several runs, the last one
    would otherwise fail after minutes of analysing the others. The tensors are mapped, not read; the
    checkpoints so read are returned, in order.

    Several checkpoints are several runs (seeds, betas), summarised over, or one run at several epochs
    (vae-train --save-every), its course of training. One run at one epoch twice (a run's best.pt and last.pt
    after an epoch that improved, or a copy of a run) is refused: the summary would count that model twice."""
    seen, states = {}, []
    for path in paths:
        try:
            state = load_checkpoint(path, mmap=True)
        except CheckpointError as exc:
            raise CheckpointError(f"--checkpoint {exc}") from None
        key = (run_identity(state), int(state["epoch"]))
        if key in seen and Path(seen[key]).resolve() == Path(path).resolve():
            raise UsageError(f"--checkpoint {path} is given twice (as {seen[key]} and {path}); give it once")
        if key in seen:
            raise UsageError(f"--checkpoint {seen[key]} and {path} are one run at one epoch ({state['epoch']}: two "
                             "of a run's best.pt, last.pt and the epoch-NNNN.pt that --save-every kept, or a copy of "
                             "a run), and the summary would count that model twice; give it once")
        seen[key] = path
        states.append(state)
    return states


def run_folder(checkpoint) -> Path:
    """The folder of the run a checkpoint is of: where it lies, or above the folder of kept epochs."""
    folder = Path(checkpoint).resolve().parent
    return folder.parent if folder.name == EPOCHS_FOLDER else folder


def _folder_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def run_names(checkpoints: list[str], states: list[dict]) -> list[str]:
    """The run each checkpoint is of, by name: the run folder of its first checkpoint, made unique; checkpoints
    of one run (the same settings and --seed on the same sets) share it, wherever they lie."""
    names, by_identity = [], {}
    for path, state in zip(checkpoints, states):
        identity = run_identity(state)
        if identity not in by_identity:
            name = _folder_name(run_folder(path).name) or "run"
            by_identity[identity] = name if name not in by_identity.values() else f"{name}-{len(by_identity)}"
        names.append(by_identity[identity])
    return names


def over_training(runs: list[str]) -> bool:
    """Whether checkpoints of these runs (`run_names`) are a course of training: some run at several epochs
    (vae-train --save-every), so that their summary goes by epoch, not over runs."""
    return len(set(runs)) < len(runs)


def run_labels(checkpoints: list[str], runs: list[str]) -> list[str]:
    """A folder name per checkpoint: the name of the run it is of (`run_names`) and its file (seed1-best,
    seed1-epoch-0010), made unique."""
    labels = []
    for run, path in zip(runs, checkpoints):
        label = _folder_name(f"{run}-{Path(path).stem}")
        labels.append(label if label not in labels else f"{label}-{len(labels)}")
    return labels


def run_folders_problem(out, checkpoints, labels) -> str | None:
    """Why the runs' folders cannot be made in `out` (something not a folder in a run's place), as one line
    naming it; None if they can, or if one checkpoint writes into `out` itself. Checked before any run, which
    would otherwise fail after the runs before it."""
    if len(checkpoints) < 2:
        return None
    for path, label in zip(checkpoints, labels):
        folder = Path(out) / label
        if folder.is_symlink() or folder.exists() and not folder.is_dir():  # a link: the results would go elsewhere
            what = "a link" if folder.is_symlink() else "not a folder"
            return (f"--out {out}: {folder} is {what}, and the results of --checkpoint {path} go there (a folder "
                    "per checkpoint); move it, or choose another --out")
    return None


def checked_checkpoints(checkpoints: list[str], out) -> tuple[list[dict], list[str], list[str]]:
    """Every check of the --checkpoint files, and of where their results go, before any is used: their states
    (check_checkpoints), the run each is of (run_names) and the folder each writes in `out` (run_labels)."""
    states = check_checkpoints(checkpoints)
    runs = run_names(checkpoints, states)
    labels = run_labels(checkpoints, runs)
    problem = run_folders_problem(out, checkpoints, labels)
    if problem:
        raise UsageError(problem)
    return states, runs, labels


def seen_by_the_vae(state: dict, sets: list[tuple[str, ShardSet]]) -> list[str]:
    """Which of these sets hold images the VAE itself trained on (from the sets its checkpoint records), each as
    "the VAE was trained on images of OPTION SET (how)"; the command says what that means for it."""
    seen = []
    for saved in saved_sets(state) or []:
        try:  # the set still at its recorded place can be compared by its photos too; else by identity alone
            trained = ShardSet(saved["path"], verify=False) if Path(saved["path"]).is_dir() else None
        except UserError:
            trained = None
        if trained is not None and trained.identity != saved["identity"]:
            trained = None  # another set is there now
        for option, shards in sets:
            how = (shared_images(trained, shards) if trained is not None else
                   "the same build" if saved["identity"] == shards.identity else None)
            if how:
                seen.append(f"the VAE was trained on images of {option} {shards.root} ({saved.get('option', '--data')} "
                            f"{saved['path']}: {how})")
    return seen
