"""imagefolder and csv: your own images, split into tasks by data.task_classes (class names per
task) or by classes_per_task over the sorted class names."""

from crdist.data.benchmarks import BENCHMARKS
from crdist.data.benchmarks.common import class_stream, root
from crdist.data.sources.folders import load_image_csv, load_imagefolder


@BENCHMARKS.register("imagefolder")
def imagefolder(cfg):
    source = load_imagefolder(root(cfg, "a folder with train/<class>/ (and test/<class>/)"))
    return source, class_stream(cfg, source, default_classes_per_task=2)


@BENCHMARKS.register("csv")
def image_csv(cfg):
    source = load_image_csv(root(cfg, "a CSV file with columns path,label[,split]"))
    return source, class_stream(cfg, source, default_classes_per_task=2)
