"""Text streams: text-5 (the MbPA++ protocol over five Zhang et al. datasets, orders 1–4) and
sentiment-domains (one binary task per VADER domain)."""

from crdist.data.benchmarks import BENCHMARKS
from crdist.data.benchmarks.common import domain_stream, root
from crdist.data.sources.text import ORDERS, load_sentiment, load_text5
from crdist.data.sources.text import sentiment_domains as domains_in


@BENCHMARKS.register("text-5")
def text5(cfg):
    options = cfg.text
    source = load_text5(root(cfg, "the folder holding ag_news_csv/, yelp_review_full_csv/, …"), options.order,
                        options.train_per_task, options.test_per_task, cfg.seed)
    return source, domain_stream(cfg, source, ORDERS[options.order])


@BENCHMARKS.register("sentiment-domains")
def sentiment_domains(cfg):
    folder = root(cfg, "the folder of *_GroundTruth.txt files (hutto_ICWSM_2014/)")
    domains = domains_in(folder, cfg.text.domains)
    source = load_sentiment(folder, domains)
    return source, domain_stream(cfg, source, domains)
