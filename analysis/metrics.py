"""Count classification metrics: per-class average precision and recall, accuracy, confusion matrix.

AP variant: non-interpolated average precision, one class against the rest, ranked by that
class's softmax score: AP = sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds (tied
scores form one step). This is scikit-learn's `average_precision_score`, not the 11-point
interpolated AP of PASCAL VOC. The chance AP of a class is its prevalence in the test set (undefined, like its
AP, for a class the test set lacks).

Intervals: a percentile bootstrap over the test images. A resample is a multiplicity per image, so the AP
of every resample is computed from one sort of the scores (a drawn image's copies share its score and so
its threshold step): the same numbers as scoring each resampled test set anew.
"""
from __future__ import annotations

import warnings

import numpy as np
from tqdm import tqdm

CLASSES = ("0", "1", "2", "3", "4+")


def count_class(count: np.ndarray) -> np.ndarray:
    """Counts as the readout's classes 0, 1, 2, 3, 4+ (4 and more share class 4)."""
    return np.minimum(np.asarray(count, dtype=np.int64), len(CLASSES) - 1)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Non-interpolated AP of `scores` for the boolean labels `positive`; NaN without positives."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(weighted_average_precision(scores, positive, np.ones((1, scores.size)))[0])


def classification_report(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """AP per class and its mean, chance (prevalence), accuracy and the confusion matrix. A class absent from
    the test set has NaN for its AP, chance and recall, and the means are over the classes present."""
    labels = np.asarray(labels)
    k = probabilities.shape[1]
    ap = [average_precision(probabilities[:, c], labels == c) for c in range(k)]
    # A class the test set lacks has no AP, and so no chance AP: both means are over the classes it has.
    prevalence = [float(np.mean(labels == c)) if np.any(labels == c) else float("nan") for c in range(k)]
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diag(confusion) / confusion.sum(axis=1)  # NaN for a class absent from the test set
    return {"ap": ap, "mean_ap": float(np.nanmean(ap)), "chance": prevalence,
            "mean_chance": float(np.nanmean(prevalence)), "recall": recall.tolist(),
            "mean_recall": float(np.nanmean(recall)),
            "accuracy": float(np.mean(predicted == labels)), "confusion": confusion.tolist(), "n": int(labels.size)}


BOOTSTRAP_CELLS = 4_000_000  # resamples x images held at once: about 32 MB a matrix


def resample_weights(m: int, resamples: int, rng: np.random.Generator, progress: bool = False):
    """Bootstrap resamples of m images, as blocks of (resamples, m) multiplicities."""
    block = max(1, BOOTSTRAP_CELLS // max(m, 1))
    starts = range(0, resamples, block)
    for start in tqdm(starts, desc="bootstrap of the test scores", unit="block", dynamic_ncols=True,
                      disable=not progress or len(starts) < 2):
        b = min(block, resamples - start)
        rows = rng.integers(0, m, (b, m)) + (np.arange(b) * m)[:, None]
        yield np.bincount(rows.ravel(), minlength=b * m).reshape(b, m).astype(np.float64)


def weighted_average_precision(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The AP of each row of multiplicities `weights` (resamples, m), a weight of 1 each being the test set
    itself; NaN without positives."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, positive, weights = scores[order], np.asarray(positive, bool)[order], weights[:, order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_positives = np.cumsum(weights * positive, axis=1)[:, last_of_threshold]
    drawn = np.cumsum(weights, axis=1)[:, last_of_threshold]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(drawn > 0, true_positives / drawn, 0.0)
        recall = true_positives / true_positives[:, -1:]
        steps = np.diff(np.concatenate([np.zeros((len(weights), 1)), recall], axis=1), axis=1)
    return np.where(true_positives[:, -1] > 0, np.sum(steps * precision, axis=1), np.nan)


def bootstrap_intervals(probabilities: np.ndarray, labels: np.ndarray, resamples: int,
                        rng: np.random.Generator, progress: bool = False) -> dict:
    """95% percentile intervals over resamples of the test images: AP and recall per class, their means
    over the classes present, and accuracy. A resample without a class has no AP or recall of it, and its
    means are over the classes it has; `missing` counts, per class, the resamples without it."""
    labels = np.asarray(labels)
    k = probabilities.shape[1]
    members = [labels == c for c in range(k)]
    correct = probabilities.argmax(axis=1) == labels
    ap, recall, accuracy = [], [], []
    for weights in resample_weights(labels.size, resamples, rng, progress):
        ap.append(np.stack([weighted_average_precision(probabilities[:, c], members[c], weights)
                            for c in range(k)], axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            recall.append(np.stack([(weights @ (correct & members[c])) / (weights @ members[c]) for c in range(k)],
                                   axis=1))
        accuracy.append(weights @ correct / labels.size)
    ap, recall, accuracy = np.concatenate(ap), np.concatenate(recall), np.concatenate(accuracy)

    def interval(values):  # over resamples; NaN where a class was never drawn or the test set lacks it
        values = values[np.isfinite(values)]
        return [float(v) for v in np.percentile(values, [2.5, 97.5])] if values.size else [float("nan")] * 2

    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample of no class at all: its means are NaN
        mean_ap, mean_recall = np.nanmean(ap, axis=1), np.nanmean(recall, axis=1)
    return {"resamples": resamples, "ap": [interval(ap[:, c]) for c in range(k)], "mean_ap": interval(mean_ap),
            "recall": [interval(recall[:, c]) for c in range(k)], "mean_recall": interval(mean_recall),
            "accuracy": interval(accuracy),
            "missing": [int(np.sum(~np.isfinite(ap[:, c]))) if members[c].any() else None for c in range(k)]}
