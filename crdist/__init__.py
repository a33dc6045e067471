"""crdist: continual representation learning of large backbones, distributed.

The Python API (``crdist/api.py``): ``load_run``, ``load_sweep``, ``run_study``, ``resume_run``,
``run_sweep``, ``write_report``.
They are imported on first use, so that ``import crdist`` (and the CLI's start) stays light.
"""

__version__ = "0.1.0"

__all__ = ["load_run", "load_sweep", "run_study", "run_sweep", "resume_run", "write_report", "Run",
           "Sweep"]


def __getattr__(name: str):
    if name in __all__:
        from crdist import api

        return getattr(api, name)
    raise AttributeError(f"module 'crdist' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
