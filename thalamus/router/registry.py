"""Routers by name, discovered through the ``thalamus.routers`` entry-point group.

Built-in routers are registered in pyproject.toml through the same group a third-party
package would use, so there is one path for both.
"""

from __future__ import annotations

from typing import Any

from thalamus.errors import UnknownNameError
from thalamus.router.base import Router, get_router_class, router_entry_points


def router_names() -> list[str]:
    return sorted(router_entry_points())


def make_router(name: str, **params: Any) -> Router:
    klass = get_router_class(name)
    unknown = set(params) - set(klass.param_names())
    if unknown:
        raise UnknownNameError(
            f"router {name!r} has no parameter(s) {sorted(unknown)}; it takes {klass.param_names()}"
        )
    return klass(**params)


def refresh() -> None:
    """Forget the discovered entry points (a plugin was installed or removed at run time)."""
    router_entry_points.cache_clear()
