"""What `vae-subitize` writes: a readout's table.md (Table 1's layout), readout.json, confusion.png and
readout.pt, and with several checkpoints the summary over them. The readouts are trained and scored in
analysis.readout; here they are only laid out.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from analysis.config import ReadoutConfig
from analysis.encode import over_training
from analysis.metrics import CLASSES
from analysis.report import (by_run_and_epoch, earlier_run_folders, epochs_summary, mean_sd_text, runs_summary,
                             shared_epochs, write_csv)
from common.atomic import write_atomic
from common.jsontext import finite, json_text
from common.settings import to_dict

if TYPE_CHECKING:
    from analysis.readout import ReadoutOutcome

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


def percent_cells(values) -> str:
    """Fractions as table cells in percent; n/a for a score a class the test set lacks cannot have."""
    return " | ".join("n/a" if v is None or np.isnan(v) else f"{100 * v:.1f}" for v in values)


def table_start(chance: list[float], mean_chance: float) -> list[str]:
    """Table 1's head and published rows, then the chance row of this test set (the classes' prevalence)."""
    head = "| method | measure | " + " | ".join(CLASSES) + " | mean |\n|---|---|" + "---|" * (len(CLASSES) + 1)
    return [head, *(f"| {method} | {measure} | {percent_cells(np.array(values) / 100)} |"
                    for method, (values, measure) in PUBLISHED.items()),
            f"| **Chance (this test set)** | prevalence | {percent_cells([*chance, mean_chance])} |"]


def table(report: dict, name: str) -> str:
    """Table 1 of the paper with this readout's rows: its AP, and its per-class recall beside the published
    VAE row, which most likely measured that (%); each with its 95% interval when the report has them."""
    def spans(pairs):
        return " | ".join("n/a" if np.isnan(lo) else f"{100 * lo:.1f}-{100 * hi:.1f}" for lo, hi in pairs)

    rows = table_start(report["chance"], report["mean_chance"])
    ci = report.get("ci95")
    rows.append(f"| **{name}** | AP | {percent_cells([*report['ap'], report['mean_ap']])} |")
    if ci:
        rows.append(f"| | AP, 95% interval | {spans([*ci['ap'], ci['mean_ap']])} |")
    rows.append(f"| **{name}** | per-class recall | {percent_cells([*report['recall'], report['mean_recall']])} |")
    if ci:
        rows.append(f"| | recall, 95% interval | {spans([*ci['recall'], ci['mean_recall']])} |")
    return "\n".join(rows)


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


AP_VARIANT = ("non-interpolated average precision, one class against the rest, ranked by the class's softmax score "
              "(scikit-learn's average_precision_score)")


def published() -> dict:
    return {k: {"values": list(v), "measure": m} for k, (v, m) in PUBLISHED.items()}


def write_readout(folder: Path, outcome: ReadoutOutcome, config: ReadoutConfig) -> None:
    """One readout's files (READOUT_FILES) in `folder`."""
    from analysis.figures import confusion_matrix  # matplotlib: not for a readout refused before it trains

    result, test_report, training = outcome.result, outcome.result["test"], outcome.result["training"]
    images = result["images"]
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "readout.json", json_text(result).encode())
    confusion_matrix(np.array(test_report["confusion"]), CLASSES, folder / "confusion.png",
                     f"test set: accuracy {test_report['accuracy']:.1%}, mean AP {test_report['mean_ap']:.1%}")
    buffer = io.BytesIO()
    readout = outcome.readout  # what analysis.readout.load_readout rebuilds
    torch.save({"readout": {k: v.cpu() for k, v in readout.mlp.state_dict().items()}, "mean": readout.mean.cpu(),
                "std": readout.std.cpu(), "hidden": config.hidden, "checkpoint": readout.checkpoint}, buffer)
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
    names.update(f"{label}/{name}" for label in earlier_run_folders(summary, out) for name in READOUT_FILES
                 if (out / label / name).is_file())
    return sorted(names)


def score_row(label: str, run: str, result: dict) -> dict:
    """One readout's scores as a row of the summary over checkpoints (readouts.csv); `run` names the VAE's run."""
    test = result["test"]
    return {"label": label, "run": run, "checkpoint": result["checkpoint"], "model_epoch": result["model_epoch"],
            "readout_epoch": result["training"]["best_epoch"],
            **{f"ap_{c}": v for c, v in zip(CLASSES, test["ap"])}, "mean_ap": test["mean_ap"],
            **{f"recall_{c}": v for c, v in zip(CLASSES, test["recall"])}, "mean_recall": test["mean_recall"],
            "accuracy": test["accuracy"]}


