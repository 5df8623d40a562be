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

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from analysis.config import ReadoutConfig
from analysis.encode import (check_checkpoints, encode_set, load_encoder, resize_notes, run_folders_problem, run_labels,
                             seen_by_the_vae)
from analysis.figures import confusion_matrix, readouts_figure
from analysis.metrics import CLASSES, bootstrap_intervals, classification_report, count_class
from analysis.report import mean_sd_text, runs_summary, write_csv
from common import streams
from common.atomic import ReplacedOutputs, write_atomic
from common.cli import resolve_device
from common.errors import UsageError, UserError
from common.jsontext import finite, json_text
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
    """One checkpoint's readout: the trained MLP with its standardisation, and every result as plain values."""

    model: Readout
    mean: np.ndarray
    std: np.ndarray
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
    result = {"checkpoint": str(Path(checkpoint).resolve()), "model_epoch": meta.get("epoch"),
              "settings": to_dict(config), "images": images_of(data), "latent": int(x_all.shape[1]),
              "training": training, "test": test_report,
              "validation": classification_report(probabilities(x_all[val_part]), y_all[val_part]),
              "ap_variant": AP_VARIANT, "published": published(), "notes": notes}
    return ReadoutOutcome(model, mean, std, result)


AP_VARIANT = ("non-interpolated average precision, one class against the rest, ranked by the class's softmax score "
              "(scikit-learn's average_precision_score)")


def published() -> dict:
    return {k: {"values": list(v), "measure": m} for k, (v, m) in PUBLISHED.items()}


def images_of(data: LabelledData) -> dict:
    return {"train": int(data.train_part.size), "validation": int(data.val_part.size), "test": int(data.y_test.size)}


def write_readout(folder: Path, outcome: ReadoutOutcome, config: ReadoutConfig) -> None:
    """One readout's files (READOUT_FILES) in `folder`."""
    result, test_report, training = outcome.result, outcome.result["test"], outcome.result["training"]
    images = result["images"]
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "readout.json", json_text(result).encode())
    confusion_matrix(np.array(test_report["confusion"]), CLASSES, folder / "confusion.png",
                     f"test set: accuracy {test_report['accuracy']:.1%}, mean AP {test_report['mean_ap']:.1%}")
    buffer = io.BytesIO()
    torch.save({"readout": outcome.model.state_dict(), "mean": torch.tensor(outcome.mean),
                "std": torch.tensor(outcome.std), "hidden": config.hidden, "checkpoint": result["checkpoint"]}, buffer)
    write_atomic(folder / "readout.pt", buffer.getvalue())
    notes = result["notes"]
    markdown = [
        "# Subitizing readout", "",
        f"Frozen VAE `{result['checkpoint']}` (epoch {result['model_epoch']}); posterior means of "
        f"{', '.join(config.train)} for training ({images['train']} images) and validation ({images['validation']} "
        f"images, a stratified {config.val_fraction:.0%} used to choose the epoch: {training['best_epoch']}), "
        f"and of {', '.join(config.test)} for the test ({images['test']} images).", "",
        f"Readout: {readout_words(result['latent'], config)}.", "",
        "Count average precision (%) per class on the test set, in the layout of the paper's Table 1. AP: "
        f"{AP_VARIANT}. {CHANCE_AND_RECALL_WORDS}", "",
        table(test_report, "VAE + softmax (this checkpoint)"), "",
        f"Accuracy {test_report['accuracy']:.1%}{interval_text(test_report.get('ci95'), 'accuracy')}; "
        "confusion matrix (rows: true count, columns: predicted) in `confusion.png` and `readout.json`.",
        *(["", f"The 95% intervals are percentile intervals over {config.bootstrap} bootstrap resamples of the "
               "test images: how much the scores depend on which test images were drawn. They leave out what "
               "varies between readouts (--seed) and between VAEs (vae-train --seed): run those several times "
               "to see it (vae-subitize takes several checkpoints)." + missing_text(test_report.get("ci95"))]
          if config.bootstrap else []),
        *([""] + [f"**Note:** {note}." for note in notes] if notes else []),
    ]
    write_atomic(folder / "table.md", ("\n".join(markdown) + "\n").encode())


