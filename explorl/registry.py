"""Registries of plug-ins, one per level, with the paper and parameters of each.

A plug-in is a class registered under a name at a level::

    @register("advantage", "grpo", paper="DeepSeekMath, arXiv:2402.03300")
    class GRPO(Advantage): ...

``build(level, spec)`` turns a recipe entry (``"grpo"`` or ``{"name": "grpo", ...params}``)
into an instance, checking every parameter against the constructor's signature so that a
typo or a wrong type is an error that names it, never a silently ignored flag.
"""
from __future__ import annotations

import inspect
import math
import sys
import typing
from dataclasses import dataclass
from typing import Any, Callable

LEVELS = ("curriculum", "budget", "decoding", "rollout", "advantage", "objective", "guidance", "teacher",
          "verifier", "reference")


@dataclass(frozen=True)
class Entry:
    level: str
    name: str
    cls: type
    paper: str

    def parameters(self) -> dict[str, Any]:
        """Constructor parameters with their defaults (``inspect.Parameter.empty`` if required)."""
        sig = inspect.signature(self.cls.__init__)
        return {p.name: p.default for p in list(sig.parameters.values())[1:]
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


REGISTRY: dict[str, dict[str, Entry]] = {level: {} for level in LEVELS}


def register(level: str, name: str, paper: str = "") -> Callable[[type], type]:
    if level not in REGISTRY:
        raise ValueError(f"unknown level {level!r} (valid: {', '.join(LEVELS)})")

    def deco(cls: type) -> type:
        known = REGISTRY[level].get(name)
        if known is not None and known.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"{level} {name!r} is already registered by {known.cls.__qualname__}")
        REGISTRY[level][name] = Entry(level, name, cls, paper)
        cls.registered_name = name
        return cls
    return deco


def _check_level(level) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r} (valid levels: {', '.join(LEVELS)})")


def lookup(level: str, name: str) -> Entry:
    _load_builtins()
    _check_level(level)
    valid = ", ".join(sorted(REGISTRY[level])) or "none"
    if not isinstance(name, str):
        raise ValueError(f"{level} component name must be a string, got {type(name).__name__} {name!r} "
                         f"(registered: {valid})")
    try:
        return REGISTRY[level][name]
    except KeyError:
        raise ValueError(f"unknown {level} component {name!r} (registered: {valid})") from None


def entries(level: str | None = None) -> list[Entry]:
    _load_builtins()
    if level is not None:
        _check_level(level)
    levels = [level] if level else LEVELS
    return [e for lv in levels for e in sorted(REGISTRY[lv].values(), key=lambda e: e.name)]


def build(level: str, spec: str | dict, where: str | None = None):
    """Instantiate a component from ``"name"`` or ``{"name": ..., **params}``."""
    where = where or level
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"{where}: expected a component name or a mapping with a 'name' key, got {spec!r}")
    params = {k: v for k, v in spec.items() if k != "name"}
    try:
        entry = lookup(level, spec["name"])
    except ValueError as err:
        raise ValueError(f"{where}: {err}" if where != level else str(err)) from None
    accepted = entry.parameters()
    hints = _hints(entry.cls)  # unreadable hints fail here, parameters given or not
    for key, value in list(params.items()):
        if key not in accepted:
            raise ValueError(f"{where}.{key}: unknown parameter of {level} {entry.name!r} "
                             f"(valid: {', '.join(map(str, accepted)) or 'none'})")
        hint = hints.get(key)
        value = params[key] = coerce(value, hint)
        _check_type(f"{where}.{key}", value, hint)
    missing = [k for k, d in accepted.items() if d is inspect.Parameter.empty and k not in params]
    if missing:
        raise ValueError(f"{where}: {level} {entry.name!r} needs parameter(s) {', '.join(missing)}")
    try:
        return entry.cls(**params)
    except ValueError as err:  # a constructor that rejects a well-typed value says why
        raise ValueError(f"{where}: {err}") from None
    except (TypeError, ArithmeticError) as err:
        raise ValueError(f"{where}: {level} {entry.name!r} failed on its parameters {params!r} "
                         f"({type(err).__name__}: {err})") from None


def _hints(cls: type) -> dict[str, Any]:
    """The constructor's type hints.

    Hints that cannot be evaluated (a name that is not imported, a typo in a string
    annotation) are a bug in the plug-in: an error that names it, never a silently skipped
    check.
    """
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception as err:  # NameError, AttributeError, SyntaxError, TypeError, ...
        name = getattr(cls, "registered_name", "") or cls.__qualname__
        raise ValueError(f"component {name!r} ({cls.__module__}.{cls.__qualname__}): the type hints of "
                         f"its constructor cannot be read, so its parameters cannot be checked "
                         f"({type(err).__name__}: {err})") from None


def _annotation(cls: type, key: str):
    """The type hint of constructor parameter ``key`` (``None`` if it has none)."""
    return _hints(cls).get(key)


def coerce(value: Any, expected) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; turn such strings into floats where a float is expected."""
    if isinstance(value, str) and expected is not None:
        options = typing.get_args(expected) or (expected,)
        if float in options:
            try:
                return float(value)
            except ValueError:
                return value
    return value


def _check_type(where: str, value: Any, expected) -> None:
    """Reject a value whose type plainly contradicts the annotation (ints pass for floats,
    bools never pass for numbers, NaN and infinities never pass for a float)."""
    if expected is None or expected is Any:
        return
    origin = typing.get_origin(expected)
    options = typing.get_args(expected) if origin in (typing.Union, getattr(__import__("types"), "UnionType", ())) else (expected,)
    for option in options:
        base = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value:
                raise ValueError(f"{where}: expected a number, got NaN")
            if value in (math.inf, -math.inf):
                raise ValueError(f"{where}: expected a finite number, got {value}")
            if abs(value) > sys.float_info.max:
                raise ValueError(f"{where}: {value} is too large for a float")
            return
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if base in (list, tuple) and isinstance(value, (list, tuple)):
            return
        if isinstance(base, type) and base not in (float, int) and isinstance(value, base):
            return
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ValueError(f"{where}: expected {names}, got {type(value).__name__} {value!r}")


_loaded = False


def _load_builtins() -> None:
    """Import the built-in plug-in modules so their ``@register`` decorators run. The one import
    that climbs the layers (``[tool.importlinter]`` in pyproject.toml names it as the exception):
    the registry sits below every plug-in it discovers."""
    global _loaded
    if not _loaded:
        _loaded = True
        import explorl.explore  # noqa: F401
        import explorl.teachers  # noqa: F401
        import explorl.tasks.math_verifier  # noqa: F401  (with explorl.tasks.verifiers)
