"""hf: a local Hugging Face dataset (crdist/data/sources/hf.py), split into tasks by its classes
(classes_per_task or task_classes, as imagefolder) or, with data.hf.domain, one task per value
of that column, in data.hf.domains' order."""

from crdist.data.benchmarks import BENCHMARKS
from crdist.data.benchmarks.common import class_stream, domain_stream, root
from crdist.data.sources.hf import load_hf


@BENCHMARKS.register("hf")
def hf(cfg):
    source, domains = load_hf(root(cfg, "a save_to_disk directory, parquet / CSV / JSON files or an image folder"),
                              cfg.hf, cfg.skip_corrupt)
    try:
        if domains is not None:
            return source, domain_stream(cfg, source, domains)
        return source, class_stream(cfg, source, default_classes_per_task=2)
    except BaseException:
        if source.cleanup is not None:
            source.cleanup()
        raise
