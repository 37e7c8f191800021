"""Metrics against a hand-computed example (and sklearn, where sklearn defines the same number)."""

import numpy as np
import pytest

from facephi.scoring.metrics import MISS, compute_metrics, confusion_matrix

NAMES = ("a", "b", "c")


def test_hand_computed_example():
    # true:  a a a a b b c c     (class a: 4, b: 2, c: 2)
    # pred:  a a b - b c c -     (- = no keyword)
    y_true = [0, 0, 0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 1, MISS, 1, 2, 2, MISS]
    m = compute_metrics(y_true, y_pred, class_names=NAMES,
                        ambiguous=[0, 0, 1, 0, 0, 0, 0, 0],
                        contains_correct=[1, 1, 1, 0, 1, 0, 1, 0])
    assert m.n == 8
    assert m.accuracy == pytest.approx(4 / 8)
    # recalls: a 2/4, b 1/2, c 1/2
    assert m.balanced_accuracy == pytest.approx((0.5 + 0.5 + 0.5) / 3)
    # precisions: a 2/2, b 1/2, c 1/2 -> F1: a 2*2/(4+2)=2/3, b 2*1/(2+2)=1/2, c 1/2
    assert m.macro_f1 == pytest.approx((2 / 3 + 0.5 + 0.5) / 3)
    assert m.per_class["a"] == {"recall": 0.5, "precision": 1.0, "f1": pytest.approx(2 / 3),
                                "support": 4, "predicted": 2}
    assert m.miss_rate == pytest.approx(2 / 8)
    assert m.ambiguous_rate == pytest.approx(1 / 8)
    assert m.accuracy_contains == pytest.approx(5 / 8)
    assert m.confusion == [[2, 1, 0, 1], [0, 1, 1, 0], [0, 0, 1, 1]]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_matches_sklearn_on_random_predictions():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 8, 300)
    y_pred = np.where(rng.random(300) < 0.2, MISS, rng.integers(0, 8, 300))
    m = compute_metrics(y_true, y_pred)
    assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m.macro_f1 == pytest.approx(f1_score(y_true, y_pred, labels=list(range(8)), average="macro"))
    assert np.asarray(m.confusion).sum() == 300
    assert m.ambiguous_rate is None and m.accuracy_contains is None


def test_absent_class_is_left_out_of_macro_means():
    m = compute_metrics([0, 0, 1], [0, 1, 1], class_names=NAMES)
    assert m.per_class["c"] == {"recall": None, "precision": None, "f1": None,
                                "support": 0, "predicted": 0}
    assert m.balanced_accuracy == pytest.approx((0.5 + 1.0) / 2)


def test_confusion_matrix_has_a_miss_column():
    assert confusion_matrix(np.array([1, 1]), np.array([MISS, 0]), 2).tolist() == [[0, 0, 0], [1, 0, 1]]


@pytest.mark.parametrize(
    "y_true, y_pred, message",
    [
        ([0, 1], [0], "2 samples"),
        ([0, 3], [0, 1], "outside"),
        ([0, -1], [0, 1], "outside"),
        ([0.0, 1.0], [0, 1], "integer"),
        ([], [], "no samples"),
    ],
)
def test_bad_inputs_are_rejected(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(np.asarray(y_true), np.asarray(y_pred, dtype=np.int64), class_names=NAMES)


def test_bootstrap_intervals_bracket_the_estimate_and_shrink_with_n():
    from facephi.scoring.metrics import bootstrap_intervals

    rng = np.random.default_rng(0)

    def sample(n):
        truth = rng.integers(0, 8, n)
        pred = np.where(rng.random(n) < 0.6, truth, rng.integers(-1, 8, n))
        return truth, pred

    small, large = sample(200), sample(5000)
    m_small = compute_metrics(*small, bootstrap=500)
    m_large = compute_metrics(*large, bootstrap=500)
    for m in (m_small, m_large):
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            low, high = m.intervals[key]
            assert low < getattr(m, key) < high, key
    width = lambda m: m.intervals["accuracy"][1] - m.intervals["accuracy"][0]  # noqa: E731
    assert width(m_large) < width(m_small) / 3
    # about +-1.96 standard errors of a proportion
    p = m_large.accuracy
    assert abs(width(m_large) - 2 * 1.96 * np.sqrt(p * (1 - p) / 5000)) < 0.006
    assert bootstrap_intervals(*small, 8, 500) == bootstrap_intervals(*small, 8, 500)  # seeded
    assert compute_metrics(*small).intervals is None
    # every answer right: a zero-width interval at 1
    assert compute_metrics(small[0], small[0], bootstrap=50).intervals["accuracy"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="bootstrap"):
        bootstrap_intervals(*small, 8, 0)


def test_answer_shares_against_the_issue_criterion():
    from facephi.scoring.metrics import answer_shares

    # 100 samples: a 50 (answered 74 times: within 1.5 x), b 48 (answered 20), c 2 (2 %, answered 6 > 5 %)
    y_true = [0] * 50 + [1] * 48 + [2] * 2
    y_pred = [0] * 74 + [1] * 20 + [2] * 6
    shares = answer_shares(compute_metrics(y_true, y_pred, class_names=NAMES))
    assert shares["a"]["answered"] == pytest.approx(0.74) and shares["a"]["limit"] == pytest.approx(0.75)
    assert shares["a"]["within"] and shares["b"]["within"]
    assert shares["c"]["share"] == pytest.approx(0.02) and shares["c"]["limit"] == 0.05
    assert shares["c"]["count"] == 6 and not shares["c"]["within"]
    # a answered 76 times (over 1.5 x its 50 %), c 5 times (the 5 % cap: within); misses name no class
    y_pred = [0] * 76 + [1] * 18 + [2] * 5 + [MISS]
    shares = answer_shares(compute_metrics(y_true, y_pred, class_names=NAMES))
    assert not shares["a"]["within"] and shares["c"]["within"] and shares["b"]["count"] == 18
    assert sum(row["answered"] for row in shares.values()) == pytest.approx(0.99)
