"""The built-in guard checks: regular expressions and arithmetic, no model download.

- ``secrets``: credentials with a recognisable shape (cloud, LLM-provider, VCS and chat tokens, private key
  blocks, JWTs) and ``key = value`` assignments of secret-looking names to long values.
- ``pii``: e-mail addresses, phone numbers written as phone numbers (separators or a ``+`` country code),
  US social security numbers, payment card numbers that pass the Luhn check, IBANs that pass mod 97.
- ``injection``: prompt-injection phrasing ("ignore all previous instructions", "reveal your system
  prompt", "you are now DAN", ...), a heuristic: it finds the common phrasings, not a determined attacker.

A check is any object with a ``name`` and ``scan(text) -> list[Finding]``; plugins register classes in the
``thalamus.guards`` entry-point group and are built with no arguments.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Finding:
    """One match: the rule that found it and where (for redaction)."""

    rule: str
    start: int
    end: int


class Check(Protocol):
    name: str

    def scan(self, text: str) -> list[Finding]: ...


Rule = tuple[str, re.Pattern[str], Callable[[str], bool] | None]


def _luhn(digits: str) -> bool:
    nums = [int(c) for c in digits if c.isdigit()]
    if not 13 <= len(nums) <= 19:
        return False
    total = sum(n if i % 2 == 0 else (n * 2 - 9 if n > 4 else n * 2) for i, n in enumerate(reversed(nums)))
    return total % 10 == 0


def _iban(value: str) -> bool:
    s = value[4:] + value[:4]
    return int("".join(str(int(c, 36)) for c in s)) % 97 == 1


class RegexCheck:
    """Findings of a list of (rule, pattern, validator) rules."""

    name = "regex"
    rules: tuple[Rule, ...] = ()

    def scan(self, text: str) -> list[Finding]:
        out = []
        for rule, pattern, valid in self.rules:
            for m in pattern.finditer(text):
                if valid is None or valid(m.group(0)):
                    out.append(Finding(rule, m.start(), m.end()))
        return out


class SecretsCheck(RegexCheck):
    name = "secrets"
    rules = (
        ("aws_access_key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), None),
        ("openai_key", re.compile(r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{32,}\b"), None),
        ("anthropic_key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{32,}\b"), None),
        ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,})\b"), None),
        ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"), None),
        ("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), None),
        ("private_key", re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY( BLOCK)?-----"),
         None),
        ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\b"), None),
        ("assigned_secret", re.compile(
            r"(?i)\b(?:api[_-]?key|secret[_-]?key|client[_-]?secret|access[_-]?token|auth[_-]?token|password|passwd)"
            r"\s*[:=]\s*['\"]?[A-Za-z0-9_\-+/=!@#$%^&*.]{12,}"), None),
    )


class PiiCheck(RegexCheck):
    name = "pii"
    rules = (
        ("email", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), None),
        ("phone", re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b"), None),
        ("phone_intl", re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\d{2,4}){2,4}\b"), None),
        ("us_ssn", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"), None),
        ("payment_card", re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), _luhn),
        ("iban", re.compile(r"\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b"), _iban),
    )


class InjectionCheck(RegexCheck):
    name = "injection"
    rules = (
        ("ignore_instructions", re.compile(
            r"(?i)\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}\b(?:previous|prior|above|earlier|all|your|the "
            r"system)\b[^.\n]{0,20}\b(?:instructions?|prompts?|rules|directions|guidelines)\b"), None),
        ("reveal_prompt", re.compile(
            r"(?i)\b(?:reveal|print|show|repeat|output|leak)\b[^.\n]{0,30}\b(?:system prompt|initial "
            r"(?:prompt|instructions)|hidden (?:prompt|instructions)|your instructions)\b"), None),
        ("role_override", re.compile(
            r"(?i)\byou are (?:now )?(?:DAN|in (?:developer|god|jailbreak) mode)\b|\bdo anything now\b|"
            r"\bjailbreak(?:ed)? mode\b"), None),
        ("fake_system", re.compile(r"(?im)^\s*(?:###\s*)?(?:system|SYSTEM)\s*(?:override|message)?\s*:\s*(?:new|"
                                   r"updated) instructions\b"), None),
    )


BUILTIN_CHECKS: dict[str, type[RegexCheck]] = {c.name: c for c in (SecretsCheck, PiiCheck, InjectionCheck)}