def runs_table(rows: list[dict], spreads: dict[str, dict], chance: list[float], mean_chance: float) -> str:
    """Table 1's layout with a row per checkpoint and rows of mean ± sd (`spreads`: a name per row and its
    runs_summary), of the AP and of the recall (%)."""
    lines = table_start(chance, mean_chance)
    for measure, name in (("AP", "ap"), ("per-class recall", "recall")):
        keys = [*(f"{name}_{c}" for c in CLASSES), f"mean_{name}"]
        lines += [f"| {row['label']} | {measure} | {percent_cells([row[k] for k in keys])} |" for row in rows]
        lines += [f"| **{what}** | {measure} | " + " | ".join(spread_text(stats, k, unit="") for k in keys) + " |"
                  for what, stats in spreads.items()]
    return "\n".join(lines)


def write_summary(out: Path, outcomes: list[ReadoutOutcome], labels: list[str], runs: list[str],
                  config: ReadoutConfig) -> dict:
    """The summary over several checkpoints' readouts in `out` (SUMMARY_FILES): over runs, or over the course of
    training where `runs` (the run of each checkpoint) holds one run at several epochs. Returns its readout.json."""
    from analysis.figures import readouts_epochs_figure, readouts_figure

    rows = [score_row(label, run, outcome.result) for label, run, outcome in zip(labels, runs, outcomes)]
    notes = [note for note in outcomes[0].result["notes"] if all(note in o.result["notes"] for o in outcomes)]
    test = outcomes[0].result["test"]  # every readout is tested on the same images: one chance row
    write_csv(out / "readouts.csv", list(rows[0]), finite(rows))
    images = outcomes[0].result["images"]  # every readout trains and tests on the same images
    overall = {"settings": to_dict(config), "images": images, "runs": rows,
               "chance": test["chance"], "mean_chance": test["mean_chance"], "ap_variant": AP_VARIANT,
               "published": published(), "notes": notes, "figure": str(out / "readouts.png")}
    if over_training(runs):
        course = overall["over_training"] = epochs_summary(rows, SCORE_COLUMNS)
        shown = by_run_and_epoch(rows, course)
        spreads = {f"mean ± sd over the runs at epoch {epoch}": stats for epoch, stats in shared_epochs(course).items()}
        readouts_epochs_figure(rows, test["chance"], out / "readouts.png")
        title = (f"# Subitizing readout over the course of training: {len(rows)} checkpoints of "
                 f"{len(course['runs'])} run(s)")
        spread = ("The rows are the checkpoints, by run and epoch (epoch 0: the untrained model); where several runs "
                  "have an epoch, the mean ± sd over those runs (sd with n - 1) follows. Each checkpoint's")
        accuracy = ("Accuracy: " + ", ".join(f"{row['label']} {row['accuracy']:.1%}" for row in shown)
                    + ". Figure: `readouts.png`, the scores against the epoch; each checkpoint's: `readouts.csv`.")
    else:
        stats = overall["over_runs"] = runs_summary(rows, SCORE_COLUMNS)
        shown = rows
        spreads = {f"VAE + softmax, mean ± sd over {len(rows)} runs": stats}
        readouts_figure(rows, stats, test["chance"], PUBLISHED["VAE + softmax [Wever & Runia]"][0],
                        out / "readouts.png")
        title = f"# Subitizing readout over {len(rows)} runs"
        spread = "The mean ± sd is over the runs (sd with n - 1); each run's"
        accuracy = (f"Accuracy {spread_text(stats, 'accuracy')}. Figure: `readouts.png`; each run's scores: "
                    "`readouts.csv`.")
    write_atomic(out / "readout.json", json_text(overall).encode())
    markdown = [
        title, "",
        f"One readout per checkpoint, each in its own folder (table.md, readout.json, confusion.png there), all "
        f"with the same settings and --seed {config.seed}: trained on the posterior means of "
        f"{', '.join(config.train)} ({images['train']} images, and {images['validation']} to choose the epoch) and "
        f"tested on those of {', '.join(config.test)} ({images['test']} images). So what differs between them is "
        "the VAE (its training seed or settings, or how far it had trained), as each readout learns to read its "
        "code.", "",
        f"Readout: {readout_words('/'.join(str(n) for n in sorted({o.result['latent'] for o in outcomes})), config)}.",
        "",
        f"Count AP (%) per class on the test set, and per-class recall, in the layout of the paper's Table 1. AP: "
        f"{AP_VARIANT}. {CHANCE_AND_RECALL_WORDS} {spread} 95% intervals over its test images are in its own "
        "table.md.", "",
        runs_table(shown, spreads, test["chance"], test["mean_chance"]), "",
        accuracy,
        *([""] + [f"**Note:** {note}." for note in notes] if notes else []),
        *(["", "Some runs have notes of their own (such as a test set their VAE trained on): see their table.md."]
          if any(o.result["notes"] != notes for o in outcomes) else []),
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
