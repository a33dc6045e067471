"""crdist: continual representation learning of large backbones, distributed."""

__version__ = "0.1.0"
