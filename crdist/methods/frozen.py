"""frozen: a reference that never trains. Every checkpoint c_i is c_0, so each row of its matrices
measures the initial model: the floor a method must beat to have learned anything from the stream.
It has no steps; its jobs only write c_{i-1}'s weights again as c_i."""

from crdist.methods import METHODS
from crdist.methods.base import Method, Phase


@METHODS.register("frozen")
class Frozen(Method):
    name = "frozen"

    def phases(self, total_steps: int) -> list[Phase]:
        return []
