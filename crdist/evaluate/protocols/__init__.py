"""Protocols: a name → ``run(context) -> test accuracy``; one module each."""

from crdist.registry import Registry

PROTOCOLS: Registry = Registry("protocol")

from crdist.evaluate.protocols import finetune, knn, linear  # noqa: E402,F401  (register themselves)
