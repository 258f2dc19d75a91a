"""A guard plugin as a third party writes one (loaded by the tests as ``guard_plugin:Forbidden``)."""

from __future__ import annotations

from thalamus.gateway.core.guard_rules import Finding


class Forbidden:
    name = "forbidden"

    def scan(self, text: str) -> list[Finding]:
        at = text.find("project bluebird")
        return [Finding("codename", at, at + len("project bluebird"))] if at >= 0 else []
