"""Pruning methods. Importing this package imports every module in it, and each method registers
itself there (``@METHODS.register("name")``): a new method is one new file in this folder."""
import importlib
import pkgutil

from .base import METHODS, Method, metric_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # registration side effect

__all__ = ["METHODS", "Method", "metric_method", "get_method"]


def get_method(name: str, **options) -> Method:
    return METHODS.get(name)(**options)
