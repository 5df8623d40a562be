"""vae-subitize: the paper's subitizing readout (section 4.3, Table 1) on frozen VAE latents.

Encodes labelled sets (posterior means), trains an MLP with two hidden layers of 160 ReLU units and a
softmax over the counts 0, 1, 2, 3, 4+ with class-weighted cross entropy, selects the epoch on a
stratified validation part of the training data (never on the test set), and reports on the test
set: per-class average precision (analysis.metrics states the variant), its mean, the chance row,
accuracy and the confusion matrix, as a Table 1-style Markdown table with the published rows, JSON,
and a PNG of the confusion matrix.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from analysis.config import ReadoutConfig
from analysis.encode import encode_set, load_encoder, resize_notes, seen_by_the_vae
from analysis.figures import confusion_matrix
from analysis.metrics import CLASSES, bootstrap_intervals, classification_report, count_class
from common import streams
from common.atomic import ReplacedOutputs, write_atomic
from common.cli import resolve_device
from common.errors import UsageError, UserError
from common.jsontext import json_text
from common.locks import FolderLock
from common.settings import to_dict
from synthgen import ShardSet
from synthgen.overlap import first_shared

READOUT_FILES = ("readout.json", "confusion.png", "readout.pt", "table.md")  # what a readout writes in --out

# Table 1 of the paper, classes 0, 1, 2, 3, 4+ and the mean (%), with what each row measures. The paper calls
# every row "count AP". For the first four, taken from Zhang et al., it is average precision. The VAE row
# was most likely per-class accuracy (the recall of each class): the authors' code printed that, never an
# AP. The published chance row sums to 114%, so it is not the classes' prevalence either.
PUBLISHED = {
    "Chance (SOS test set)": ((27.5, 46.5, 18.6, 11.7, 9.7, 22.8), "published chance; not prevalences (sum 114%)"),
    "GIST [Torralba et al.]": ((67.4, 65.0, 32.3, 17.5, 24.7, 41.4), "AP"),
    "SIFT+IFV [Chatfield et al.]": ((83.0, 68.1, 35.1, 26.6, 38.1, 50.1), "AP"),
    "CNN_FT [Zhang et al.]": ((93.6, 93.8, 75.2, 58.6, 71.6, 78.6), "AP"),
    "VAE + softmax [Wever & Runia]": ((76.0, 49.0, 40.0, 27.0, 30.0, 44.4),
                                      "reported as AP; most likely per-class recall (accuracy)"),
}


class Readout(nn.Module):
    """Two hidden layers of `hidden` ReLU units, then logits over the 5 count classes."""

    def __init__(self, latent: int, hidden: int = 160, classes: int = len(CLASSES)):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                    nn.Linear(hidden, classes))

    def forward(self, x):
        return self.layers(x)


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
    for epoch in range(1, config.epochs + 1):
        model.train()
        for batch in torch.randperm(len(xt), generator=generator).split(min(config.batch_size, len(xt))):
            optimizer.zero_grad()
            loss_fn(model(xt[batch]), yt[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = loss_fn(model(xv), yv).item()
        history.append(val_loss)
        if val_loss < best:
            best, best_epoch, waited = val_loss, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited > config.patience:
                break
    if best_state is None:  # every epoch's validation loss was NaN or infinite
        raise UserError(f"--lr {config.lr:g}: the readout diverged (its validation loss was never finite); lower "
                        "--lr (the default is 0.001)")
    model.load_state_dict(best_state)
    return model.eval(), {"best_epoch": best_epoch, "epochs_run": len(history), "best_validation_loss": best,
                          "class_weights": class_weights(y_train).tolist()}


def table(report: dict, name: str) -> str:
    """Table 1 of the paper with this readout's rows: its AP, and its per-class recall beside the published
    VAE row, which most likely measured that (%); each with its 95% interval when the report has them."""
    def cells(values):
        return " | ".join("n/a" if np.isnan(v) else f"{v:.1f}" for v in values)

    def spans(pairs):
        return " | ".join("n/a" if np.isnan(lo) else f"{100 * lo:.1f}-{100 * hi:.1f}" for lo, hi in pairs)

    head = "| method | measure | " + " | ".join(CLASSES) + " | mean |\n|---|---|" + "---|" * (len(CLASSES) + 1)
    rows = [f"| {method} | {measure} | {cells(values)} |" for method, (values, measure) in PUBLISHED.items()]
    chance = [100 * c for c in report["chance"]] + [100 * report["mean_chance"]]
    ours = [100 * a for a in report["ap"]] + [100 * report["mean_ap"]]
    recall = [100 * r for r in report["recall"]] + [100 * report["mean_recall"]]
    rows.append(f"| **Chance (this test set)** | prevalence | {cells(chance)} |")
    ci = report.get("ci95")
    rows.append(f"| **{name}** | AP | {cells(ours)} |")
    if ci:
        rows.append(f"| | AP, 95% interval | {spans([*ci['ap'], ci['mean_ap']])} |")
    rows.append(f"| **{name}** | per-class recall | {cells(recall)} |")
    if ci:
        rows.append(f"| | recall, 95% interval | {spans([*ci['recall'], ci['mean_recall']])} |")
    return "\n".join([head, *rows])


def missing_text(ci: dict | None) -> str:
    """Which classes some resamples lacked: their intervals, and the means', are over the other resamples."""
    lacking = [f"{name} from {n}" for name, n in zip(CLASSES, (ci or {}).get("missing", [])) if n]
    if not lacking:
        return ""
    return (f" Some resamples drew no test image of a class ({', '.join(lacking)} of {ci['resamples']}): that "
            "class's intervals are over the others, and those resamples' means over the classes they drew.")


