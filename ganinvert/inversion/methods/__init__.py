"""Inversion methods (parameterisations) and their registry.

``make_method(name, preset, overrides)`` builds one; ``list_methods()`` lists them.
"""

from __future__ import annotations

from typing import Any

from ...errors import GanInvertError
from .base import REGISTRY, Method, MethodSettings, ParamGroup, Preset, Stage, SynthesisInputs
from . import latent, sphinx  # noqa: F401  (registration)
from . import feature, ilo  # noqa: F401
from . import pti, sam  # noqa: F401
from . import hyperinverter  # noqa: F401  (learned inverter, no optimisation)
from . import discover  # noqa: F401  (SPHInX attribute discovery, App. B)


def list_methods() -> dict[str, type[Method]]:
    return dict(sorted(REGISTRY.methods.items()))


def make_method(name: str, preset: str | None = None, overrides: dict[str, Any] | None = None) -> Method:
    """Instantiate method ``name`` with ``preset`` (or its default preset) and ``overrides``."""
    cls = REGISTRY.methods.get(name)
    if cls is None:
        raise GanInvertError(f"unknown method {name!r}; known: {', '.join(list_methods())}")
    settings = cls.Settings()
    preset = preset if preset is not None else cls.default_preset
    if preset is not None:
        if preset not in cls.presets:
            known = ", ".join(cls.presets) or "none"
            raise GanInvertError(f"unknown preset {preset!r} for method {name}; known: {known}")
        settings = settings.replace(**cls.presets[preset].settings)
    if overrides:
        settings = settings.replace(**overrides)
    return cls(settings)


__all__ = ["Method", "MethodSettings", "ParamGroup", "Preset", "Stage", "SynthesisInputs", "list_methods",
           "make_method"]
