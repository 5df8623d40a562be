"""Count classification metrics: per-class average precision and recall, accuracy, confusion matrix.

AP variant: non-interpolated average precision, one class against the rest, ranked by that
class's softmax score: AP = sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds (tied
scores form one step). This is scikit-learn's `average_precision_score`, not the 11-point
interpolated AP of PASCAL VOC. The chance AP of a class is its prevalence in the test set (undefined, like its
AP, for a class the test set lacks).
"""
from __future__ import annotations

import numpy as np

CLASSES = ("0", "1", "2", "3", "4+")


def count_class(count: np.ndarray) -> np.ndarray:
    """Counts as the readout's classes 0, 1, 2, 3, 4+ (4 and more share class 4)."""
    return np.minimum(np.asarray(count, dtype=np.int64), len(CLASSES) - 1)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Non-interpolated AP of `scores` for the boolean labels `positive`; NaN without positives."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, positive = scores[order], positive[order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_positives = np.cumsum(positive)[last_of_threshold]
    precision = true_positives / (last_of_threshold + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


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
