"""Continual-learning methods: how a backbone is updated while it trains on one task.

A method is one module here that registers a :class:`~crdist.methods.base.Method` subclass with
``@METHODS.register(name)``; it owns its config section, its state and its hooks (see base.py).
The methods with a replay buffer build on :class:`~crdist.methods.replay.ReplayMethod`, which owns
the buffer (buffer.py), its updates, its state and its re-sharding.
"""

from crdist.registry import Registry

METHODS: Registry = Registry("method")

from crdist.methods import agem, der, er, ewc, frozen, joint, lpft, lump, sgd, si  # noqa: E402,F401  (register themselves)
