"""Reading the Python 2 pickles CIFAR ships, without letting a pickle run arbitrary code.

Only what a CIFAR batch contains may be constructed: dicts, lists, strings, numbers and numpy
arrays. Anything else (a crafted or foreign file) is refused with the file's name.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from crdist.data.sources.base import SourceError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2
}


class _DataOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_pickle(path: Path) -> dict:
    """A CIFAR batch as a dict with str keys (the files' Python 2 strings load as bytes)."""
    try:
        with open(path, "rb") as f:
            data = _DataOnly(f, encoding="bytes").load()
    except FileNotFoundError:
        raise SourceError(f"{path}: missing") from None
    except Exception as err:
        raise SourceError(f"{path}: not a readable CIFAR pickle ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a dict, found {type(data).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}
