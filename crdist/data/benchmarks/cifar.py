"""seq-cifar10 (5 tasks × 2 classes) and seq-cifar100 (20 × 5; 10 × 10 with classes_per_task=10)."""

from crdist.data.benchmarks import BENCHMARKS
from crdist.data.benchmarks.common import class_stream, root
from crdist.data.sources.cifar import load_cifar10, load_cifar100


@BENCHMARKS.register("seq-cifar10")
def seq_cifar10(cfg):
    source = load_cifar10(root(cfg, "the folder holding cifar-10-batches-py/"))
    return source, class_stream(cfg, source, default_classes_per_task=2)


@BENCHMARKS.register("seq-cifar100")
def seq_cifar100(cfg):
    source = load_cifar100(root(cfg, "the folder holding cifar-100-python/"))
    return source, class_stream(cfg, source, default_classes_per_task=5)
