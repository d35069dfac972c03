import math

import pytest

from clbench import metrics

NAN = math.nan


def test_two_tasks_paper_columns_and_forgetting():
    R = [[90.0, NAN], [60.0, 80.0]]
    p = metrics.paper_columns(R)
    assert p == {
        "t1": 90.0,
        "t2": 80.0,
        "t1_after_t2": 60.0,
        "avg": pytest.approx(230 / 3),
        "forgetting": 30.0,
    }
    assert metrics.forgetting(R) == [30.0]
    assert metrics.backward_transfer(R) == -30.0
    assert metrics.average_accuracy(R) == 70.0


def test_forgetting_uses_best_earlier_accuracy_not_first():
    # task 1 improves during task 2 (backward transfer), then drops during task 3
    R = [[70.0, NAN, NAN], [85.0, 60.0, NAN], [50.0, 55.0, 90.0]]
    assert metrics.forgetting(R) == [35.0, 5.0]  # 85-50, 60-55
    assert metrics.mean_forgetting(R) == 20.0
    assert metrics.backward_transfer(R) == pytest.approx(((50 - 70) + (55 - 60)) / 2)
    assert metrics.average_accuracy(R) == pytest.approx(65.0)


def test_recovered_task_has_negative_forgetting_and_positive_bwt():
    R = [[60.0, NAN, NAN], [40.0, 70.0, NAN], [75.0, 72.0, 80.0]]
    f = metrics.forgetting(R)
    assert f[0] == 60.0 - 75.0  # best earlier (60) minus final (75): recovered beyond
    assert f[1] == 70.0 - 72.0
    assert metrics.backward_transfer(R) > 0


def test_summarize_names_and_single_task():
    s = metrics.summarize([[88.0]], ["a"])
    assert s["final"]["accuracy"] == {"a": 88.0}
    assert s["final"]["forgetting"] == {}
    assert math.isnan(s["final"]["mean_forgetting"]) and math.isnan(s["final"]["bwt"])
    assert s["paper"] is None
    s2 = metrics.summarize([[90.0, NAN], [60.0, 80.0]], ["x", "y"])
    assert s2["final"]["forgetting"] == {"x": 30.0}
    assert s2["paper"]["forgetting"] == 30.0


def test_rejects_non_square_matrix():
    with pytest.raises(ValueError):
        metrics.average_accuracy([[1.0, 2.0]])
    with pytest.raises(ValueError):
        metrics.paper_columns([[1.0]])
