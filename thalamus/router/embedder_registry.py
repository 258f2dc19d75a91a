"""Embedders by name, discovered through the ``thalamus.embedders`` entry-point group.

Like routers, the built-in embedders (``minilm``, ``minilm-int8``, ``static``, ``hashing``) are
registered in pyproject.toml through the group a third-party package would use. An entry point
names a factory: a callable taking keyword options and returning an ``Embedder``.

An embedder is named by a spec, ``NAME`` or ``NAME:key=value,key=value`` (for instance
``minilm:tail=128`` keeps the last 128 tokens of a long prompt as well as its head). The spec is
what routers store in their ``embedder`` parameter, so a trained artifact re-creates the same
embedder; the embedder's ``id`` says which vectors it makes, and ``Router.load`` checks it.
``hashing-128`` (the dimension in the name) is kept for older artifacts.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from thalamus.errors import ConfigError, UnknownNameError

GROUP = "thalamus.embedders"
# The embedding path ``thalamus train``, ``eval`` and ``demo`` (hence what is served) use when none is named,
# and every router's ``embedder`` default. A default changes only with its quality and speed numbers on every
# bundled dataset in the same commit (docs/embedders.md, "The default").
DEFAULT_EMBEDDER = "minilm"
# The built-ins as pyproject.toml registers them. Also read from here, so that an editable install
# made before this group existed still finds them; an installed entry point of the same name wins.
BUILTIN = {"minilm": "thalamus.router.embedders:minilm", "minilm-int8": "thalamus.router.embedders:minilm_int8",
           "hashing": "thalamus.router.embedders:hashing", "static": "thalamus.router.static:static"}


@cache
def _entry_points() -> dict[str, Any]:
    found: dict[str, Any] = {name: EntryPoint(name, value, GROUP) for name, value in BUILTIN.items()}
    found.update({ep.name: ep for ep in entry_points(group=GROUP)})
    return found


def refresh() -> None:
    """Forget the discovered entry points (after a package that registers embedders is installed)."""
    _entry_points.cache_clear()


def embedder_names() -> list[str]:
    return sorted(_entry_points())


def embedder_help() -> str:
    """The ``--embedder`` help of every command: the registered names, read from the registry."""
    return (f"Embedder spec NAME or NAME:key=value,... (default {DEFAULT_EMBEDDER}); "
            f"registered: {', '.join(embedder_names())}.")


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"static:tail=64,max_tokens=256"`` -> ("static", {"tail": 64, "max_tokens": 256})."""
    name, _, rest = spec.strip().partition(":")
    options: dict[str, Any] = {}
    if name.startswith("hashing-") and name[len("hashing-"):].isdigit():
        name, options["dim"] = "hashing", int(name[len("hashing-"):])
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"embedder {spec!r}: option {item!r} is not KEY=VALUE")
        options[key.strip()] = _value(raw.strip())
    return name, options


def _value(raw: str) -> Any:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            continue
    return raw


def make_embedder(spec: str) -> Any:
    """A fresh (uncached) embedder for a spec; names the spec and the registered names on error."""
    name, options = parse_spec(spec)
    eps = _entry_points()
    if name not in eps:
        raise UnknownNameError(f"unknown embedder {spec!r}; registered: {', '.join(sorted(eps))}")
    factory = eps[name].load()
    try:
        embedder = factory(**options)
    except TypeError as exc:  # an option the factory does not take
        raise ConfigError(f"embedder {spec!r}: {exc}") from exc
    for attr in ("id", "dim", "embed"):
        if not hasattr(embedder, attr):
            raise UnknownNameError(f"entry point {name!r} in {GROUP} made {type(embedder).__name__}, "
                                   f"which has no {attr!r}: not an Embedder")
    return embedder
