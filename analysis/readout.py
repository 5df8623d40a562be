"""vae-subitize: the paper's subitizing readout (section 4.3, Table 1) on frozen VAE latents.

Encodes labelled sets (posterior means), trains an MLP with two hidden layers of 160 ReLU units and a
softmax over the counts 0, 1, 2, 3, 4+ with class-weighted cross entropy, selects the epoch on a
stratified validation part of the training data (never on the test set), and reports on the test
set: per-class average precision (analysis.metrics states the variant), its mean, the chance row,
accuracy and the confusion matrix, as a Table 1-style Markdown table with the published rows, JSON,
and a PNG of the confusion matrix. Several checkpoints (seeds of one recipe) get a readout each, in a folder
each, and a summary over them: the spread between VAEs, which no interval over the test images shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from analysis.config import ReadoutConfig
from analysis.encode import checked_checkpoints, encode_set, load_encoder, resize_notes, seen_by_the_vae
from analysis.metrics import CLASSES, bootstrap_intervals, classification_report, count_class
from analysis.readout_report import (AP_VARIANT, earlier_readout, published, scores_line, spread_text,
                                     write_readout, write_summary)
from common import streams
from common.atomic import ReplacedOutputs
from common.cli import resolve_device
from common.errors import UsageError, UserError, exception_line
from common.locks import FolderLock
from common.settings import to_dict
from synthgen import ShardSet
from synthgen.overlap import first_shared
from vae.checkpoint import CheckpointError


class Readout(nn.Module):
    """Two hidden layers of `hidden` ReLU units, then logits over the 5 count classes."""

    def __init__(self, latent: int, hidden: int = 160, classes: int = len(CLASSES)):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                    nn.Linear(hidden, classes))

    def forward(self, x):
        return self.layers(x)


class CountReadout(nn.Module):
    """A trained readout as one module: posterior means of its VAE in, the probabilities of the count classes
    0, 1, 2, 3, 4+ out, with the standardisation learnt on its training part. `checkpoint` names the VAE."""

    def __init__(self, mlp: Readout, mean, std, checkpoint: str = ""):
        super().__init__()
        self.mlp, self.checkpoint = mlp, checkpoint
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, means: torch.Tensor) -> torch.Tensor:
        if means.ndim != 2 or means.shape[1] != self.mean.numel():
            raise ValueError(f"this readout takes posterior means of shape (n, {self.mean.numel()}), as its VAE "
                             f"({self.checkpoint or 'see readout.json'}) gives them; got {tuple(means.shape)}")
        return torch.softmax(self.mlp((means.float() - self.mean) / self.std), dim=1)


READOUT_KEYS = ("readout", "mean", "std", "hidden", "checkpoint")  # what readout.pt holds


def load_readout(path, map_location="cpu") -> CountReadout:
    """The readout a vae-subitize run saved (its readout.pt), in eval mode: `load_readout(p)(means)` gives the
    class probabilities of posterior means from the VAE it was trained on, which `.checkpoint` names."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (give the readout.pt that vae-subitize wrote)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001  (whatever torch.load raises, the file is not a readout)
        raise CheckpointError(f"{path}: not a readable readout.pt: truncated, damaged, or not a torch file "
                              f"({exception_line(exc)})") from None
    if not isinstance(state, dict) or any(key not in state for key in READOUT_KEYS):
        raise CheckpointError(f"{path}: not a readout of vae-subitize (a torch file of another kind); give the "
                              "readout.pt it wrote")
    mlp = Readout(state["mean"].numel(), int(state["hidden"]))
    mlp.load_state_dict(state["readout"])
    return CountReadout(mlp, state["mean"], state["std"], str(state["checkpoint"])).to(map_location).eval()


def open_sets(paths, config, option: str) -> list[ShardSet]:
    """The sets an option names, opened (folder and manifest checked) before any of them is encoded."""
    return [ShardSet(path, verify=config.runtime.verify_shards, progress=config.runtime.progress, option=option)
            for path in paths]


