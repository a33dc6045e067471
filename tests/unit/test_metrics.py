"""Continual-learning metrics on hand-made matrices, against values worked out by hand."""

import pytest

from crdist.evaluate.metrics import (
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forward_transfer,
    lump_forgetting,
    summarize,
)

# Rows c_0..c_3, columns tasks 1..3. Task 1 peaks after task 2 (0.95), not on the diagonal,
# which is what separates forgetting from backward transfer.
A = [
    [0.50, 0.40, 0.30],
    [0.90, 0.50, 0.40],
    [0.95, 0.80, 0.60],
    [0.60, 0.70, 0.90],
]


def test_average_accuracy_is_the_mean_of_the_last_row():
    # (0.6 + 0.7 + 0.9) / 3
    assert average_accuracy(A) == pytest.approx(2.2 / 3)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_diagonal():
    # task 1: max(0.90, 0.95) - 0.60 = 0.35 ; task 2: max(0.80) - 0.70 = 0.10 ; mean 0.225
    assert average_forgetting(A) == pytest.approx(0.225)


def test_lump_forgetting_takes_the_max_over_every_row_after_a_task_and_divides_by_all_tasks():
    # Rows c_1..c_3 only. task 1: 0.95 - 0.60 = 0.35 ; task 2: 0.80 - 0.70 = 0.10 ;
    # task 3: 0.90 - 0.90 = 0 ; sum 0.45 / 3 tasks = 0.15
    assert lump_forgetting(A) == pytest.approx(0.15)
    # Never negative per task, and c_0 does not count: an initial model better than every later
    # row forgets nothing by this measure.
    b = [[0.99, 0.99, 0.99], [0.8, 0.6, 0.5], [0.85, 0.9, 0.7], [0.9, 0.9, 0.95]]
    assert lump_forgetting(b) == pytest.approx(0.0)


def test_backward_transfer_compares_final_with_just_learned():
    # task 1: 0.60 - 0.90 = -0.30 ; task 2: 0.70 - 0.80 = -0.10 ; mean -0.20
    assert backward_transfer(A) == pytest.approx(-0.20)


def test_forward_transfer_compares_before_training_with_the_initial_model():
    # task 2: A[1][2] - A[0][2] = 0.50 - 0.40 = 0.10 ; task 3: A[2][3] - A[0][3] = 0.60 - 0.30 = 0.30
    assert forward_transfer(A) == pytest.approx(0.20)


def test_accuracy_that_keeps_growing_gives_negative_forgetting():
    # Not clamped at 0: task 1: max(0.80, 0.85) - 0.90 = -0.05 ; task 2: 0.90 - 0.90 = 0 ; mean -0.025
    # BWT = mean(0.9 - 0.8, 0.9 - 0.9) = 0.05 ; FWT = mean(0.6 - 0.5, 0.7 - 0.5) = 0.15
    b = [[0.5, 0.5, 0.5], [0.8, 0.6, 0.5], [0.85, 0.9, 0.7], [0.9, 0.9, 0.95]]
    assert average_forgetting(b) == pytest.approx(-0.025)
    assert backward_transfer(b) == pytest.approx(0.05)
    assert forward_transfer(b) == pytest.approx((0.1 + 0.2) / 2)


def test_a_single_task_has_no_transfer_or_forgetting():
    assert summarize([[0.5], [0.8]]) == {
        "average_accuracy": 0.8,
        "average_forgetting": None,
        "lump_forgetting": None,
        "backward_transfer": None,
        "forward_transfer": None,
    }


def test_a_matrix_of_the_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\(T\+1\) × T"):
        average_accuracy([[0.5, 0.5], [0.6, 0.7]])