CHANCE_AND_RECALL_WORDS = (
    "Chance is the class's prevalence in the test set. The paper's VAE row was most likely per-class recall "
    "(accuracy within each class), not AP, so this readout's recall is given beside it. The published rows are on "
    "the SOS test set: compare with them only when the test set is SOS's.")


def readout_words(latent: int | str, config: ReadoutConfig) -> str:
    return (f"MLP {latent} -> {config.hidden} -> {config.hidden} -> 5 (ReLU), softmax over 0, 1, 2, 3, 4+, cross "
            f"entropy weighted by inverse class frequency, Adam (lr {config.lr})")


def scores_line(report: dict) -> str:
    """A readout's test scores in one line of the log."""
    ci = report.get("ci95")
    beside_ap = "; ".join(filter(None, [interval_words(ci, "mean_ap"), f"chance {report['mean_chance']:.1%}"]))
    return (f"test mean AP {report['mean_ap']:.1%} ({beside_ap}), accuracy {report['accuracy']:.1%}"
            f"{interval_text(ci, 'accuracy')} on {report['n']} images")


SUMMARY_FILES = ("readout.json", "table.md", "readouts.csv", "readouts.png")  # several checkpoints: in --out
SCORE_COLUMNS = (*(f"ap_{c}" for c in CLASSES), "mean_ap", *(f"recall_{c}" for c in CLASSES), "mean_recall",
                 "accuracy")


def earlier_readout(out: Path) -> list[str]:
    """What an earlier readout wrote into `out`, as paths relative to it: its files, and for several
    checkpoints also each run folder's, which its readout.json lists. The new readout replaces them all, so the
    folder shows one readout; files it did not write are not named."""
    names = {name for name in (*READOUT_FILES, *SUMMARY_FILES) if (out / name).is_file()}
    try:
        summary = json.loads((out / "readout.json").read_text())
    except (OSError, ValueError):
        summary = None
    runs = summary.get("runs") if isinstance(summary, dict) else None
    for row in runs if isinstance(runs, list) else []:
        label = str(row.get("label", "")) if isinstance(row, dict) else ""
        if label and "/" not in label and label not in (".", "..") and (out / label).is_dir():
            names.update(f"{label}/{name}" for name in READOUT_FILES if (out / label / name).is_file())
    return sorted(names)


def score_row(label: str, result: dict) -> dict:
    """One readout's scores as a row of the summary over checkpoints (readouts.csv)."""
    test = result["test"]
    return {"label": label, "checkpoint": result["checkpoint"], "model_epoch": result["model_epoch"],
            "readout_epoch": result["training"]["best_epoch"],
            **{f"ap_{c}": v for c, v in zip(CLASSES, test["ap"])}, "mean_ap": test["mean_ap"],
            **{f"recall_{c}": v for c, v in zip(CLASSES, test["recall"])}, "mean_recall": test["mean_recall"],
            "accuracy": test["accuracy"]}


def runs_table(rows: list[dict], stats: dict, chance: list[float], mean_chance: float) -> str:
    """Table 1's layout with a row per checkpoint and the mean ± sd over them, of the AP and of the recall (%)."""
    def cell(value):
        return "n/a" if value is None or np.isnan(value) else f"{100 * value:.1f}"

    columns = {"AP": [*(f"ap_{c}" for c in CLASSES), "mean_ap"],
               "per-class recall": [*(f"recall_{c}" for c in CLASSES), "mean_recall"]}
    head = "| method | measure | " + " | ".join(CLASSES) + " | mean |\n|---|---|" + "---|" * (len(CLASSES) + 1)
    lines = [head] + [f"| {method} | {measure} | " + " | ".join(f"{v:.1f}" for v in values) + " |"
                      for method, (values, measure) in PUBLISHED.items()]
    lines.append("| **Chance (this test set)** | prevalence | " + " | ".join(cell(v) for v in [*chance, mean_chance])
                 + " |")
    for measure, keys in columns.items():
        lines += [f"| {row['label']} | {measure} | " + " | ".join(cell(row[k]) for k in keys) + " |" for row in rows]
        lines.append(f"| **VAE + softmax, mean ± sd over {len(rows)} runs** | {measure} | "
                     + " | ".join(spread_text(stats, k, unit="") for k in keys) + " |")
    return "\n".join(lines)