def overlap_problem(train_sets: list[ShardSet], test_sets: list[ShardSet]) -> str | None:
    """Why these sets cannot make a readout and its test, as one line: a test image the readout was trained
    on (the test would measure memory, not generalisation), or a training image twice (the validation part
    that chooses the epoch would hold images of the training part). None when every image is in one place."""
    # the same test image twice weighs it twice, but trains nothing on it
    found = first_shared([("--train", s) for s in train_sets] + [("--test", s) for s in test_sets],
                         among_themselves=frozenset({"--test"}))
    if found is None:
        return None
    option_a, option_b, shared = found
    why = ("the test would score images the readout was trained on; test on a set made apart (another --seed, or "
           "the test split)" if option_a != option_b else
           "the validation part that chooses the epoch would hold training images; give each set once")
    return f"{shared}: {why}"


def class_notes(y_train: np.ndarray, y_test: np.ndarray) -> list[str]:
    """Notes on count classes missing from the test set (no AP: the means are over the others) or from the
    readout's training part (it cannot learn to tell a class it never saw)."""
    notes = []
    absent = [name for c, name in enumerate(CLASSES) if not np.any(y_test == c)]
    if absent:
        notes.append(f"the test set has no image of class {', '.join(absent)}: the means are over the classes it "
                     "has, and compare with the published means (over all five) only loosely")
    unseen = [name for c, name in enumerate(CLASSES) if np.any(y_test == c) and not np.any(y_train == c)]
    if unseen:
        notes.append(f"the readout's training part has no image of class {', '.join(unseen)}, which the test set "
                     "has: it cannot learn to tell them")
    return notes


def count_classes(sets: list[ShardSet]) -> np.ndarray:
    return np.concatenate([count_class(shards.labels["count"]) for shards in sets])


def encode_sets(sets: list[ShardSet], model, device, config) -> np.ndarray:
    return np.concatenate([encode_set(model, shards, device, config.batch_size, config.runtime.progress)
                           for shards in sets])


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a training part and a validation part with the same class proportions."""
    rng = streams.rng(seed, streams.READOUT_SPLIT)
    train, validation = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fraction * members.size)) if members.size > 1 else 0
        validation.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(validation))


def class_weights(labels: np.ndarray) -> np.ndarray:
    """n / (k * n_c) for the classes present (zero for absent ones): every class weighs the same."""
    counts = np.bincount(labels, minlength=len(CLASSES)).astype(np.float64)
    present = counts > 0
    weights = np.zeros(len(CLASSES))
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def train_readout(x_train, y_train, x_val, y_val, config: ReadoutConfig, device) -> tuple[Readout, dict]:
    """Adam on class-weighted cross entropy; keeps the epoch with the lowest weighted validation loss."""
    torch.manual_seed(streams.seed64(config.seed, streams.READOUT_INIT))
    model = Readout(x_train.shape[1], config.hidden).to(device)
    weights = torch.tensor(class_weights(y_train), dtype=torch.float32, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    xt, yt = torch.tensor(x_train, dtype=torch.float32, device=device), torch.tensor(y_train, device=device)
    xv, yv = torch.tensor(x_val, dtype=torch.float32, device=device), torch.tensor(y_val, device=device)
    generator = torch.Generator().manual_seed(streams.seed64(config.seed, streams.READOUT_BATCHES))
    best, best_state, best_epoch, waited, history = float("inf"), None, 0, 0, []
    # ends early when the validation loss stops improving (--patience), which the bar's total cannot foresee
    bar = tqdm(range(1, config.epochs + 1), desc="training the readout", unit="epoch", dynamic_ncols=True,
               disable=not config.runtime.progress)
    for epoch in bar:
        model.train()
        for batch in torch.randperm(len(xt), generator=generator).split(min(config.batch_size, len(xt))):
            optimizer.zero_grad()
            loss_fn(model(xt[batch]), yt[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = loss_fn(model(xv), yv).item()
        history.append(val_loss)
        bar.set_postfix_str(f"validation loss {val_loss:.4g}", refresh=False)
        if val_loss < best:
            best, best_epoch, waited = val_loss, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited > config.patience:
                break
    bar.close()
    if best_state is None:  # every epoch's validation loss was NaN or infinite
        raise UserError(f"--lr {config.lr:g}: the readout diverged (its validation loss was never finite); lower "
                        "--lr (the default is 0.001)")
    model.load_state_dict(best_state)
    return model.eval(), {"best_epoch": best_epoch, "epochs_run": len(history), "best_validation_loss": best,
                          "class_weights": class_weights(y_train).tolist()}


@dataclass(frozen=True)
class LabelledData:
    """What every checkpoint's readout shares: the sets, their count classes, the split of the training
    images into the readout's training and validation parts, and the notes on the sets themselves."""

    train_sets: list[ShardSet]
    test_sets: list[ShardSet]
    y_all: np.ndarray
    y_test: np.ndarray
    train_part: np.ndarray
    val_part: np.ndarray
    notes: list[str]

    @property
    def tagged(self) -> list[tuple[str, ShardSet]]:
        return [("--train", s) for s in self.train_sets] + [("--test", s) for s in self.test_sets]


