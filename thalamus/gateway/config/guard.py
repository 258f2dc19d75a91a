"""Settings of the guard stage (``guard:`` in the gateway config; gateway/core/guard.py): pre-routing checks.

Each entry names a check (a built-in: ``secrets``, ``pii``, ``injection``; or a plugin of the
``thalamus.guards`` entry-point group; or ``module:attribute``) and what a finding does: ``block`` (the
request is refused with ``status``, the error naming the check and the rule), ``redact`` (the matched text
is replaced before routing and forwarding), ``restrict`` (only ``models`` may answer) or ``log`` (the row
records it). No checks: the stage is off.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class GuardCheckConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    check: str = Field(min_length=1)
    action: Literal["block", "redact", "restrict", "log"] = "block"
    status: int = Field(default=400, ge=400, le=499)  # block: the status the client gets
    models: list[str] | None = None  # restrict: the backends that may answer when the check fires

    @model_validator(mode="after")
    def _restrict_needs_models(self) -> GuardCheckConfig:
        if self.action == "restrict" and not self.models:
            raise ValueError(f"guard check {self.check!r}: action 'restrict' needs 'models' (the backends allowed)")
        return self


class GuardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checks: list[GuardCheckConfig] = Field(default_factory=list)
