"""seq-tinyimagenet: 10 tasks × 20 classes in wnids.txt order; the paper's 20 × 5 over the first
100 classes with classes_per_task=5 and tasks=20."""

from crdist.data.benchmarks import BENCHMARKS
from crdist.data.benchmarks.common import class_stream, root
from crdist.data.sources.tinyimagenet import load_tinyimagenet


@BENCHMARKS.register("seq-tinyimagenet")
def seq_tinyimagenet(cfg):
    source = load_tinyimagenet(root(cfg, "the folder holding tiny-imagenet-200/"))
    return source, class_stream(cfg, source, default_classes_per_task=20)
