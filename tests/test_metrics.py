import numpy as np
import pytest

from sft.metrics import classification_report


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_agrees_with_sklearn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 4, 200))
    y_pred[y_pred == 3] = 2  # class 3 is never predicted: zero-division paths are exercised
    report = classification_report(y_true, y_pred, ["a", "b", "c", "d"])
    p, r, f, s = sk.precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2, 3], zero_division=0)
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
    assert report["precision_macro"] == pytest.approx(p.mean())
    assert report["recall_macro"] == pytest.approx(r.mean())
    assert report["f1_macro"] == pytest.approx(f.mean())
    assert [report["per_class"][k]["support"] for k in "abcd"] == s.tolist()
    assert report["confusion_matrix"] == sk.confusion_matrix(y_true, y_pred, labels=[0, 1, 2, 3]).tolist()