def labelled_data(config: ReadoutConfig) -> LabelledData:
    """Open the sets and check that they can make a readout and its test, before anything is encoded (which
    takes minutes on a large set)."""
    train_sets, test_sets = open_sets(config.train, config, "--train"), open_sets(config.test, config, "--test")
    problem = overlap_problem(train_sets, test_sets)
    if problem:
        raise UsageError(problem)
    notes = []
    repeated = first_shared([("--test", s) for s in test_sets])
    if repeated:  # allowed (nothing is trained on them), but the scores and the image count would hide it
        notes.append(f"{repeated[2]}: those images are scored twice, and weigh twice in the AP and the accuracy")
    y_all, y_test = count_classes(train_sets), count_classes(test_sets)
    present = np.unique(y_all)
    if present.size < 2:
        raise UserError(f"--train {' '.join(config.train)}: all {y_all.size} images are of class "
                        f"{CLASSES[int(present[0])]}; a readout needs training images of at least two count classes")
    train_part, val_part = stratified_split(y_all, config.val_fraction, config.seed)
    if val_part.size == 0:
        raise UserError(f"--val-fraction {config.val_fraction}: no validation images; raise it or add data")
    if train_part.size == 0:
        raise UserError(f"--val-fraction {config.val_fraction}: all {y_all.size} --train images are held out for "
                        "validation, none is left to train the readout on; lower it or add data")
    notes += class_notes(y_all[train_part], y_test)
    return LabelledData(train_sets, test_sets, y_all, y_test, train_part, val_part, notes)


def checkpoint_notes(state: dict, checkpoint: str, data: LabelledData) -> list[str]:
    """What one checkpoint's readout says of the sets besides their own notes: sets of another size than its
    run's (refusing smaller ones), and test sets its VAE trained on (not refused: the VAE never saw their
    labels, but a test on images the encoder learnt from flatters it)."""
    notes = resize_notes(state, checkpoint, data.tagged)
    notes += [f"{seen}: the test scores images its encoder learnt from, without their labels"
              for seen in seen_by_the_vae(state, [("--test", s) for s in data.test_sets])]
    return notes + data.notes


@dataclass
class ReadoutOutcome:
    """One checkpoint's readout: the trained module, and every result as plain values."""

    readout: CountReadout
    result: dict


