"""Public names report the namespace users import them from (as trio and httpx do).

A class defined in ``actorlog.engine._errors`` and exported as ``actorlog.Rejected`` says
``actorlog.Rejected`` in tracebacks, reprs and docs, not the private module it lives in.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

__all__ = ["publish"]


def publish(module: str, namespace: dict[str, Any], names: list[str]) -> None:
    """Set ``__module__`` to ``module`` on each exported class and function of ``names``.

    A name exported from two namespaces keeps the first it was published under (the
    package imports ``actorlog`` first), so ``actorlog.Rejected`` stays ``actorlog``'s.
    """
    for name in names:
        value = namespace[name]
        current = getattr(value, "__module__", None) or ""
        if not current.startswith(("actorlog.engine", "actorlog.actors")):
            continue  # published already, or not ours
        if isinstance(value, type):
            _evaluate_annotations(value)
        with contextlib.suppress(AttributeError, TypeError):  # a builtin or a C type
            value.__module__ = module


def _evaluate_annotations(cls: type) -> None:
    """Replace ``cls``'s own string annotations by the objects they name, evaluated in
    the module that defined it.

    ``typing.get_type_hints`` (and msgspec, when it first meets a Struct type in a
    decoder) evaluates string annotations in the globals of ``sys.modules[cls.__module__]``:
    once ``__module__`` says ``actorlog``, ``WriterStatistics`` or ``msgspec.Raw`` would no
    longer resolve there.
    """
    own = vars(cls).get("__annotations__")
    if not own or not any(isinstance(a, str) for a in own.values()):
        return
    globalns = vars(sys.modules[cls.__module__])
    localns = dict(vars(cls))
    cls.__annotations__ = {
        key: eval(a, globalns, localns) if isinstance(a, str) else a for key, a in own.items()
    }
