"""The inversion engine, its methods, losses, schedules and result files."""

from .engine import Progress, invert
from .methods import list_methods, make_method
from .result import InversionResult

__all__ = ["InversionResult", "Progress", "invert", "list_methods", "make_method"]
