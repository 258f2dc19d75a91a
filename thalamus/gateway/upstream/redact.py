"""Remove key-like strings from text that leaves the gateway (error messages from upstreams).

An upstream's error message is not ours to trust: providers echo the key they were sent
("Incorrect API key provided: sk-..."), proxies echo headers. ``redact`` replaces whatever looks like a
credential with a marker and keeps the rest of the message, so an error stays readable and useful
while no secret reaches a client, a log or the ledger. It errs towards redacting: a long random-looking
token that was not a secret only loses its value.
"""

from __future__ import annotations

import re

MARK = "[REDACTED]"

# (pattern, replacement): provider keys keep their prefix so the message still says what kind of key
_RULES = [
    (r"\b(sk|rk|pk)((?:[-_](?:proj|ant|live|test|svcacct|admin|or|v1|api\d*))*)[-_][A-Za-z0-9_\-]{12,}",
     rf"\1\2-{MARK}"),
    (r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=\-]{8,}", rf"\1\2{MARK}"),
    (r"(?i)\b((?:x-)?api[-_]?key|access[-_]?token|secret|password|auth(?:orization)?)(\"?\s*[:=]\s*\"?)"
     r"(?!\[REDACTED\])(?!bearer\b|basic\b)[^\s\"',;&]{4,}", rf"\1\2{MARK}"),
    (r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", rf"\1{MARK}"),
    (r"\bAIza[0-9A-Za-z_\-]{30,}", rf"AIza{MARK}"),
    (r"\b(gh[pousr]_|github_pat_|glpat-|hf_|gsk_|xai-|r8_|pplx-|nvapi-|xox[abprs]-)[A-Za-z0-9_\-]{16,}",
     rf"\1{MARK}"),
    (r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", MARK),  # JWTs
]
_PATTERNS = tuple((re.compile(pattern), replacement) for pattern, replacement in _RULES)
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{32,}")


def _long_token(match: re.Match[str]) -> str:
    """A long hex string, or a long mixed-case alphanumeric one (base64), is taken for a secret."""
    token = match.group(0)
    core = token.strip("=")
    if re.fullmatch(r"[0-9a-fA-F]{32,}", core):
        return MARK
    mixed = any(c.isdigit() for c in core) and any(c.islower() for c in core) and any(c.isupper() for c in core)
    if len(core) >= 40 and mixed and core.count("/") <= 2 and core.count("-") <= 3:
        return MARK
    return token


def redact(text: str) -> str:
    """``text`` with API keys, bearer tokens and long random tokens replaced by ``[REDACTED]``."""
    if not text:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _LONG_TOKEN.sub(_long_token, text)
