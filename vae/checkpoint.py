"""Checkpoints: written atomically, loadable with `torch.load(weights_only=True)`, self-describing.

A checkpoint holds the model's config (JSON), so `load_model(path)` rebuilds the model from the file
alone; `last.pt` also holds everything `--resume` needs (optimizer, scheduler, epoch, history). A run also
keeps the models of the epochs --save-every asks for (`kept_epochs`), each a checkpoint like best.pt.
"""
from __future__ import annotations

import copy
import hashlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from common.atomic import write_atomic
from common.errors import UserError, exception_line, flat_text
from vae.config import EPOCHS_FOLDER, LATER_SETTINGS, RELOCATABLE, RESUMABLE
from vae.model import VAE, ModelConfig

FORMAT = "vae-train-checkpoint"
VERSION = 1
REQUIRED = ("model_config", "model", "epoch")
ANOTHER_CHECKPOINT = f"give another checkpoint of the run (best.pt, last.pt or one it kept in {EPOCHS_FOLDER}/)"


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file."""


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's weights and buffers by name: the same for the same values wherever the model lies (CPU,
    GPU) and whatever its memory format (channels_last)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def detached_copy(state):
    """A (nested) checkpoint state with every tensor copied to CPU memory: what training changes afterwards does not
    reach it, so it can be written while training goes on."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {key: detached_copy(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(detached_copy(value) for value in state)
    return copy.deepcopy(state)


class _KeptError:
    """The file torch.save writes to, keeping the OSError of a failed write: torch.save turns it into a RuntimeError
    that names neither the file nor the cause ("unexpected pos 704 vs 598" for a full disk)."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(path, state: dict) -> None:
    """Write a checkpoint so that it is either complete on disk or not there at all. Streamed into its file: the
    paper model's last.pt, 2.2 GB with Adam's moments, is never held in memory whole (written through an
    in-memory copy, it took up to several times as long on a 2-core machine: benchmarks/RESULTS.md)."""
    def write(handle) -> None:
        sink = _KeptError(handle)
        try:
            torch.save({"format": FORMAT, "version": VERSION, **state}, sink)
        except RuntimeError:
            if sink.error is None:
                raise
            raise sink.error from None  # common.atomic names the file; the command says what to do

    write_atomic(path, write)


def save_kept_epoch(out: Path, state: dict) -> None:
    """A model the run keeps (epoch 0: the untrained one) as EPOCHS_FOLDER/epoch-NNNN.pt, a checkpoint like best.pt:
    --save-every keeps the course of training for the analyses."""
    folder = out / EPOCHS_FOLDER
    folder.mkdir(exist_ok=True)
    save_checkpoint(folder / f"epoch-{state['epoch']:04d}.pt", state)


@dataclass
class EpochFiles:
    """What the end of an epoch writes into the run folder `out`: last.pt (`last`), best.pt when the validation loss
    `improved` (`model`), the kept epoch's model when `kept`, and metrics.jsonl (`metrics`)."""
    out: Path
    last: dict
    model: dict
    improved: bool
    kept: bool
    metrics: bytes


def write_epoch(files: EpochFiles) -> None:
    """An epoch's files, the checkpoints first: metrics.jsonl, written from the same history after them, then
    agrees with last.pt whenever a write fails."""
    save_checkpoint(files.out / "last.pt", files.last)
    if files.improved:
        save_checkpoint(files.out / "best.pt", files.model)
    if files.kept:
        save_kept_epoch(files.out, files.model)
    write_atomic(files.out / "metrics.jsonl", files.metrics)


class CheckpointWriter:
    """Writes an epoch's files (`write_epoch`) on a thread of its own while the next epoch trains: the paper model's
    3 GB take seconds. The states given must be copies (`detached_copy`), which training does not change. One
    epoch's files at a time; a failed write is raised by the next `submit` or `wait`."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def submit(self, files: EpochFiles) -> None:
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="vae-train-checkpoints")
        self._pending = self._pool.submit(write_epoch, files)

    def wait(self) -> None:
        """Return once what was submitted is on disk; raise what stopped it."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Let the thread finish what it was given (an interrupted or failed run keeps its last epoch's checkpoint
        whole, and no temporary file), then end it; raises nothing: `wait` does."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def load_checkpoint(path, map_location="cpu", mmap: bool = False) -> dict:
    """Load a checkpoint with weights_only=True (tensors, numbers, strings, lists and dicts only).
    Raises CheckpointError, naming the file, for anything that is not a whole vae-train checkpoint.
    `mmap`: map the tensors instead of reading them; a check of the file's structure that costs no memory."""
    path = Path(path)
    if path.is_dir():
        held = [name for name in ("best.pt", "last.pt") if (path / name).is_file()]
        raise CheckpointError(f"{path}: a folder; give a checkpoint file, "
                              + (f"such as {path / held[0]}" if held else "best.pt or last.pt of a vae-train run"))
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
    version = state.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path}: a vae-train checkpoint of format version {version}, and this toolkit reads "
                              f"version {VERSION} and earlier; update the toolkit (pip install -U, or a newer clone)")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"{path}: an incomplete vae-train checkpoint (no {', '.join(missing)}): changed since "
                              f"vae-train wrote it, which writes checkpoints whole; {ANOTHER_CHECKPOINT}")
    return state


