"""Pruning methods. Importing this package registers every built-in method in METHODS."""
from . import magnitude, sparsegpt, symbolic, wanda  # noqa: F401  (registration side effect)
from .base import METHODS, Method, metric_method

__all__ = ["METHODS", "Method", "metric_method", "get_method"]


def get_method(name: str, **options) -> Method:
    return METHODS.get(name)(**options)
