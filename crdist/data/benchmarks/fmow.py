"""fmow: WILDS FMoW as a domain-incremental stream over 62 shared classes, by region (6 tasks, in
the paper's order) or by year."""

from crdist.data.benchmarks import BENCHMARKS
from crdist.data.benchmarks.common import domain_stream, root
from crdist.data.sources.base import SourceError
from crdist.data.sources.fmow import load_fmow, region_numbering, year_bins

PAPER_REGION_ORDER = [1, 3, 0, 4, 2, 5]  # WILDS region numbers, as the paper's code orders them


@BENCHMARKS.register("fmow")
def fmow(cfg):
    base = root(cfg, "the folder holding fmow_v1.1/")
    options = cfg.fmow
    source = load_fmow(base, options.by, options.year_bounds)
    if options.by == "year":
        domains = year_bins(options.year_bounds)
    elif options.regions is not None:
        domains = list(options.regions)
    else:
        numbering = region_numbering(base)
        if len(numbering) < len(PAPER_REGION_ORDER):
            raise SourceError(f"{base}/fmow_v1.1/rgb_metadata.csv: {len(numbering)} regions ({numbering}); the "
                              f"paper's order needs 6: set data.fmow.regions to choose the tasks")
        domains = [numbering[i] for i in PAPER_REGION_ORDER]
    present = {s.domain for s in source.samples}
    return source, domain_stream(cfg, source, [d for d in domains if d in present])
