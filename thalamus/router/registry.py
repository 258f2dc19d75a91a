"""Routers by name, discovered through the ``thalamus.routers`` entry-point group.

Built-in routers are registered in pyproject.toml through the same group a third-party
package would use, so there is one path for both.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

from thalamus.errors import UnknownNameError
from thalamus.router.base import Router

GROUP = "thalamus.routers"


@cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def router_names() -> list[str]:
    return sorted(_entry_points())


def get_router_class(name: str) -> type[Router]:
    eps = _entry_points()
    if name not in eps:
        raise UnknownNameError(f"unknown router {name!r}; registered: {', '.join(sorted(eps))}")
    klass = eps[name].load()
    if not (isinstance(klass, type) and issubclass(klass, Router)):
        raise UnknownNameError(f"entry point {name!r} in {GROUP} is not a Router subclass")
    return klass


def make_router(name: str, **params: Any) -> Router:
    klass = get_router_class(name)
    unknown = set(params) - set(klass.param_names())
    if unknown:
        raise UnknownNameError(
            f"router {name!r} has no parameter(s) {sorted(unknown)}; it takes {klass.param_names()}"
        )
    return klass(**params)
