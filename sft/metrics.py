"""Classification metrics: accuracy, per-class and macro precision / recall / F1, confusion matrix.

Written here (numpy only) so the numbers are defined in one readable place; they agree with
scikit-learn's `precision_recall_fscore_support` (zero_division=0), which tests check.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true, y_pred, num_labels: int) -> np.ndarray:
    """cm[i, j] = number of examples of true class i predicted as class j."""
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def classification_report(y_true, y_pred, label_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro and weighted P/R/F1 and a per-class table (precision, recall, f1, support)."""
    k = len(label_names)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    total = support.sum()
    weights = support / total if total else np.zeros(k)
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "f1_weighted": float((f1 * weights).sum()),
        "num_examples": int(total),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": cm.tolist(),
    }
