"""What the gateway knows about its routers that the ledger does not: offline curves and live rollouts.

The router panel plots realized points over the serving artifact's offline curve (``pareto.json``,
``thalamus.training.pareto``). The curve is read from the configured artifact directory and shown only
while that directory is what serves (its content version equals the served one): after a hot reload or
a promotion to another directory, the curve of the configured one would describe a different router.
Content versions hash every file, so they are cached per directory state. The standalone dashboard has
no service: no curves, no live state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thalamus.errors import DataError
from thalamus.router.base import artifact_version
from thalamus.training.pareto import CURVE_FILE, read_curve

_VERSIONS: dict[tuple[str, int, int], str] = {}  # (dir, dir mtime, curve mtime) -> content version


def _version(directory: Path) -> str:
    key = (str(directory), directory.stat().st_mtime_ns, (directory / CURVE_FILE).stat().st_mtime_ns)
    if key not in _VERSIONS:
        _VERSIONS[key] = artifact_version(directory)
    return _VERSIONS[key]


def curve_of(name: str, directory: Path, served_version: str) -> dict[str, Any]:
    """``{"curve": ..., "curve_note": ...}`` for one router (curve None with a note saying why)."""
    try:
        curve = read_curve(directory)
    except (DataError, OSError) as exc:
        return {"curve": None, "curve_note": str(exc)}
    if curve is None:
        return {"curve": None, "curve_note": f"router {name!r}: artifact {directory} has no {CURVE_FILE}"}
    if _version(directory) != served_version:
        return {"curve": None, "curve_note": f"router {name!r}: the serving artifact ({served_version}) is not "
                                             f"the configured {directory}; its curve would not apply"}
    return {"curve": curve, "curve_note": None, "artifact": str(directory)}


def serving_curves(service: Any) -> dict[str, dict[str, Any]]:
    """Per configured router: its serving version and curve (empty without a gateway service)."""
    if service is None:
        return {}
    return {name: {"serving_version": loaded.version} | curve_of(name, Path(loaded.config.artifact), loaded.version)
            for name, loaded in service.routers.items()}


def live_rollouts(service: Any) -> dict[str, dict[str, Any]]:
    """Per router with a candidate now: mode, share, version, decisions so far (``Rollout.state``)."""
    if service is None:
        return {}
    rollout = service.learning.rollout
    out = {}
    for loaded in service.routers.values():
        state = rollout.state(loaded)
        if state["candidate"] is not None:
            out[loaded.name] = state["candidate"] | {"serving_version": state["serving_version"]}
    return out
