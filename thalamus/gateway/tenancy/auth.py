"""API-key checks for the gateway: who is calling, decided before anything else happens.

``Authorization: <scheme> <token>`` with the scheme ``Bearer`` in any letter case (RFC 7235: schemes are
case-insensitive); a token without a scheme is refused. Secrets are compared as UTF-8 bytes in constant
time, so any header value, non-ASCII included, is a 401 at worst, never an error.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from thalamus.gateway.config import AuthConfig
from thalamus.gateway.wire.protocol import RequestError


def bearer_token(authorization: str | None) -> str | None:
    """The token of a ``Bearer`` authorization header, or None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class KeyChecker:
    """Maps a presented key to its id: static keys from the YAML config, then ``virtual`` (the virtual
    keys of the ledger database, looked up by the secret's hash: gateway/tenancy/keys.py)."""

    def __init__(self, config: AuthConfig, virtual: Callable[[str], str | None] | None = None) -> None:
        self.enabled = config.enabled
        self._keys = [(secret.encode(), k.id) for k in config.keys if (secret := k.secret())]
        self._virtual = virtual

    def identify(self, authorization: str | None) -> str | None:
        """The key id of a valid key, else None (also None when auth is off)."""
        token = bearer_token(authorization)
        if token is None:
            return None
        presented = token.encode("utf-8", "surrogateescape")
        found = None
        for secret, key_id in self._keys:  # no early exit: the time taken does not tell which key matched
            if hmac.compare_digest(secret, presented):
                found = key_id
        if found is None and self._virtual is not None:
            found = self._virtual(token)
        return found

    def authorize(self, authorization: str | None) -> str | None:
        """The API key id, or None when auth is off; 401 for a missing, malformed or unknown key."""
        if not self.enabled:
            return None
        key_id = self.identify(authorization)
        if key_id is None:
            raise RequestError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                               code="invalid_api_key", type_="authentication_error")
        return key_id
