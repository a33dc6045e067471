"""seq-fashion-mnist: Fashion-MNIST from its IDX files, 5 tasks × 2 classes."""

from crdist.data.benchmarks import BENCHMARKS
from crdist.data.benchmarks.common import class_stream, root
from crdist.data.sources.idx import load_fashion_mnist


@BENCHMARKS.register("seq-fashion-mnist")
def seq_fashion_mnist(cfg):
    source = load_fashion_mnist(root(cfg, "the folder of the IDX files, e.g. /usr/share/datasets/fashion-mnist"))
    return source, class_stream(cfg, source, default_classes_per_task=2)
