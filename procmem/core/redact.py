"""Redaction of secrets (API keys, bearer tokens) from anything procmem records or logs."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "RedactingFilter", "install_log_redaction", "redact", "redact_obj"]

REDACTED = "[REDACTED]"

_PATTERNS = [
    re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{16,}"),  # OpenAI / Anthropic style keys
    re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),  # GitHub tokens
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),  # Hugging Face tokens
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/\-]{8,}=*"),  # Authorization: Bearer <token>
    re.compile(r"(?i)\b((?:api[_-]?key|token|secret|password)\s*[:=]\s*)[\"']?[^\s\"']{6,}"),
]
_SECRET_ENV = re.compile(r"(?i)(KEY|TOKEN|SECRET|PASSWORD)")


def _env_secrets() -> list[str]:
    """Values of secret-looking environment variables (long enough to be worth matching)."""
    return sorted((v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 8), key=len,
                  reverse=True)


def redact(text: str) -> str:
    """Replace API keys, bearer tokens and the values of secret env variables with ``[REDACTED]``."""
    for value in _env_secrets():
        text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.lastindex else "") + REDACTED, text)
    return text


def redact_obj(obj: Any) -> Any:
    """:func:`redact` applied to every string inside nested dicts, lists and tuples."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, Mapping):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_obj(v) for v in obj)
    return obj


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def _redact_record(record: logging.LogRecord) -> None:
    """Replace the record's message by its formatted, redacted text (args included, then dropped)."""
    try:
        record.msg = redact(record.getMessage())
    except (TypeError, ValueError):  # a malformed %-format: keep the bare message, redacted, without its args
        record.msg = redact(str(record.msg))
    record.args = None


def install_log_redaction() -> None:
    """Redact every log record of this process as it is created, whichever logger or handler it goes to
    (libraries such as litellm attach handlers of their own, and may log request errors with keys)."""
    make = logging.getLogRecordFactory()
    if getattr(make, "_procmem_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        _redact_record(record)
        return record

    factory._procmem_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