def read_out(checkpoint: str, data: LabelledData, notes: list[str], config: ReadoutConfig, device) -> ReadoutOutcome:
    """Encode the sets with one checkpoint's VAE, train the readout on the training part, and score it."""
    encoder, meta = load_encoder(checkpoint, device)
    x_all = encode_sets(data.train_sets, encoder, device, config)
    x_test = encode_sets(data.test_sets, encoder, device, config)
    train_part, val_part, y_all, y_test = data.train_part, data.val_part, data.y_all, data.y_test
    mean, std = x_all[train_part].mean(axis=0), x_all[train_part].std(axis=0) + 1e-8  # from the training part only

    def standardise(x):
        return (x - mean) / std

    mlp, training = train_readout(standardise(x_all[train_part]), y_all[train_part], standardise(x_all[val_part]),
                                  y_all[val_part], config, device)
    readout = CountReadout(mlp, mean, std, str(Path(checkpoint).resolve())).to(device).eval()

    def probabilities(x):  # as load_readout's module gives them from readout.pt
        with torch.no_grad():
            return readout(torch.tensor(x, dtype=torch.float32, device=device)).cpu().numpy()

    test_probabilities = probabilities(x_test)
    test_report = classification_report(test_probabilities, y_test)
    if config.bootstrap:
        test_report["ci95"] = bootstrap_intervals(test_probabilities, y_test, config.bootstrap,
                                                  streams.rng(config.seed, streams.READOUT_BOOTSTRAP),
                                                  config.runtime.progress)
    result = {"checkpoint": readout.checkpoint, "model_epoch": meta.get("epoch"),
              "settings": to_dict(config), "images": images_of(data), "latent": int(x_all.shape[1]),
              "training": training, "test": test_report,
              "validation": classification_report(probabilities(x_all[val_part]), y_all[val_part]),
              "ap_variant": AP_VARIANT, "published": published(), "notes": notes}
    return ReadoutOutcome(readout, result)


def images_of(data: LabelledData) -> dict:
    return {"train": int(data.train_part.size), "validation": int(data.val_part.size), "test": int(data.y_test.size)}


def run(config: ReadoutConfig, log=print) -> dict:
    """A readout on each checkpoint's code; with several, one folder each and the summary over them."""
    out = Path(config.out)
    device = resolve_device(config.runtime.device)
    # Every input is checked before the first encoding, which takes minutes on a large set.
    states, runs, labels = checked_checkpoints(config.checkpoint, out)
    several = len(config.checkpoint) > 1
    data = labelled_data(config)
    notes = [checkpoint_notes(state, path, data) for path, state in zip(config.checkpoint, states)]
    # One readout writes the folder at a time: a second one there would interleave its files with this one's.
    # An earlier readout there is replaced as one step: a failure at any point (a full disk) puts it back.
    with FolderLock(out, "vae-subitize", doing="writing a readout there"), ReplacedOutputs(out) as outputs:
        outcomes = []
        for k, (path, label, run_notes) in enumerate(zip(config.checkpoint, labels, notes)):
            prefix = f"vae-subitize: {label}: " if several else "vae-subitize: "
            for note in run_notes:
                log(f"{prefix}note: {note}")
            outcome = read_out(path, data, run_notes, config, device)
            if k == 0:  # set aside only now: until the first files are written, the earlier ones stay in place
                outputs.set_aside(earlier_readout(out))
            folder = out / label if several else out
            write_readout(folder, outcome, config)
            log(f"{prefix}{scores_line(outcome.result['test'])}")
            log(f"  table {folder / 'table.md'}; details {folder / 'readout.json'}; figure {folder / 'confusion.png'}")
            outcomes.append(outcome)
        if not several:
            return outcomes[0].result
        overall = write_summary(out, outcomes, labels, runs, config)
        if "over_training" in overall:
            log(f"vae-subitize: {len(outcomes)} checkpoints of {len(overall['over_training']['runs'])} run(s); test "
                "mean AP " + ", ".join(f"{row['mean_ap']:.1%} ({row['label']})" for row in overall["runs"])
                + f" (chance {overall['mean_chance']:.1%})")
        else:
            stats = overall["over_runs"]
            log(f"vae-subitize: {len(outcomes)} runs; test mean AP {spread_text(stats, 'mean_ap')} (chance "
                f"{overall['mean_chance']:.1%}), accuracy {spread_text(stats, 'accuracy')} (mean ± sd over runs)")
        log(f"  table {out / 'table.md'}; scores {out / 'readouts.csv'}; figure {out / 'readouts.png'}")
        return overall
