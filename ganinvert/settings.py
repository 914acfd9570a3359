"""Typed settings: one conversion of user-given values to the types their dataclass declares.

Settings reach the library as Python literals (``--set key=value`` is ``ast.literal_eval``-ed),
preset dicts or keyword arguments. :func:`coerce_settings` converts each value to its field's
annotation (``int``, ``float``, ``bool``, ``str``, ``X | Y``, ``tuple[X, ...]``, ``dict[K, V]``,
a class such as ``Path``) and raises a one-line :class:`~ganinvert.errors.GanInvertError` naming
the setting and the type it expects; the settings' own ``validate()`` then checks only what the
values mean.

Rules every setting follows (no setting takes an infinite value, so none is exempt):

* numbers are finite; ``bool`` is never a number; an ``int`` is accepted for a ``float`` (and
  converted), an integral ``float`` for an ``int``;
* a name with the word ``lambda`` (``lambda_mse``, ``locality_lambda_lpips``) or ending in
  ``_weight`` is a loss weight, >= 0;
* ``lr`` and names ending in ``_lr`` are learning rates, > 0.

>>> @dataclasses.dataclass
... class Example:
...     steps: int = 10
...     lr: float = 0.01
>>> coerce_settings(Example, {"steps": 2.0, "lr": 1})
{'steps': 2, 'lr': 1.0}
>>> coerce_settings(Example, {"steps": "abc"})
Traceback (most recent call last):
ganinvert.errors.GanInvertError: setting 'steps' must be an integer, got 'abc'

"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import types
import typing
from typing import Any, Callable, Mapping, TypeVar, Union

from .errors import GanInvertError

T = TypeVar("T")


class _Mismatch(Exception):
    """A value that does not fit an annotation (turned into one GanInvertError by the caller)."""


def coerce_settings(target: type | Callable[..., Any], values: Mapping[str, Any], *, owner: str | None = None,
                    what: str = "setting") -> dict[str, Any]:
    """``values`` converted to the types of ``target``'s fields (a dataclass) or keyword
    parameters (any other callable, e.g. a class's ``__init__``).

    Raises GanInvertError for an unknown name (listing the known ones), a value of the wrong type
    and a value that breaks the rules of the module docstring. ``owner`` names ``target`` in the
    unknown-name message; ``what`` is the word for one value ("setting", "option").
    """
    types_ = field_types(target)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise GanInvertError(f"unknown {what}(s) {', '.join(unknown)} for {owner or target.__name__}; "
                             f"known: {', '.join(sorted(types_)) or 'none'}")
    out = {}
    for name, value in values.items():
        try:
            out[name] = _convert(value, types_[name])
        except _Mismatch:
            raise GanInvertError(f"{what} {name!r} must be {_describe(types_[name])}, got {value!r}") from None
        _check_rules(name, out[name], value, what)
    return out


def replace_typed(instance: T, **changes: Any) -> T:
    """``dataclasses.replace(instance, **changes)`` with ``changes`` converted by :func:`coerce_settings`."""
    return dataclasses.replace(instance, **coerce_settings(type(instance), changes))


def typed_fields(instance: Any) -> None:
    """Convert every field of the dataclass ``instance`` in place (call it from ``__post_init__``
    so that no settings object holds an unchecked value, however it was built)."""
    values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance) if f.init}
    for name, value in coerce_settings(type(instance), values).items():
        object.__setattr__(instance, name, value)  # frozen dataclasses too


@functools.cache
def field_types(target: type | Callable[..., Any]) -> dict[str, Any]:
    """Name -> resolved annotation of the settings ``target`` takes (unannotated: ``Any``)."""
    if dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(target) if f.init}
    hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name: hints.get(name, Any) for name, p in inspect.signature(target).parameters.items()
            if p.kind in keyword}


def _convert(value: Any, annotation: Any) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if annotation is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (Union, types.UnionType):
        for arg in args:  # in declaration order: `float | None` turns 1 into 1.0
            try:
                return _convert(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Mismatch
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise _Mismatch
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Mismatch
        return float(value)
    if annotation is str:
        # `--set content_input=8` reaches here as the int 8: an integer spells itself exactly; a
        # path setting may be given as a Path.
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise _Mismatch
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (tuple, list)):  # a list from `--set x=[1,2]` or JSON
            raise _Mismatch
        return tuple(_convert(v, args[0]) for v in value)
    if origin is dict and len(args) == 2:
        if not isinstance(value, Mapping):
            raise _Mismatch
        return {_convert(k, args[0]): _convert(v, args[1]) for k, v in value.items()}
    if inspect.isclass(annotation):
        if isinstance(value, annotation):
            return value
        raise _Mismatch
    raise TypeError(f"settings annotation {annotation!r} is not supported")


_PLURALS = {int: "integers", float: "finite numbers", str: "strings"}


def _describe(annotation: Any) -> str:
    """What a value of ``annotation`` is, for the error message ("an integer", "a finite number or None")."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a tuple of {_PLURALS.get(args[0], _describe(args[0]) + ' values')}"
    if origin is dict:
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}"
    simple = {type(None): "None", bool: "True or False", int: "an integer", float: "a finite number",
              str: "a string"}
    return simple.get(annotation, getattr(annotation, "__name__", repr(annotation)))


def _check_rules(name: str, value: Any, given: Any, what: str) -> None:
    """The sign rules that the names of settings carry (see the module docstring); ``value`` is
    the converted ``given``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if (name == "lr" or name.endswith("_lr")) and not value > 0:
        raise GanInvertError(f"{what} {name!r} must be > 0 (a learning rate), got {given!r}")
    if ("lambda" in name.split("_") or name.endswith("_weight")) and not value >= 0:
        raise GanInvertError(f"{what} {name!r} must be >= 0 (a loss weight), got {given!r}")