def load_model_and_metadata(path, map_location="cpu") -> tuple[VAE, dict]:
    """The trained model (in eval mode) and the checkpoint's other entries (epoch, settings...)."""
    state = load_checkpoint(path, map_location)
    try:
        model = VAE(ModelConfig.from_json(state["model_config"]))
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: its weights do not fit the model it describes ({flat_text(exc)}): changed "
                              f"since vae-train wrote it, or written by a version of this toolkit whose model differs; "
                              f"{ANOTHER_CHECKPOINT}, or load it with the version that trained it") from None
    return model.eval(), {k: v for k, v in state.items() if k not in ("model", "optimizer", "scheduler")}


def load_model(path, map_location="cpu") -> VAE:
    """The trained model, in eval mode, rebuilt from the checkpoint alone."""
    return load_model_and_metadata(path, map_location)[0]


def saved_sets(state: dict) -> list[dict] | None:
    """The sets a checkpoint's run read, as `vae.build.Data.sets` gives them (option, path, build identity,
    number of images); from checkpoints of earlier versions, only their paths and identities, or None where
    they recorded nothing of them."""
    if "data_sets" in state:
        return json.loads(state["data_sets"])
    if "data_identities" in state:
        return [{"path": path, "identity": identity} for path, identity in json.loads(state["data_identities"]).items()]
    return None


def run_identity(state: dict) -> str:
    """What makes a checkpoint's run the run it is: its saved settings but where it lies, how long it trained
    and how it ran (--resume may change those), with its sets by what they hold rather than where they lie.
    Initial weights, augmentation, noise and data order all follow from these, so two checkpoints of one
    identity are one run: its best.pt and last.pt, or a copy of it, not two independent runs."""
    def leaves(settings: dict) -> dict:  # the saved groups flattened (earlier versions saved them flat)
        out = {}
        for name, value in settings.items():
            out.update(leaves(value) if isinstance(value, dict) else {name: value})
        return out

    settings = leaves(json.loads(state.get("train_config", "{}")))
    kept = {name: value for name, value in settings.items() if name not in RESUMABLE | RELOCATABLE
            and not (name in LATER_SETTINGS and value == LATER_SETTINGS[name])}
    sets = saved_sets(state)
    kept["sets"] = ([[s.get("option"), s["identity"], s.get("n_images")] for s in sets] if sets is not None else
                    [settings.get(name) for name in sorted(RELOCATABLE)])
    return json.dumps(kept, sort_keys=True)


def kept_epochs(done: int, epochs: int, every: int, new: bool) -> range:
    """The epochs whose models --save-every K keeps of a run that has trained `done` of its `epochs`: every K-th
    from here, and the untrained start (epoch 0) of a new run. A range, not a list: --epochs has no upper bound."""
    return range(0 if new else (done // every + 1) * every, epochs + 1, every)


def kept_epochs_line(epochs: range, each: int, free: int, start: bool = False) -> str:
    """What --save-every will keep of this run, in the log: which epochs (`start`: the untrained start besides, rebuilt
    for a resumed run), how much disk that takes, and a note when it is more than is free (the run would stop there,
    with its last.pt whole, when the disk fills)."""
    count = len(epochs) + start
    need = count * each
    shown = ", ".join(map(str, [*([0] if start else []), *epochs[:6 - start]]))
    shown += f", ... {epochs[-1]}" if count > 6 else ""
    line = (f"kept epochs (--save-every): {count} model(s) of {each / 2**20:.3g} MiB in {EPOCHS_FOLDER}/, "
            f"{need / 2**30:.3g} GiB in all (epochs {shown or 'none left'})")
    if need > free:
        line += (f"; note: only {free / 2**30:.3g} GiB are free there, so the run will stop with an error when the "
                 "disk fills (its last.pt whole, to resume from): free space, or keep fewer with a larger --save-every "
                 "on --resume")
    return line