def write_summary(out: Path, outcomes: list[ReadoutOutcome], labels: list[str], data: LabelledData,
                  config: ReadoutConfig) -> dict:
    """The summary over several checkpoints' readouts in `out` (SUMMARY_FILES); returns its readout.json."""
    rows = [score_row(label, outcome.result) for label, outcome in zip(labels, outcomes)]
    stats = runs_summary(rows, SCORE_COLUMNS)
    test = outcomes[0].result["test"]  # every readout is tested on the same images: one chance row
    write_csv(out / "readouts.csv", list(rows[0]), finite(rows))
    readouts_figure(rows, stats, test["chance"], PUBLISHED["VAE + softmax [Wever & Runia]"][0], out / "readouts.png")
    overall = {"settings": to_dict(config), "images": images_of(data), "runs": rows, "over_runs": stats,
               "chance": test["chance"], "mean_chance": test["mean_chance"], "ap_variant": AP_VARIANT,
               "published": published(), "notes": data.notes, "figure": str(out / "readouts.png")}
    write_atomic(out / "readout.json", json_text(overall).encode())
    markdown = [
        f"# Subitizing readout over {len(rows)} runs", "",
        f"One readout per checkpoint, each in its own folder (table.md, readout.json, confusion.png there), all "
        f"with the same settings and --seed {config.seed}: trained on the posterior means of "
        f"{', '.join(config.train)} ({data.train_part.size} images, and {data.val_part.size} to choose the epoch) and "
        f"tested on those of {', '.join(config.test)} ({data.y_test.size} images). So the spread below is that "
        "between the VAEs (their training seeds or settings), as each readout learns to read their codes.", "",
        f"Readout: {readout_words('/'.join(str(n) for n in sorted({o.result['latent'] for o in outcomes})), config)}.",
        "",
        f"Count AP (%) per class on the test set, and per-class recall, in the layout of the paper's Table 1. AP: "
        f"{AP_VARIANT}. {CHANCE_AND_RECALL_WORDS} The mean ± sd is over the runs (sd with n - 1); each run's 95% "
        "intervals over its test images are in its own table.md.", "",
        runs_table(rows, stats, test["chance"], test["mean_chance"]), "",
        f"Accuracy {spread_text(stats, 'accuracy')}. Figure: `readouts.png`; each run's scores: `readouts.csv`.",
        *([""] + [f"**Note:** {note}." for note in data.notes] if data.notes else []),
        *(["", "Each run's own notes (such as a test set its VAE trained on) are in its table.md."]
          if any(o.result["notes"] != data.notes for o in outcomes) else []),
    ]
    write_atomic(out / "table.md", ("\n".join(markdown) + "\n").encode())
    return overall


def spread_text(stats: dict, column: str, unit: str = "%") -> str:
    """A score's 'mean ± sd' over runs, in percent (n/a where no run has it)."""
    stat = stats.get(column)
    if stat is None:
        return "n/a"
    return mean_sd_text({**stat, "mean": 100 * stat["mean"], "sd": None if stat["sd"] is None else 100 * stat["sd"]},
                        ".1f") + unit


def run(config: ReadoutConfig, log=print) -> dict:
    """A readout on each checkpoint's code; with several, one folder each and the summary over them."""
    out = Path(config.out)
    device = resolve_device(config.runtime.device)
    # Every input is checked before the first encoding, which takes minutes on a large set.
    states = check_checkpoints(config.checkpoint)
    several, labels = len(config.checkpoint) > 1, run_labels(config.checkpoint)
    problem = several and run_folders_problem(out, config.checkpoint, labels)
    if problem:
        raise UsageError(problem)
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
        overall = write_summary(out, outcomes, labels, data, config)
        stats = overall["over_runs"]
        log(f"vae-subitize: {len(outcomes)} runs; test mean AP {spread_text(stats, 'mean_ap')} (chance "
            f"{overall['mean_chance']:.1%}), accuracy {spread_text(stats, 'accuracy')} (mean ± sd over runs)")
        log(f"  table {out / 'table.md'}; scores {out / 'readouts.csv'}; figure {out / 'readouts.png'}")
        return overall