def interval_words(ci: dict | None, key: str) -> str:
    if not ci or np.isnan(ci[key][0]):
        return ""
    return f"95% interval {ci[key][0]:.1%}-{ci[key][1]:.1%}"


def interval_text(ci: dict | None, key: str) -> str:
    words = interval_words(ci, key)
    return f" ({words})" if words else ""


def run(config: ReadoutConfig, log=print) -> dict:
    out = Path(config.out)
    device = resolve_device(config.runtime.device)
    encoder, meta = load_encoder(config.checkpoint, device)
    # Every input is checked before the encoding, which takes minutes on a large set.
    train_sets, test_sets = open_sets(config.train, config, "--train"), open_sets(config.test, config, "--test")
    notes = resize_notes(meta, config.checkpoint, [("--train", s) for s in train_sets] +
                         [("--test", s) for s in test_sets])
    problem = overlap_problem(train_sets, test_sets)
    if problem:
        raise UsageError(problem)
    repeated = first_shared([("--test", s) for s in test_sets])
    if repeated:  # allowed (nothing is trained on them), but the scores and the image count would hide it
        notes.append(f"{repeated[2]}: those images are scored twice, and weigh twice in the AP and the accuracy")
    # Not refused: the VAE never saw their labels, but a test on images the encoder learnt from flatters it.
    notes += [f"{seen}: the test scores images its encoder learnt from, without their labels"
              for seen in seen_by_the_vae(meta, [("--test", s) for s in test_sets])]
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
    for note in notes:
        log(f"vae-subitize: note: {note}")
    # One readout writes the folder at a time: a second one there would interleave its files with this one's.
    # An earlier readout there is replaced as one step: a failure at any point (a full disk) puts it back.
    with FolderLock(out, "vae-subitize", doing="writing a readout there"), ReplacedOutputs(out) as outputs:
        x_all = encode_sets(train_sets, encoder, device, config)
        x_test = encode_sets(test_sets, encoder, device, config)
        out.mkdir(parents=True, exist_ok=True)
        mean, std = x_all[train_part].mean(axis=0), x_all[train_part].std(axis=0) + 1e-8  # from the training part only

        def standardise(x):
            return (x - mean) / std

        model, training = train_readout(standardise(x_all[train_part]), y_all[train_part], standardise(x_all[val_part]),
                                        y_all[val_part], config, device)
        def probabilities(x):
            with torch.no_grad():
                logits = model(torch.tensor(standardise(x), dtype=torch.float32, device=device))
                return torch.softmax(logits, dim=1).cpu().numpy()

        test_probabilities = probabilities(x_test)
        test_report = classification_report(test_probabilities, y_test)
        if config.bootstrap:
            test_report["ci95"] = bootstrap_intervals(test_probabilities, y_test, config.bootstrap,
                                                      streams.rng(config.seed, streams.READOUT_BOOTSTRAP),
                                                      config.runtime.progress)
        val_report = classification_report(probabilities(x_all[val_part]), y_all[val_part])
        images = {"train": int(train_part.size), "validation": int(val_part.size), "test": int(y_test.size)}
        result = {"checkpoint": str(Path(config.checkpoint).resolve()), "model_epoch": meta.get("epoch"),
                  "settings": to_dict(config), "images": images,
                  "training": training, "test": test_report, "validation": val_report,
                  "ap_variant": "non-interpolated average precision, one class against the rest, ranked by the class's "
                                "softmax score (scikit-learn's average_precision_score)",
                  "published": {k: {"values": list(v), "measure": m} for k, (v, m) in PUBLISHED.items()},
                  "notes": notes}
        outputs.set_aside([name for name in READOUT_FILES if (out / name).is_file()])
        write_atomic(out / "readout.json", json_text(result).encode())
        confusion_matrix(np.array(test_report["confusion"]), CLASSES, out / "confusion.png",
                         f"test set: accuracy {test_report['accuracy']:.1%}, mean AP {test_report['mean_ap']:.1%}")
        buffer = io.BytesIO()
        torch.save({"readout": model.state_dict(), "mean": torch.tensor(mean), "std": torch.tensor(std),
                    "hidden": config.hidden, "checkpoint": result["checkpoint"]}, buffer)
        write_atomic(out / "readout.pt", buffer.getvalue())
        markdown = [
            "# Subitizing readout", "",
            f"Frozen VAE `{result['checkpoint']}` (epoch {result['model_epoch']}); posterior means of "
            f"{', '.join(config.train)} for training ({train_part.size} images) and validation ({val_part.size} "
            f"images, a stratified {config.val_fraction:.0%} used to choose the epoch: {training['best_epoch']}), "
            f"and of {', '.join(config.test)} for the test ({y_test.size} images).", "",
            f"Readout: MLP {x_all.shape[1]} -> {config.hidden} -> {config.hidden} -> 5 (ReLU), softmax over 0, 1, 2, "
            f"3, 4+, cross entropy weighted by inverse class frequency, Adam (lr {config.lr}).", "",
            "Count average precision (%) per class on the test set, in the layout of the paper's Table 1. AP: "
            f"{result['ap_variant']}. Chance is the class's prevalence in the test set. The paper's VAE row was most "
            "likely per-class recall (accuracy within each class), not AP, so this readout's recall is given beside "
            "it. The published rows are on the SOS test set: compare with them only when the test set is SOS's.", "",
            table(test_report, "VAE + softmax (this checkpoint)"), "",
            f"Accuracy {test_report['accuracy']:.1%}{interval_text(test_report.get('ci95'), 'accuracy')}; "
            "confusion matrix (rows: true count, columns: predicted) in `confusion.png` and `readout.json`.",
            *(["", f"The 95% intervals are percentile intervals over {config.bootstrap} bootstrap resamples of the "
                   "test images: how much the scores depend on which test images were drawn. They leave out what "
                   "varies between readouts (--seed) and between VAEs (vae-train --seed): run those several times "
                   "to see it." + missing_text(test_report.get("ci95"))] if config.bootstrap else []),
            *([""] + [f"**Note:** {note}." for note in notes] if notes else []),
        ]
        write_atomic(out / "table.md", ("\n".join(markdown) + "\n").encode())
        ci = test_report.get("ci95")
        beside_ap = "; ".join(filter(None, [interval_words(ci, "mean_ap"), f"chance {test_report['mean_chance']:.1%}"]))
        log(f"vae-subitize: test mean AP {test_report['mean_ap']:.1%} ({beside_ap}), accuracy "
            f"{test_report['accuracy']:.1%}{interval_text(ci, 'accuracy')} on {y_test.size} images")
        log(f"  table {out / 'table.md'}; details {out / 'readout.json'}; figure {out / 'confusion.png'}")
        return result
