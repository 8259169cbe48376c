"""Task sources from config, by kind.

Each entry under ``tasks:`` is ``name: {kind: ..., weight: ..., <options>}``. Without ``kind``
the name is a built-in procedural source (``addition``, ``countdown``, …) and the options are
its difficulty ranges. Otherwise ``kind`` names a registered kind (``jsonl``, ``parquet``,
``csv``, ``hf_disk``, ``reasoning_gym``, …) whose factory receives ``name`` and the options,
or ``package.module:ClassName``, a user's own ``TaskSource`` subclass, constructed with the
options as keyword arguments (importing it runs that module: name only code you trust).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Callable

from .problem import TaskSource

KINDS: dict[str, Callable[..., TaskSource]] = {}


def register_kind(name: str):
    """Register a factory ``f(name: str, **options) -> TaskSource`` for ``kind: <name>``."""
    def deco(factory):
        known = KINDS.get(name)
        if known is not None and known is not factory:
            raise ValueError(f"task kind {name!r} is already registered by {known!r}")
        KINDS[name] = factory
        return factory
    return deco


def _load_kinds() -> None:
    """Import the modules that register the built-in kinds."""
    from . import files, tables  # noqa: F401
    from . import reasoning_gym  # noqa: F401


def import_source_class(spec: str, where: str) -> type[TaskSource]:
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"{where}: kind {spec!r} must be a registered kind or 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{where}: cannot import module {module_name!r} for kind {spec!r} ({err})") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, TaskSource)):
        raise ValueError(f"{where}: {spec!r} is not a TaskSource subclass")
    return cls


def _renamed(cls: type[TaskSource]):
    """A class whose constructor takes no ``name``, built under the entry's name (e.g.
    ``kind: addition`` for a second addition mix)."""
    def factory(name: str, **ranges):
        source = cls(**ranges)
        source.name = name
        return source
    return factory


def _options_of(factory) -> str:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return ""
    names = [p.name for p in params if p.name != "name" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return f" (options: {', '.join(names)})" if names else ""


def make_task_source(name: str, options: dict, where: str | None = None) -> TaskSource:
    """The source of one ``tasks:`` entry (``options`` without ``weight``)."""
    from . import SOURCES, make_source
    where = where or f"tasks.{name}"
    options = dict(options)
    kind = options.pop("kind", None)
    if kind is None:
        return make_source(name, **options)
    if not isinstance(kind, str):
        raise ValueError(f"{where}.kind: expected a kind name, got {kind!r}")
    _load_kinds()
    if kind in KINDS:
        factory = KINDS[kind]
    elif ":" in kind:
        factory = import_source_class(kind, where)
        if "name" not in inspect.signature(factory).parameters:
            factory = _renamed(factory)
    elif kind in SOURCES:
        factory = _renamed(SOURCES[kind])
    else:
        raise ValueError(f"{where}.kind: unknown task kind {kind!r} (registered: {', '.join(sorted(KINDS))}, "
                         f"a built-in source: {', '.join(sorted(SOURCES))}, or 'package.module:ClassName')")
    try:
        source = factory(name=name, **options)
    except TypeError as err:
        raise ValueError(f"{where}: {err}{_options_of(factory)}") from None
    except ValueError as err:  # the factory names the file, row or option; this names the entry
        raise ValueError(f"{where}: {err}") from None
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{where}: {err}") from None
    if source.name != name:
        raise ValueError(f"{where}: the source calls itself {source.name!r}; its name must be {name!r}")
    return source
