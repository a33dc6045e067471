"""Benchmarks: a name → a function that reads the raw source and splits it into a task stream.

Each benchmark is one module here that registers itself with ``@BENCHMARKS.register(name)``; the
function takes the DataConfig and returns ``(Source, [TaskSplit, …])``.
"""

from crdist.registry import Registry

BENCHMARKS: Registry = Registry("benchmark")

from crdist.data.benchmarks import (  # noqa: E402,F401  (register themselves)
    cifar,
    digits,
    fashion_mnist,
    fmow,
    folders,
    hf,
    text,
    tinyimagenet,
)
