"""Benchmarks: a name → a function that reads the raw source and splits it into a task stream.

Each benchmark is one module here that registers itself with ``@BENCHMARKS.register(name)``.
"""

from crdist.registry import Registry

BENCHMARKS: Registry = Registry("benchmark")

from crdist.data.benchmarks import digits  # noqa: E402,F401  (registers seq-digits)
