"""Continual-learning methods: how a backbone is updated while it trains on one task.

A method is one module here that registers a :class:`~crdist.methods.base.Method` subclass with
``@METHODS.register(name)``.
"""

from crdist.registry import Registry

METHODS: Registry = Registry("method")

from crdist.methods import lpft, sgd  # noqa: E402,F401  (register themselves)
