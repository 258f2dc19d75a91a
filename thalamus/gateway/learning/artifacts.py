"""Router artifacts as the gateway serves them: loading (the online checkpoint first), checkpointing, and
``LoadedRouter``, an artifact restricted to the configured backends.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from thalamus.gateway.config import RouterConfig
from thalamus.router.base import Router
from thalamus.router.policy import Knob

log = logging.getLogger(__name__)
ONLINE_DIR = "online"


@dataclass
class LoadedRouter:
    """A router artifact loaded for serving, restricted to the configured backends."""

    name: str
    router: Router
    version: str
    config: RouterConfig
    servable: tuple[str, ...]

    def pair(self) -> tuple[str, str]:
        """The configured RouteLLM (strong, weak) pair; only names with one resolve to a threshold."""
        strong, weak = self.config.strong, self.config.weak
        assert strong is not None and weak is not None
        return strong, weak

    def default_knob(self) -> Knob:
        knob = self.config.knob.to_knob()
        if knob.allowed is None and len(self.servable) < len(self.router.models_):
            knob = Knob(knob.kind, knob.value, knob.strong, knob.max_cost, self.servable, knob.excluded)
        return knob


def load_artifact(directory: Path) -> Router:
    """The router of an artifact dir, or its online checkpoint when the gateway has written one."""
    online = Path(directory) / ONLINE_DIR
    if (online / "router.json").is_file():
        log.info("loading the online checkpoint %s", online)
        return Router.load(online)
    return Router.load(directory)


def checkpoint(router: Router, directory: Path) -> Path:
    """Write the router to ``<directory>/online`` atomically: a crash leaves the old or the new state."""
    target = Path(directory) / ONLINE_DIR
    tmp = Path(directory) / f".{ONLINE_DIR}.tmp-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    router.save(tmp)
    old = Path(directory) / f".{ONLINE_DIR}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target
