"""What the gateway accepts from an upstream, and how it describes an upstream that failed.

The service relays an upstream's answer to the client and writes a ledger row saying what the client got,
so an answer that the gateway cannot serialise or read (NaN, a list, ``choices: null``, a string where a
token count goes, an error event inside a stream) must be caught here, before the service relies on it:
each becomes an ``UpstreamError`` of kind ``retry`` and the service retries, falls back (before the first
byte of a stream) or ends the stream with an error event (after it), and the row's status is what the
client saw. Both backends (litellm and the direct relay) check with the same functions.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from typing import Any, Literal

from thalamus.errors import BackendError
from thalamus.gateway.upstream.redact import redact

ErrorKind = Literal["retry", "context", "client"]
_USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


class UpstreamError(BackendError):
    """An upstream call failed; ``status`` is the HTTP status to report, ``kind`` what to do next and
    ``retry_after`` the delay in seconds the upstream asked for (429/503 ``Retry-After``), if any, and
    ``param`` the request field an upstream's 4xx named (passed on to the client with ``code``).
    The message and code are redacted: upstreams echo keys in their errors."""

    def __init__(self, backend: str, kind: ErrorKind, status: int, message: str, code: str | None = None,
                 retry_after: float | None = None, param: str | None = None) -> None:
        message = redact(message)
        super().__init__(f"{backend}: {message}")
        self.backend = backend
        self.kind = kind
        self.status = status
        self.message = message
        self.code = redact(code) if code else code
        self.retry_after = retry_after
        self.param = redact(param) if param else None


def bad_answer(backend: str, what: str, code: str = "invalid_upstream_response") -> UpstreamError:
    return UpstreamError(backend, "retry", 502, f"unusable upstream answer: {what}", code)


_TIMEOUT_TEXT = {"connect": "could not connect within {s:g} s (connect_timeout)",
                 "first_byte": "no answer within {s:g} s (first_byte_timeout)",
                 "idle": "the stream was silent for {s:g} s (idle_timeout)"}


def timed_out(backend: str, which: Literal["connect", "first_byte", "idle"], seconds: float) -> UpstreamError:
    """A 504 naming the timeout setting that expired."""
    return UpstreamError(backend, "retry", 504, _TIMEOUT_TEXT[which].format(s=seconds), f"{which}_timeout")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date; None when absent
    or unreadable. Never negative (a date in the past means now)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise ValueError(f"non-finite number {text}")
    return value


def _no_constant(text: str) -> float:
    raise ValueError(f"non-finite number {text}")


def loads(backend: str, data: bytes | str) -> Any:
    """Parse JSON from an upstream strictly: valid UTF-8, and no NaN / Infinity (the client's JSON
    parser and the gateway's response encoder refuse them)."""
    try:
        return json.loads(data, parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _raise_json(backend, data, exc)


def _raise_json(backend: str, data: bytes | str, exc: Exception) -> Any:
    head = data[:200].decode("utf-8", "replace") if isinstance(data, bytes) else data[:200]
    raise bad_answer(backend, f"not valid JSON ({type(exc).__name__}: {exc}); starts {head!r}",
                     "invalid_upstream_json") from None


def check_finite(backend: str, value: Any, where: str = "body") -> None:
    """Raise on a NaN or infinity anywhere in ``value`` (for bodies parsed by someone else, e.g. litellm)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise bad_answer(backend, f"non-finite number {value} at {where}", "invalid_upstream_json")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_finite(backend, item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_finite(backend, item, f"{where}[{i}]")


def error_in_body(backend: str, obj: dict[str, Any], where: str) -> UpstreamError:
    """An ``{"error": ...}`` answer (a 200 body or a stream event) as an UpstreamError."""
    error = obj.get("error")
    detail = error if isinstance(error, dict) else {"message": error}
    message = str(detail.get("message") or detail)[:1000]
    code = detail.get("code") or detail.get("type") or "upstream_error"
    return UpstreamError(backend, "retry", 502, f"upstream sent an error {where}: {message}", str(code)[:100])


def _check_usage(backend: str, usage: Any, where: str) -> None:
    if usage is None:
        return
    if not isinstance(usage, dict):
        raise bad_answer(backend, f"{where}.usage is a {type(usage).__name__}, not an object")
    for key in _USAGE_FIELDS:
        value = usage.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value) or value < 0):
            raise bad_answer(backend, f"{where}.usage.{key} is {value!r}, not a token count")


def _check(backend: str, obj: Any, part: str, where: str) -> dict[str, Any]:
    """``obj`` is an object whose ``choices`` is a list of objects whose ``part`` is an object (or absent)."""
    if not isinstance(obj, dict):
        raise bad_answer(backend, f"{where} is a JSON {type(obj).__name__}, not an object")
    if "error" in obj and not obj.get("choices"):
        raise error_in_body(backend, obj, "in " + where)
    choices = obj.get("choices")
    if not isinstance(choices, list):
        raise bad_answer(backend, f"{where}.choices is {type(choices).__name__}, not a list")
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise bad_answer(backend, f"{where}.choices[{i}] is a {type(choice).__name__}, not an object")
        if choice.get(part) is not None and not isinstance(choice[part], dict):
            raise bad_answer(backend, f"{where}.choices[{i}].{part} is not an object")
    _check_usage(backend, obj.get("usage"), where)
    return obj


def check_completion(backend: str, obj: Any) -> dict[str, Any]:
    """A non-stream answer the service can relay and account, or an UpstreamError."""
    return _check(backend, obj, "message", "the response body")


def check_chunk(backend: str, obj: Any) -> dict[str, Any]:
    """A stream chunk the service can relay and account, or an UpstreamError."""
    return _check(backend, obj, "delta", "a stream chunk")
