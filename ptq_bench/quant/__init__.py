"""Post-training quantization methods. Importing this package registers every method."""

from ptq_bench.quant.registry import METHODS, Method, QuantReport, get_method, register

__all__ = ["METHODS", "Method", "QuantReport", "get_method", "register", "load_all"]


def load_all() -> None:
    """Import every method module so that its @register decorator runs."""
    import importlib
    import pkgutil

    import ptq_bench.quant as pkg

    skip = {"registry", "primitives", "calibrate", "linears", "apply", "ldlq"}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in skip and not info.name.startswith("_"):
            importlib.import_module(f"ptq_bench.quant.{info.name}")
