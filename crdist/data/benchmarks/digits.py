"""seq-digits: scikit-learn's real handwritten digits as a class-incremental stream (default 5 × 2)."""

from crdist.data.benchmarks import BENCHMARKS
from crdist.data.benchmarks.common import class_stream
from crdist.data.sources.digits import load_digits


@BENCHMARKS.register("seq-digits")
def seq_digits(cfg):
    source = load_digits()
    return source, class_stream(cfg, source, default_classes_per_task=2)
