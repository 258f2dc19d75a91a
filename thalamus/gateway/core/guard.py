"""The guard stage: checks that run on a request before it is routed (``guard:``, config/guard.py).

Each configured check scans the text of the request's user, system and tool messages (the Responses API's
in their chat form). A finding does what its entry says: ``block`` refuses the request (the status given,
400 by default; the error names the check and the rules, and the row is written), ``redact`` replaces every
match with ``[REDACTED:<rule>]`` in the body forwarded, the Responses body and the routing text (so the
router, the upstream and a stored prompt see only the redacted text), ``restrict`` narrows the models that
may answer to the entry's ``models`` (a router chooses among them; a request naming another backend gets a
403), and ``log`` only records. Every finding and the stage's time land on the row (``guard`` column).
Checks: the built-ins of ``guard_rules.py``, plugins of the ``thalamus.guards`` entry-point group, or
``module:attribute``.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from dataclasses import replace
from importlib.metadata import entry_points
from typing import Any

from thalamus.errors import ConfigError
from thalamus.gateway.config.guard import GuardCheckConfig, GuardConfig
from thalamus.gateway.core.call import Call
from thalamus.gateway.core.guard_rules import BUILTIN_CHECKS, Check, Finding
from thalamus.gateway.core.request import RequestView
from thalamus.gateway.wire import protocol as p

GROUP = "thalamus.guards"
SCANNED_ROLES = ("user", "system", "developer", "tool")


def load_check(name: str) -> Check:
    """A built-in, an entry point of ``thalamus.guards``, or ``module:attribute``; classes are instantiated."""
    if name in BUILTIN_CHECKS:
        return BUILTIN_CHECKS[name]()
    plugins = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name in plugins:
        obj: Any = plugins[name].load()
    elif ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"guard.checks: cannot load {name!r}: {exc}") from None
    else:
        raise ConfigError(f"guard.checks: unknown check {name!r}; built-ins: {sorted(BUILTIN_CHECKS)}, plugins "
                          f"({GROUP} entry points): {sorted(plugins)}, or give 'module:attribute'")
    check = obj() if isinstance(obj, type) else obj
    if not callable(getattr(check, "scan", None)):
        raise ConfigError(f"guard.checks: {name!r} has no scan(text) method")
    return check  # type: ignore[no-any-return]


def _redact(text: str, findings: list[Finding]) -> str:
    out, at = [], 0
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if f.start < at:  # overlaps one already replaced
            continue
        out += [text[at:f.start], f"[REDACTED:{f.rule}]"]
        at = f.end
    return "".join(out) + text[at:]


class GuardStage:
    """The configured checks, loaded once at startup (an unknown check fails the start, naming it)."""

    def __init__(self, config: GuardConfig) -> None:
        self.entries: list[tuple[GuardCheckConfig, Check]] = [(c, load_check(c.check)) for c in config.checks]

    def apply(self, call: Call, view: RequestView) -> RequestView:
        """The view to route and forward (redacted, restricted), or a RequestError for a blocked request."""
        if not self.entries or not view.messages:
            return view
        t0 = time.perf_counter()
        texts = [p.content_text(m.get("content")) for m in view.messages if m.get("role") in SCANNED_ROLES]
        hits: list[dict[str, Any]] = []
        call.row.guard = {"ms": 0.0, "findings": hits}
        for cfg, check in self.entries:
            findings = [f for text in texts for f in check.scan(text)]
            if not findings:
                continue
            rules = sorted({f.rule for f in findings})
            hits.append({"check": cfg.check, "action": cfg.action, "rules": rules, "n": len(findings)})
            if cfg.action == "block":
                call.row.guard["ms"] = (time.perf_counter() - t0) * 1000
                raise p.RequestError(cfg.status, f"request blocked by guard check {cfg.check!r} (rules: "
                                     f"{', '.join(rules)}); remove the flagged content and retry",
                                     param="messages", code="guard_blocked")
            if cfg.action == "redact":
                view = self._redacted(view, check)
            elif cfg.action == "restrict":
                allowed = set(cfg.models or ())
                narrowed = call.restrict if call.restrict is not None else tuple(cfg.models or ())
                call.restrict = tuple(m for m in narrowed if m in allowed)  # each restrict entry only narrows
        call.row.guard["ms"] = (time.perf_counter() - t0) * 1000
        return view

    def _redacted(self, view: RequestView, check: Check) -> RequestView:
        def text(value: str) -> str:
            found = check.scan(value)
            return _redact(value, found) if found else value

        def content(value: Any) -> Any:
            if isinstance(value, str):
                return text(value)
            if isinstance(value, list):
                return [dict(part, text=text(part["text"])) if isinstance(part, Mapping) and isinstance(
                    part.get("text"), str) else part for part in value]
            return value

        def message(m: Any) -> Any:
            return dict(m, content=content(m["content"])) if isinstance(m, Mapping) and "content" in m else m

        messages = [message(m) for m in view.messages]
        forward = dict(view.forward, messages=messages)  # the forwarded chat form holds the view's messages
        native = view.native
        if native is not None:
            native = dict(native)
            if isinstance(native.get("instructions"), str):
                native["instructions"] = text(native["instructions"])
            given = native.get("input")
            native["input"] = text(given) if isinstance(given, str) else (
                [message(i) for i in given] if isinstance(given, list) else given)
        return replace(view, messages=tuple(messages), forward=forward, native=native,
                       routing_text=p.routing_text(messages))
