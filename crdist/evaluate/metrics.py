"""Continual-learning metrics of one accuracy matrix (pure functions).

A is (T+1) × T: row i is checkpoint c_i (row 0 the initial model), column j-1 is task j.
Formulas (tasks 1-based, as in the report):
- average accuracy  = mean_j A[T][j]
- average forgetting = mean_{j<T} ( max_{i in j..T-1} A[i][j] − A[T][j] )   (the standard one; can be < 0)
- LUMP forgetting   = (1/T) Σ_{j≤T} ( max_{i in 1..T} A[i][j] − A[T][j] )   (the paper's LUMP code:
  the max over every row after a task, also rows before task j was trained, and the last task's
  term too; each term ≥ 0; row 0 is left out because that code's matrix has no c_0 row)
- backward transfer = mean_{j<T} ( A[T][j] − A[j][j] )
- forward transfer  = mean_{j>1} ( A[j-1][j] − A[0][j] )
With a single task the last three are undefined and reported as None.
"""

from __future__ import annotations

from typing import Sequence

Matrix = Sequence[Sequence[float]]


def _at(a: Matrix, i: int, j: int) -> float:
    return a[i][j - 1]


def _tasks(a: Matrix) -> int:
    tasks = len(a) - 1
    if tasks < 1 or any(len(row) != tasks for row in a):
        raise ValueError(f"expected a (T+1) × T matrix, got {len(a)} rows of lengths {[len(r) for r in a]}")
    return tasks


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def average_accuracy(a: Matrix) -> float:
    t = _tasks(a)
    return _mean([_at(a, t, j) for j in range(1, t + 1)])


def average_forgetting(a: Matrix) -> float | None:
    t = _tasks(a)
    return _mean([max(_at(a, i, j) for i in range(j, t)) - _at(a, t, j) for j in range(1, t)])


def lump_forgetting(a: Matrix) -> float | None:
    t = _tasks(a)
    if t < 2:
        return None
    return sum(max(_at(a, i, j) for i in range(1, t + 1)) - _at(a, t, j) for j in range(1, t + 1)) / t


def backward_transfer(a: Matrix) -> float | None:
    t = _tasks(a)
    return _mean([_at(a, t, j) - _at(a, j, j) for j in range(1, t)])


def forward_transfer(a: Matrix) -> float | None:
    t = _tasks(a)
    return _mean([_at(a, j - 1, j) - _at(a, 0, j) for j in range(2, t + 1)])


def summarize(a: Matrix) -> dict[str, float | None]:
    return {
        "average_accuracy": average_accuracy(a),
        "average_forgetting": average_forgetting(a),
        "lump_forgetting": lump_forgetting(a),
        "backward_transfer": backward_transfer(a),
        "forward_transfer": forward_transfer(a),
    }
