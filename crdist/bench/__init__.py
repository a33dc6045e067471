"""Benchmarks of the system itself (``crdist bench …``): measured, printed as tables."""
