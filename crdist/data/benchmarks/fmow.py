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
        empty = [d for d in domains if d not in {s.domain for s in source.samples}]
        if empty:
            raise SourceError(f"data.fmow.year_bounds {options.year_bounds}: the year bin(s) {', '.join(empty)} "
                              f"have no train or val rows; choose bounds that leave none empty")
        return source, domain_stream(cfg, source, domains)
    numbering = region_numbering(base)
    if options.regions is not None:
        unknown = [r for r in options.regions if r not in numbering]
        if unknown:
            raise SourceError(f"data.fmow.regions names {', '.join(map(repr, unknown))}, which FMoW does not have; "
                              f"its regions are: {', '.join(numbering)}")
        domains = list(options.regions)
    else:
        if len(numbering) < len(PAPER_REGION_ORDER):
            raise SourceError(f"{base}/fmow_v1.1/rgb_metadata.csv: {len(numbering)} regions ({numbering}); the "
                              f"paper's order needs 6: set data.fmow.regions to choose the tasks")
        domains = [numbering[i] for i in PAPER_REGION_ORDER]
    return source, domain_stream(cfg, source, domains)
